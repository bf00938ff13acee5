//! Prometheus metrics: cold starts and their durations, invocation latency, how long
//! calls queue and how many go to an instance together (the dispatch size, which dynamic
//! batching raises above 1), errors by type, billed instance-seconds; instance and queue
//! gauges are filled at scrape time.
//!
//! `/metrics` is the Prometheus text format, version 0.0.4 ([`CONTENT_TYPE`]), which
//! `promtool check metrics` and every scraper read; the `prometheus` crate renders it and
//! escapes label values. Labels are bounded as well as escaped: a function's name comes
//! from the manifest, and a failed call's type is reduced to a fixed set
//! ([`error_label`]): thaw's own [`CallError`] kinds, the typed [`ErrorType`]s functions
//! report, and `Other` for anything else a function may send, so a function inventing
//! error types cannot invent series.

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use thaw_protocol::ErrorType;

use crate::pool::CallError;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label for error types outside the typed set.
pub const OTHER: &str = "Other";

/// The `error_type` label of a function's own error: its [`ErrorType`], or [`OTHER`].
pub fn error_label(error_type: &str) -> &'static str {
    ErrorType::parse(error_type).map_or(OTHER, ErrorType::as_str)
}

/// thaw's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cold_starts: IntCounterVec,
    cold_start_seconds: HistogramVec,
    invocation_seconds: HistogramVec,
    queue_wait_seconds: HistogramVec,
    batch_size: HistogramVec,
    errors: IntCounterVec,
    billed: CounterVec,
    oom_kills: IntCounterVec,
    instances: IntGaugeVec,
    queue_depth: IntGaugeVec,
    template_fallbacks: IntCounterVec,
}

/// Calls per dispatch: 1 without batching, up to `batch.max_size` (at most 1,024) with it.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        // The definitions are constants: an error here is a bug in this file.
        Self::build().expect("thaw's metric definitions are valid")
    }
}

impl Metrics {
    fn build() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("thaw".to_owned()), None)?;
        let f = &["function"];
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), f)
        };
        let m = Self {
            cold_starts: IntCounterVec::new(
                Opts::new("cold_starts_total", "Instances started from zero"),
                f,
            )?,
            cold_start_seconds: histogram("cold_start_seconds", "Exec to first next")?,
            invocation_seconds: histogram("invocation_seconds", "Call latency at the front")?,
            queue_wait_seconds: histogram(
                "queue_wait_seconds",
                "Time a call waited in its function's queue before it was dispatched",
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "batch_size",
                    "Calls per dispatch to an instance (above 1 under dynamic batching)",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
                f,
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "errors_total",
                    "Failed calls by error type (thaw's and the typed function errors; Other for the rest)",
                ),
                &["function", "error_type"],
            )?,
            billed: CounterVec::new(
                Opts::new(
                    "billed_instance_seconds_total",
                    "Instance lifetime, start to exit",
                ),
                f,
            )?,
            oom_kills: IntCounterVec::new(
                Opts::new(
                    "instance_oom_kills_total",
                    "Instances killed at their memory limit",
                ),
                f,
            )?,
            instances: IntGaugeVec::new(
                Opts::new("instances", "Instances by state"),
                &["function", "state"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new("queue_depth", "Calls waiting for an instance"),
                f,
            )?,
            template_fallbacks: IntCounterVec::new(
                Opts::new(
                    "template_fallbacks_total",
                    "Instances started by exec because no fork could be had from the function's warm template",
                ),
                f,
            )?,
            registry,
        };
        m.registry.register(Box::new(m.cold_starts.clone()))?;
        m.registry
            .register(Box::new(m.cold_start_seconds.clone()))?;
        m.registry
            .register(Box::new(m.invocation_seconds.clone()))?;
        m.registry
            .register(Box::new(m.queue_wait_seconds.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry.register(Box::new(m.errors.clone()))?;
        m.registry.register(Box::new(m.billed.clone()))?;
        m.registry.register(Box::new(m.oom_kills.clone()))?;
        m.registry.register(Box::new(m.instances.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry
            .register(Box::new(m.template_fallbacks.clone()))?;
        Ok(m)
    }

    /// A launch went to exec because the function's template could not fork it.
    pub fn template_fallback(&self, function: &str) {
        self.template_fallbacks.with_label_values(&[function]).inc();
    }

    /// An instance reached its first `next`.
    pub fn cold_start(&self, function: &str, took: Duration) {
        self.cold_starts.with_label_values(&[function]).inc();
        self.cold_start_seconds
            .with_label_values(&[function])
            .observe(took.as_secs_f64());
    }

    /// A call finished (either way).
    pub fn invocation(&self, function: &str, took: Duration) {
        self.invocation_seconds
            .with_label_values(&[function])
            .observe(took.as_secs_f64());
    }

    /// A dispatch of `waits.len()` calls left the queue; each waited as long as given.
    pub fn dispatched(&self, function: &str, waits: impl ExactSizeIterator<Item = Duration>) {
        self.batch_size
            .with_label_values(&[function])
            .observe(waits.len() as f64);
        let queue_wait = self.queue_wait_seconds.with_label_values(&[function]);
        for w in waits {
            queue_wait.observe(w.as_secs_f64());
        }
    }

    /// A call failed in thaw's hands (crash, timeout, full queue, ...).
    pub fn call_error(&self, function: &str, error: &CallError) {
        self.errors
            .with_label_values(&[function, error.kind()])
            .inc();
    }

    /// The function answered with an error of type `error_type` (any string it chose).
    pub fn function_error(&self, function: &str, error_type: &str) {
        self.errors
            .with_label_values(&[function, error_label(error_type)])
            .inc();
    }

    /// An instance was killed at its memory limit.
    pub fn oom_kill(&self, function: &str) {
        self.oom_kills.with_label_values(&[function]).inc();
    }

    /// An instance lived this long.
    pub fn billed(&self, function: &str, lived: Duration) {
        self.billed
            .with_label_values(&[function])
            .inc_by(lived.as_secs_f64());
    }

    /// Sets the gauges from a function's live state.
    pub fn set_state(&self, function: &str, status: &crate::pool::PoolStatus) {
        for (state, n) in [
            ("starting", status.starting),
            ("idle", status.idle),
            ("busy", status.busy),
            ("stopping", status.stopping),
        ] {
            self.instances
                .with_label_values(&[function, state])
                .set(n as i64);
        }
        self.queue_depth
            .with_label_values(&[function])
            .set(status.queue_depth as i64);
    }

    /// The Prometheus text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_reduced_to_the_typed_set_and_labels_are_escaped() {
        let m = Metrics::default();
        m.function_error("f", "x\"} 1\nthaw_forged_total 9\n#");
        for i in 0..5000 {
            m.function_error("f", &format!("Distinct{i}"));
        }
        m.function_error("f", "InvalidInput");
        m.call_error("f", &CallError::Timeout(Duration::from_secs(1)));
        m.call_error("f", &CallError::ResponseTooLarge { limit: 6 << 20 });
        m.cold_start("we\"ird\nname", Duration::from_millis(5));
        let text = m.render();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("thaw_errors_total{"))
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            text.contains(r#"thaw_errors_total{error_type="Other",function="f"} 5001"#),
            "{text}"
        );
        assert!(text.contains(r#"error_type="ResponseTooLarge""#), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("thaw_forged")),
            "{text}"
        );
        assert!(text.contains(r#"function="we\"ird\nname""#), "{text}");
        assert!(
            text.contains("# TYPE thaw_cold_starts_total counter"),
            "{text}"
        );
    }
}
