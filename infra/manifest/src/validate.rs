//! The rules the schema cannot express: every numeric setting's range, and the rules
//! that relate settings (min ≤ max, gpu_required needs a gpu, volume paths).
//!
//! Every number has a minimum and a maximum. The maxima are not there to second-guess
//! an operator: they keep a typo (`max_containers = 4294967295`) from reaching code that
//! sizes memory, semaphores or timers from it. Before they existed that value made thaw
//! allocate 24 GB and be OOM-killed, and a huge `max_containers × concurrency` panicked
//! the durable executor. A bound's error is [`ManifestError::OutOfRange`], naming the
//! function, the key, its value, the bound and the line the key was written on.

use std::path::Path;
use std::time::Duration as StdDuration;

use crate::error::Limit;
use crate::lines::KeyLines;
use crate::schema::{volume_error, FunctionSpec, Manifest};
use crate::ManifestError;

/// The bounds of every numeric setting, per function. Public so that consumers (the
/// runtime, deploy renderers, docs) can rely on them.
pub mod limits {
    use std::time::Duration;

    /// `min_containers` and `max_containers` at most.
    pub const MAX_CONTAINERS: u32 = 1024;
    /// `concurrency` at most: calls in flight per instance.
    pub const MAX_CONCURRENCY: u32 = 1024;
    /// `max_queue` at most.
    pub const MAX_QUEUE: u32 = 100_000;
    /// `timeout` at most: Lambda's own limit.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
    /// `startup_timeout` at most.
    pub const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(60 * 60);
    /// `idle_timeout` at most.
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
    /// `timeout`, `startup_timeout`, `idle_timeout` and `retry_backoff` at least.
    pub const MIN_DURATION: Duration = Duration::from_millis(1);
    /// `retries` at most.
    pub const MAX_RETRIES: u32 = 100;
    /// `retry_backoff` at most: the longest wait between retries.
    pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5 * 60);
    /// `result_ttl` at least.
    pub const MIN_RESULT_TTL: Duration = Duration::from_secs(1);
    /// `result_ttl` at most.
    pub const MAX_RESULT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
    /// `memory` at least: below this no function binary starts.
    pub const MIN_MEMORY: u64 = 16 << 20;
    /// `memory` at most.
    pub const MAX_MEMORY: u64 = 1 << 40;
    /// `cpu` at least: the kernel's smallest CPU quota (1 ms per 100 ms period).
    pub const MIN_CPU: f64 = 0.01;
    /// `cpu` at most.
    pub const MAX_CPU: f64 = 256.0;
    /// `pids` at least: a tokio runtime needs a few threads.
    pub const MIN_PIDS: u32 = 8;
    /// `pids` at most: the kernel's own maximum (`pid_max` on 64-bit).
    pub const MAX_PIDS: u32 = 4_194_304;
    /// `tmp` at least.
    pub const MIN_TMP: u64 = 1 << 20;
    /// `tmp` at most.
    pub const MAX_TMP: u64 = 1 << 40;
    /// `batch.max_size` at most.
    pub const MAX_BATCH_SIZE: u32 = 1024;
    /// `batch.wait` at most.
    pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(60);
    /// The N of `gpu = "TYPE:N"` at most. thaw's models compute on one device, so an
    /// instance gets one GPU; a function wanting more GPUs runs more instances
    /// (`max_containers`), each on a GPU of its own.
    pub const MAX_GPUS: u32 = 1;
}

/// A number as the manifest writes it, for messages.
trait Shown: Copy + PartialOrd {
    fn show(self) -> String;
}

impl Shown for u32 {
    fn show(self) -> String {
        self.to_string()
    }
}

impl Shown for f64 {
    fn show(self) -> String {
        self.to_string()
    }
}

impl Shown for StdDuration {
    fn show(self) -> String {
        format!("\"{}\"", humantime::format_duration(self))
    }
}

/// A size in bytes, shown in the largest binary unit that divides it.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Bytes(u64);

impl Shown for Bytes {
    fn show(self) -> String {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return format!("\"{}{unit}\"", self.0 >> shift);
            }
        }
        format!("{} bytes", self.0)
    }
}

/// Checks one function's settings, naming it and the line of each key in errors.
struct Checker<'a> {
    function: &'a str,
    lines: &'a KeyLines,
}

impl Checker<'_> {
    fn line(&self, key: &str) -> Option<usize> {
        self.lines.line(self.function, key)
    }

    /// `min ≤ value ≤ max`; NaN is out of every range.
    fn range<T: Shown>(
        &self,
        key: &'static str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), ManifestError> {
        let limit = if value >= min && value <= max {
            return Ok(());
        } else if value > max {
            Limit::Maximum(max.show())
        } else {
            // Under the minimum, or NaN, which compares to nothing.
            Limit::Minimum(min.show())
        };
        Err(ManifestError::OutOfRange {
            function: self.function.to_owned(),
            key,
            value: self
                .lines
                .written(self.function, key)
                .map_or_else(|| value.show(), str::to_owned),
            limit,
            line: self.line(key),
        })
    }

    fn invalid(&self, message: String) -> ManifestError {
        ManifestError::Invalid {
            function: self.function.to_owned(),
            message,
        }
    }

    fn check(&self, f: &FunctionSpec) -> Result<(), ManifestError> {
        use limits::*;
        self.range("max_containers", f.max_containers, 1, MAX_CONTAINERS)?;
        self.range("min_containers", f.min_containers, 0, MAX_CONTAINERS)?;
        if f.min_containers > f.max_containers {
            return Err(ManifestError::MinOverMax {
                function: self.function.to_owned(),
                min: f.min_containers,
                max: f.max_containers,
                line: self.line("min_containers"),
            });
        }
        self.range("concurrency", f.concurrency, 1, MAX_CONCURRENCY)?;
        self.range("max_queue", f.max_queue, 0, MAX_QUEUE)?;
        self.range("timeout", f.timeout.0, MIN_DURATION, MAX_TIMEOUT)?;
        self.range(
            "startup_timeout",
            f.startup_timeout.0,
            MIN_DURATION,
            MAX_STARTUP_TIMEOUT,
        )?;
        self.range(
            "idle_timeout",
            f.idle_timeout.0,
            MIN_DURATION,
            MAX_IDLE_TIMEOUT,
        )?;
        self.range("retries", f.retries, 0, MAX_RETRIES)?;
        self.range(
            "retry_backoff",
            f.retry_backoff.0,
            MIN_DURATION,
            MAX_RETRY_BACKOFF,
        )?;
        self.range("result_ttl", f.result_ttl.0, MIN_RESULT_TTL, MAX_RESULT_TTL)?;
        self.range(
            "memory",
            Bytes(f.memory.0),
            Bytes(MIN_MEMORY),
            Bytes(MAX_MEMORY),
        )?;
        if let Some(cpu) = f.cpu {
            self.range("cpu", cpu, MIN_CPU, MAX_CPU)?;
        }
        self.range("pids", f.pids, MIN_PIDS, MAX_PIDS)?;
        self.range("tmp", Bytes(f.tmp.0), Bytes(MIN_TMP), Bytes(MAX_TMP))?;
        if let Some(b) = &f.batch {
            self.range("batch.max_size", b.max_size, 1, MAX_BATCH_SIZE)?;
            self.range("batch.wait", b.wait.0, StdDuration::ZERO, MAX_BATCH_WAIT)?;
        }
        if f.gpu.kind.is_some() && f.gpu.count > MAX_GPUS {
            // One GPU per instance: say where more GPUs come from.
            return Err(ManifestError::OutOfRange {
                function: self.function.to_owned(),
                key: "gpu",
                value: self
                    .lines
                    .written(self.function, "gpu")
                    .map_or_else(|| format!("\"{}\"", f.gpu), str::to_owned),
                limit: Limit::Maximum(format!(
                    "{MAX_GPUS} GPU per instance (thaw's models compute on one device; \
                     for more GPUs raise max_containers)"
                )),
                line: self.line("gpu"),
            });
        }
        for role in f.snapshots.keys() {
            let ok = !role.is_empty()
                && role.len() <= 32
                && role
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(self.invalid(format!(
                    "snapshot role {role:?} must be a-z, 0-9 and '_', at most 32"
                )));
            }
        }
        if f.template == Some(true) && f.gpu.kind.is_some() {
            return Err(self.invalid(
                "template = true cannot be used with a gpu: a process holding CUDA state cannot be forked".into(),
            ));
        }
        if f.gpu_required && f.gpu.kind.is_none() {
            return Err(self.invalid("gpu_required = true needs a gpu".into()));
        }
        crate::program::check(f).map_err(|message| self.invalid(message))?;
        let mut mounts = std::collections::BTreeSet::new();
        for (sandbox, host) in &f.volumes {
            if let Some(message) = volume_error(sandbox, host) {
                return Err(self.invalid(message));
            }
            if !mounts.insert(Path::new(sandbox).components().collect::<Vec<_>>()) {
                return Err(self.invalid(format!(
                    "volume {sandbox:?} names a sandbox path another volume already mounts"
                )));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// The rules the schema cannot express: every bound in [`limits`], then the rules
    /// between settings. Errors name the function, the key and, for a manifest that was
    /// parsed from text, the line.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.function.is_empty() {
            return Err(ManifestError::NoFunctions);
        }
        for (name, f) in &self.function {
            Checker {
                function: name.as_str(),
                lines: &self.lines,
            }
            .check(f)?;
        }
        for (route, target) in [
            ("embeddings", &self.routes.embeddings),
            ("rerank", &self.routes.rerank),
            ("chat", &self.routes.chat),
        ] {
            if let Some(f) = target.as_ref().filter(|f| !self.function.contains_key(*f)) {
                return Err(ManifestError::UnknownRouteTarget {
                    route,
                    function: f.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Manifest, ManifestError};

    /// A manifest whose function `f` sets `line` on line 6.
    fn check(line: &str) -> Result<(), ManifestError> {
        let text = format!("[app]\nname = \"x\"\n\n[function.f]\nbinary = \"f\"\n{line}\n");
        Manifest::parse(&text)?.validate()
    }

    /// Every bound: the values at it pass, the values past it fail with `OutOfRange`
    /// naming the key and line 6.
    #[test]
    fn every_numeric_key_is_bounded_on_both_sides() {
        let batch =
            |size: &str, wait: &str| format!("batch = {{ max_size = {size}, wait = \"{wait}\" }}");
        let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
            (
                "max_containers",
                vec!["1".into(), "1024".into()],
                vec!["0".into(), "1025".into(), "4294967295".into()],
            ),
            (
                "min_containers",
                vec!["0".into(), "1024".into()],
                vec!["1025".into(), "4294967295".into()],
            ),
            (
                "concurrency",
                vec!["1".into(), "1024".into()],
                vec!["0".into(), "1025".into(), "4294967295".into()],
            ),
            (
                "max_queue",
                vec!["0".into(), "100000".into()],
                vec!["100001".into(), "4294967295".into()],
            ),
            (
                "timeout",
                vec!["\"1ms\"".into(), "\"15m\"".into()],
                vec!["\"0s\"".into(), "\"900001ms\"".into()],
            ),
            (
                "startup_timeout",
                vec!["\"1ms\"".into(), "\"1h\"".into()],
                vec!["\"0s\"".into(), "\"3601s\"".into()],
            ),
            (
                "idle_timeout",
                vec!["\"1ms\"".into(), "\"24h\"".into()],
                vec![
                    "\"0s\"".into(),
                    "\"86401s\"".into(),
                    "\"500000000years\"".into(),
                ],
            ),
            (
                "retries",
                vec!["0".into(), "100".into()],
                vec!["101".into(), "4294967295".into()],
            ),
            (
                "retry_backoff",
                vec!["\"1ms\"".into(), "\"5m\"".into()],
                vec!["\"0s\"".into(), "\"301s\"".into()],
            ),
            (
                "result_ttl",
                vec!["\"1s\"".into(), "\"30days\"".into()],
                vec!["\"999ms\"".into(), "\"2592001s\"".into()],
            ),
            (
                "memory",
                vec!["\"16MiB\"".into(), "\"1TiB\"".into()],
                vec!["\"15MiB\"".into(), "\"1025GiB\"".into()],
            ),
            (
                "cpu",
                vec!["0.01".into(), "256".into()],
                vec![
                    "0".into(),
                    "0.009".into(),
                    "-1".into(),
                    "256.5".into(),
                    "nan".into(),
                    "inf".into(),
                ],
            ),
            (
                "pids",
                vec!["8".into(), "4194304".into()],
                vec!["7".into(), "4194305".into()],
            ),
            (
                "tmp",
                vec!["\"1MiB\"".into(), "\"1TiB\"".into()],
                vec!["\"1023KiB\"".into(), "\"1025GiB\"".into()],
            ),
            (
                "gpu",
                vec!["\"T4:1\"".into(), "\"T4\"".into()],
                vec!["\"T4:2\"".into()],
            ),
        ];
        for (key, ok, bad) in cases {
            // min_containers needs room under max_containers.
            let extra = if key == "min_containers" {
                "\nmax_containers = 1024"
            } else {
                ""
            };
            for v in ok {
                let line = format!("{key} = {v}{extra}");
                if let Err(e) = check(&line) {
                    panic!("{line:?} should pass: {e}");
                }
            }
            for v in bad {
                let line = format!("{key} = {v}{extra}");
                match check(&line) {
                    Err(
                        e @ ManifestError::OutOfRange {
                            key: k,
                            line: Some(6),
                            ..
                        },
                    ) if k == key => {
                        let msg = e.to_string();
                        assert!(msg.contains(key) && msg.contains("(line 6)"), "{msg}");
                    }
                    other => {
                        panic!("{line:?}: expected OutOfRange for {key} on line 6, got {other:?}")
                    }
                }
            }
        }
        for (size, wait, key) in [
            ("1", "0s", None),
            ("1024", "60s", None),
            ("0", "1ms", Some("batch.max_size")),
            ("1025", "1ms", Some("batch.max_size")),
            ("8", "61s", Some("batch.wait")),
        ] {
            let line = batch(size, wait);
            match (check(&line), key) {
                (Ok(()), None) => {}
                (
                    Err(ManifestError::OutOfRange {
                        key: k,
                        line: Some(6),
                        ..
                    }),
                    Some(key),
                ) if k == key => {}
                (other, _) => panic!("{line:?}: expected {key:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn batch_wait_defaults_to_zero() {
        let text = "[app]\nname = \"a\"\n[function.f]\nbinary = \"f\"\nbatch = { max_size = 8 }\n";
        let m = Manifest::parse(text).expect("valid");
        let b = m
            .function
            .values()
            .next()
            .and_then(|f| f.batch.clone())
            .expect("batch");
        assert_eq!((b.max_size, b.wait.0), (8, std::time::Duration::ZERO));
    }

    #[test]
    fn min_over_max_names_the_line_of_min_containers() {
        match check("max_containers = 2\nmin_containers = 3") {
            Err(
                e @ ManifestError::MinOverMax {
                    min: 3,
                    max: 2,
                    line: Some(7),
                    ..
                },
            ) => {
                assert!(e.to_string().contains("(line 7)"), "{e}");
            }
            other => panic!("expected MinOverMax on line 7, got {other:?}"),
        }
    }

    /// A manifest built in code has no lines; its errors simply leave them out.
    #[test]
    fn errors_without_a_source_have_no_line() {
        let mut m =
            Manifest::parse("[app]\nname = \"x\"\n[function.f]\nbinary = \"f\"\n").expect("parse");
        let spec = m.function.values().next().cloned().expect("f");
        let name = m.function.keys().next().cloned().expect("f");
        m.function.insert(
            name,
            crate::FunctionSpec {
                concurrency: 5000,
                ..spec
            },
        );
        m.lines = Default::default();
        match m.validate() {
            Err(e @ ManifestError::OutOfRange { line: None, .. }) => {
                assert_eq!(
                    e.to_string(),
                    "function \"f\": concurrency = 5000 is over the maximum of 1024"
                );
            }
            other => panic!("expected OutOfRange without a line, got {other:?}"),
        }
    }
}
