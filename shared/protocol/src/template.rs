//! The warm-template protocol between `thaw serve` and a function process.
//!
//! A *template* is a function process that has loaded its model and serves no calls: it
//! waits for fork requests. Each fork becomes one instance, sharing the template's pages
//! (its weights, its parsed tokenizer) copy-on-write. The exchange:
//!
//! 1. thaw starts the function with [`ENV`] set to a JSON [`TemplateConfig`] and a Unix
//!    stream socket as its standard input (the *control* socket). The function loads its
//!    model on its main thread, starts no other thread, and writes [`READY`] on it.
//! 2. For each new instance thaw sends one byte on the control socket carrying three
//!    descriptors (`SCM_RIGHTS`): the instance's own socket, and the write ends of its
//!    stdout and stderr pipes.
//! 3. The template forks. The fork enters its namespaces, then sends one byte on the
//!    instance socket with its credentials (`SCM_CREDENTIALS`), from which the kernel
//!    gives thaw its pid in thaw's own PID namespace. thaw puts it in its cgroup and
//!    binds its Runtime API inside its network namespace, then answers with a [`Go`]
//!    line: the instance's environment.
//! 4. On the instance socket thaw may later send [`TERMINATE`]; closing the socket kills
//!    the instance. Before the fork's supervisor exits it writes an [`EXIT_PREFIX`] line
//!    with how the instance ended.
//!
//! A closed control socket tells the template to exit.

use serde::{Deserialize, Serialize};

/// The variable that starts a function as a template; its value is a [`TemplateConfig`].
pub const ENV: &str = "THAW_TEMPLATE";

/// What the template writes on the control socket once its model is loaded.
pub const READY: &[u8] = b"ready\n";

/// Sent on an instance socket: SIGTERM the instance.
pub const TERMINATE: u8 = b't';

/// Starts the line a fork's supervisor writes when the instance has ended
/// (`exit status: 0`, `signal: 9 (SIGKILL)`).
pub const EXIT_PREFIX: &str = "exit ";

/// The exit code of a template that cannot fork safely (its init started threads).
pub const EXIT_NOT_FORKABLE: i32 = 3;

/// The longest [`Go`] line a fork accepts.
pub const MAX_GO_LINE: usize = 1 << 20;

/// How each fork isolates itself, decided by thaw from the function's sandbox report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateConfig {
    /// New user, mount, PID, IPC and UTS namespaces, a fresh `/proc` and a private `/tmp`.
    pub isolate: bool,
    /// A new network namespace too (thaw binds the Runtime API inside it). Needs `isolate`.
    pub net: bool,
    /// Size of the fork's private `/tmp`, bytes.
    pub tmp: u64,
}

/// thaw's answer to a fork's credentials, as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Go {
    /// The instance's whole environment.
    pub env: Vec<(String, String)>,
}
