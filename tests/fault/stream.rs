//! `stream`: a response streamed in parts, under the test's control.
//!
//! - `parts`: the chunks, in order, each sent as it comes.
//! - `key`: before each part after the first, wait (up to 60 s) for the file
//!   `FAULT_STATE/<key>.<i>` to exist, so a test can prove a part reached it before the
//!   next one was even produced.
//! - `fail_after`: after that many parts, fail (an error mid-stream).
//! - `crash_after`: after that many parts (and, with `key`, once the gate of the next is
//!   open, so the test knows the parts before reached it), exit the process.
//! - `bytes`: instead of parts, stream that many bytes of `x` in 64 KiB chunks.

use std::time::{Duration, Instant};

use thaw_fn::{Chunks, FnError};

/// The request's stream settings.
pub(crate) struct Plan<'a> {
    pub parts: &'a [String],
    pub key: Option<&'a str>,
    pub fail_after: Option<usize>,
    pub crash_after: Option<usize>,
    pub bytes: Option<usize>,
}

pub(crate) fn run(plan: &Plan<'_>, out: &mut Chunks) -> Result<(), FnError> {
    if let Some(mut left) = plan.bytes {
        let chunk = vec![b'x'; 64 << 10];
        while left > 0 {
            let n = left.min(chunk.len());
            if !out.send(chunk[..n].to_vec()) {
                return Ok(());
            }
            left -= n;
        }
        return Ok(());
    }
    for (i, part) in plan.parts.iter().enumerate() {
        if i > 0 {
            if let Some(key) = plan.key {
                wait_for(key, i)?;
            }
        }
        if plan.crash_after == Some(i) {
            // Long enough for the parts before to leave the process.
            std::thread::sleep(Duration::from_millis(100));
            eprintln!("fault: crashed mid-stream after {i} parts");
            std::process::exit(3);
        }
        if plan.fail_after == Some(i) {
            return Err(FnError::invalid_input(format!(
                "fault: failed mid-stream after {i} parts"
            )));
        }
        if !out.send(part.clone().into_bytes()) {
            return Ok(());
        }
    }
    if plan.fail_after == Some(plan.parts.len()) {
        return Err(FnError::invalid_input(
            "fault: failed at the end of the stream",
        ));
    }
    Ok(())
}

fn wait_for(key: &str, i: usize) -> Result<(), FnError> {
    let Some(dir) = std::env::var_os("FAULT_STATE") else {
        return Err(FnError::invalid_input(
            "stream with a key needs FAULT_STATE",
        ));
    };
    let path = std::path::Path::new(&dir).join(format!("{key}.{i}"));
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(FnError::invalid_input(format!(
                "fault: {} never appeared",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
