//! What an instance execs: a cargo `binary` from the binary directory, or any `command`
//! (a Python handler under `awslambdaric`, a Node script, a Go binary) in its `workdir`.
//!
//! Both speak the Lambda Runtime API, so the rest of thaw cannot tell them apart: the
//! same scaling, sandbox, durable calls and routes apply. Checking is split like the
//! rest of the manifest: [`check`] holds the rules on the text (exactly one of the two;
//! bounded, NUL-free arguments), [`resolve`] finds the program and the working directory
//! on disk and says which directories the sandbox must bind for the program to run.
//!
//! The sandbox sees, read-only, the workdir and what the program needs to run:
//!
//! - **The workdir** must be declared (no default: the manifest's own directory often
//!   holds thaw's state and a project's secrets), may not be `/`, a top-level directory
//!   or a system one (`/proc`, `/etc`, ...), nor hold any of the resolver's
//!   [`Resolver::private`](crate::Resolver) directories (thaw's call store).
//! - **An install prefix**: a program at `<prefix>/bin/<name>` outside `/usr` is given
//!   `<prefix>` when it looks like an installation (a Python venv's `pyvenv.cfg`, or a
//!   `lib` directory: a Node or pyenv install) and is not a home directory. That is how
//!   interpreters find their libraries. When the program is a link (a venv's
//!   `bin/python`), the prefix of the file it links to is given too: the interpreter the
//!   venv was made from, with its standard library. Any other program is given its own
//!   file.

use std::path::{Path, PathBuf};

use crate::schema::FunctionSpec;
use crate::ManifestError;

/// Arguments in a `command`, at most.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Bytes in one `command` argument, at most.
pub const MAX_COMMAND_ARG: usize = 4096;

/// The program of one function, found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Program {
    /// The executable, absolute.
    pub path: PathBuf,
    /// Its arguments, after the program.
    pub args: Vec<String>,
    /// Where it runs (only a `command` has one).
    pub workdir: Option<PathBuf>,
    /// Directories bound read-only into its sandbox besides the program itself.
    pub read_only: Vec<PathBuf>,
}

/// The rules on the text of `binary`, `command` and `workdir`.
pub(crate) fn check(f: &FunctionSpec) -> Result<(), String> {
    match (&f.binary, &f.command) {
        (Some(_), Some(_)) => Err("set either binary or command, not both".into()),
        (None, None) => Err(
            "no program: set binary (a cargo bin name) or command (any program and its arguments)"
                .into(),
        ),
        (Some(binary), None) => {
            if f.workdir.is_some() {
                return Err(
                    "workdir is only for command; a binary runs in its sandbox's /tmp".into(),
                );
            }
            if binary.is_empty() || binary.contains(['/', '\0']) {
                return Err(format!(
                    "binary {binary:?} must be a cargo bin name, not a path"
                ));
            }
            Ok(())
        }
        (None, Some(command)) => {
            let Some(program) = command.first() else {
                return Err("command is empty: give the program, then its arguments".into());
            };
            if program.is_empty() {
                return Err("command's program (its first item) is empty".into());
            }
            if command.len() > MAX_COMMAND_ARGS {
                return Err(format!(
                    "command has {} items, over the maximum of {MAX_COMMAND_ARGS}",
                    command.len()
                ));
            }
            if let Some(arg) = command
                .iter()
                .find(|a| a.contains('\0') || a.len() > MAX_COMMAND_ARG)
            {
                return Err(format!(
                    "command item {:?} contains NUL or is over {MAX_COMMAND_ARG} bytes",
                    arg.chars().take(40).collect::<String>()
                ));
            }
            match &f.workdir {
                None => Err(
                    "command needs a workdir: the directory it runs in, which its \
                             sandbox sees read-only (relative to the manifest's directory)"
                        .into(),
                ),
                Some(w) if w.is_empty() || w.contains('\0') => Err(format!(
                    "workdir {w:?} must be a non-empty path without NUL"
                )),
                Some(_) => Ok(()),
            }
        }
    }
}

/// Finds function `function`'s program: a `binary` in `bin_dir`, or a `command`'s program
/// (a path from its workdir, or a name on `PATH`) with its workdir, relative to
/// `manifest_dir`.
pub(crate) fn resolve(
    function: &str,
    f: &FunctionSpec,
    bin_dir: &Path,
    manifest_dir: &Path,
    private: &[PathBuf],
) -> Result<Program, ManifestError> {
    if let Some(binary) = &f.binary {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            return Err(ManifestError::BinaryNotFound {
                function: function.to_owned(),
                binary: binary.clone(),
                path,
            });
        }
        return Ok(Program {
            path,
            args: Vec::new(),
            workdir: None,
            read_only: Vec::new(),
        });
    }
    let command = f.command.as_deref().unwrap_or_default();
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ManifestError::Invalid {
            function: function.to_owned(),
            message: "command is empty".into(),
        })?;
    let declared = manifest_dir.join(f.workdir.as_deref().unwrap_or("."));
    let workdir = declared
        .canonicalize()
        .ok()
        .filter(|d| d.is_dir())
        .ok_or_else(|| ManifestError::WorkdirNotFound {
            function: function.to_owned(),
            path: declared.clone(),
        })?;
    if let Some(why) = unfit_workdir(&workdir, private) {
        return Err(ManifestError::Invalid {
            function: function.to_owned(),
            message: format!("workdir {}: {why}", workdir.display()),
        });
    }
    let not_found = |looked: String| ManifestError::ProgramNotFound {
        function: function.to_owned(),
        program: program.clone(),
        looked,
    };
    let path = if program.contains('/') {
        let candidate = without_dot_dots(&workdir.join(program)).ok_or_else(|| {
            not_found(format!(
                "{}'s directory does not exist",
                workdir.join(program).display()
            ))
        })?;
        if !candidate.exists() {
            return Err(not_found(format!("{} does not exist", candidate.display())));
        }
        if !is_executable(&candidate) {
            return Err(not_found(format!(
                "{} is not an executable file",
                candidate.display()
            )));
        }
        candidate
    } else {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .filter(|d| d.is_absolute())
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
            .ok_or_else(|| not_found("not on PATH".into()))?
    };
    // The prefix of the path as written (a venv) and of the file it links to (the
    // interpreter the venv was made from, with its standard library).
    let mut read_only = vec![workdir.clone()];
    let real = path.canonicalize().ok();
    for prefix in [Some(path.as_path()), real.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(install_prefix)
    {
        if !read_only.iter().any(|d| prefix.starts_with(d)) {
            read_only.push(prefix);
        }
    }
    Ok(Program {
        path,
        args: args.to_vec(),
        workdir: Some(workdir),
        read_only,
    })
}

/// `path` with its directory canonical (no `..`, no symlinked directories) and its file
/// name kept: a venv's `bin/python` is a symlink whose own path is what tells Python
/// where the venv is, so the file itself is not resolved.
fn without_dot_dots(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    Some(path.parent()?.canonicalize().ok()?.join(name))
}

/// Directories no workdir may be or lie under.
const SYSTEM_DIRS: [&str; 6] = ["/proc", "/sys", "/dev", "/run", "/etc", "/boot"];

/// Why `workdir` (canonical) may not be bound into a sandbox, if it may not.
fn unfit_workdir(workdir: &Path, private: &[PathBuf]) -> Option<String> {
    if workdir.components().count() < 3 {
        return Some(
            "a workdir may not be / or a top-level directory (it would be bound over the \
             sandbox's own /tmp, /usr, ...): use the function's own directory"
                .into(),
        );
    }
    if let Some(system) = SYSTEM_DIRS.iter().find(|d| workdir.starts_with(d)) {
        return Some(format!("a workdir may not lie under {system}"));
    }
    if is_home(workdir) {
        return Some(
            "a workdir may not be a home directory: use the function's own directory".into(),
        );
    }
    private
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .find(|p| p.starts_with(workdir))
        .map(|p| {
            format!(
                "it holds {}, which functions may not see (thaw's state)",
                p.display()
            )
        })
}

/// `$HOME`, `/root`, or `/home/<user>`.
fn is_home(dir: &Path) -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    dir == Path::new("/root")
        || home.as_deref() == Some(dir)
        || (dir.parent() == Some(Path::new("/home")))
}

/// `<prefix>` of a program at `<prefix>/bin/<name>` that looks like an installation (a
/// venv's `pyvenv.cfg`, or a `lib` directory), unless the sandbox has it already (`/usr`,
/// and `/bin`'s link to it), it is `/`, or it is a home directory (`~/bin/tool`).
fn install_prefix(program: &Path) -> Option<PathBuf> {
    let bin = program.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    let prefix = bin.parent()?;
    let system = prefix == Path::new("/") || prefix.starts_with("/usr");
    let install = prefix.join("pyvenv.cfg").is_file() || prefix.join("lib").is_dir();
    (!system && install && !is_home(prefix)).then(|| prefix.to_owned())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manifest;

    fn spec(lines: &str) -> FunctionSpec {
        let text = format!("[app]\nname = \"x\"\n[function.f]\n{lines}\n");
        let m = Manifest::parse(&text).expect("parse");
        m.function.values().next().cloned().expect("function")
    }

    #[test]
    fn exactly_one_program_and_bounded_arguments() {
        let refused = [
            ("binary = \"f\"\ncommand = [\"x\"]", "not both"),
            ("concurrency = 1", "no program"),
            ("command = []", "command is empty"),
            ("command = [\"\"]", "is empty"),
            ("binary = \"f\"\nworkdir = \".\"", "only for command"),
            ("binary = \"../f\"", "not a path"),
            ("command = [\"x\", \"a\\u0000b\"]", "NUL"),
            ("command = [\"x\"]\nworkdir = \"\"", "non-empty"),
            ("command = [\"x\"]", "needs a workdir"),
        ];
        for (lines, why) in refused {
            let err = check(&spec(lines)).expect_err(lines);
            assert!(err.contains(why), "{lines}: {err}");
        }
        let long = format!(
            "command = [{}]",
            vec!["\"a\""; MAX_COMMAND_ARGS + 1].join(",")
        );
        assert!(check(&spec(&long)).is_err());
        assert!(check(&spec(
            "command = [\"python3\", \"-m\", \"awslambdaric\", \"h.f\"]\nworkdir = \".\""
        ))
        .is_ok());
        assert!(check(&spec("binary = \"embed\"")).is_ok());
    }

    #[test]
    fn a_command_finds_its_program_workdir_and_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let resolve = |lines: &str, private: &[PathBuf]| {
            super::resolve("f", &spec(lines), Path::new("/nonexistent"), &root, private)
        };
        for d in ["venv/bin", "app", "py/bin", "py/lib", "plain/bin", "state"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("venv/pyvenv.cfg"), "home = /usr/bin\n").expect("cfg");
        std::os::unix::fs::symlink("/bin/sh", root.join("venv/bin/python")).expect("link");
        let venv = "command = [\"../venv/bin/python\", \"-m\", \"x\"]\nworkdir = \"app\"";
        let p = resolve(venv, &[]).expect("resolve");
        assert_eq!(p.path, root.join("venv/bin/python"));
        assert_eq!(p.args, ["-m", "x"]);
        assert_eq!(p.workdir.as_deref(), Some(root.join("app").as_path()));
        assert_eq!(p.read_only, [root.join("app"), root.join("venv")]);
        // A venv made from an interpreter outside /usr: both prefixes.
        std::fs::copy("/bin/sh", root.join("py/bin/python3.11")).expect("copy");
        std::fs::remove_file(root.join("venv/bin/python")).expect("unlink");
        std::os::unix::fs::symlink(root.join("py/bin/python3.11"), root.join("venv/bin/python"))
            .expect("link");
        let p = resolve(venv, &[]).expect("resolve");
        assert_eq!(
            p.read_only,
            [root.join("app"), root.join("venv"), root.join("py")]
        );
        // A bin/ that is not an installation gives only its program.
        std::fs::copy("/bin/sh", root.join("plain/bin/tool")).expect("copy");
        let p = resolve("command = [\"../plain/bin/tool\"]\nworkdir = \"app\"", &[]).expect("tool");
        assert_eq!(p.read_only, [root.join("app")]);

        let on_path = resolve(
            "command = [\"sh\", \"-c\", \"true\"]\nworkdir = \"app\"",
            &[],
        )
        .expect("sh on PATH");
        assert!(on_path.path.is_absolute() && on_path.path.ends_with("sh"));
        assert_eq!(on_path.read_only, [root.join("app")]);

        for (lines, want) in [
            (
                "command = [\"./nope\"]\nworkdir = \"app\"",
                "does not exist",
            ),
            (
                "command = [\"no-such-program-here\"]\nworkdir = \"app\"",
                "not on PATH",
            ),
        ] {
            match resolve(lines, &[]) {
                Err(e @ ManifestError::ProgramNotFound { .. }) => {
                    assert!(e.to_string().contains(want), "{e}")
                }
                other => panic!("{lines}: {other:?}"),
            }
        }
        let no_workdir = resolve("command = [\"sh\"]\nworkdir = \"gone\"", &[]);
        assert!(matches!(
            no_workdir,
            Err(ManifestError::WorkdirNotFound { .. })
        ));
        // Not /, not a top-level or system directory, not one holding thaw's state.
        for workdir in ["/", "/tmp", "/etc/ssl", "/proc/self"] {
            let lines = format!("command = [\"sh\"]\nworkdir = {workdir:?}");
            let e = resolve(&lines, &[]).expect_err(workdir).to_string();
            assert!(e.contains("workdir"), "{workdir}: {e}");
        }
        let e = resolve("command = [\"sh\"]\nworkdir = \".\"", &[root.join("state")])
            .expect_err("holds the state dir")
            .to_string();
        assert!(e.contains("thaw's state"), "{e}");
    }
}
