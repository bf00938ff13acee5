//! Clients nobody here wrote, against a live `thaw serve`: the OpenAI SDK (embeddings,
//! and chat completions with and without streaming over `generate`), Hugging
//! Face's `InferenceClient`, boto3, and thaw's own Python client (`clients/python`), with
//! the example Python function (`examples/python`, run by awslambdaric in the sandbox)
//! reached through its URL, Invoke, spawn and map.
//!
//! The tests themselves are `tests/python/*.py`, run here with pytest from the venv that
//! `make test` installs (`.cache/client-venv`, pinned in the Makefile); the function's
//! own venv is `.cache/python-fn-venv`. A test that skips for lack of a server fails this
//! one (`THAW_REQUIRE_LIVE`); the only skip allowed is the token test, since this thaw
//! runs without a control-plane token (boto3 could not send one).

use std::process::Command;

use thaw_tests::{repo_root, Serve};

fn venv_python(venv: &str) -> std::path::PathBuf {
    let python = repo_root().join(".cache").join(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: `make test` installs it",
        python.display()
    );
    python
}

#[test]
fn real_python_clients_pass_against_a_live_thaw() {
    let client_python = venv_python("client-venv");
    let function_python = venv_python("python-fn-venv");
    let example = repo_root().join("examples/python");
    let manifest = format!(
        r#"[app]
name = "python-clients"

[function.embed]
binary = "embed"
snapshot = "minilm-l6"
max_containers = 2
batch = {{ max_size = 32 }}

[function.rerank]
binary = "rerank"
snapshot = "minilm-l6"
max_containers = 1

[function.generate]
binary = "generate"
snapshot = "tiny-qwen2"
max_containers = 1

[function.words-py]
command = [{python:?}, "-m", "awslambdaric", "handler.handler"]
workdir = {workdir:?}
max_containers = 1
concurrency = 1
timeout = "30s"
memory = "256MiB"
"#,
        python = function_python.display().to_string(),
        workdir = example.display().to_string(),
    );
    let serve = Serve::start(&manifest);
    let out = Command::new(&client_python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .current_dir(repo_root())
        .env("THAW_URL", &serve.base)
        .env("THAW_REQUIRE_LIVE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("THAW_TOKEN")
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains(" passed"), "{summary}");
    let skips: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("SKIPPED"))
        .collect();
    assert!(
        skips.iter().all(|l| l.contains("no control-plane token")),
        "unexpected skips: {skips:?}"
    );
}
