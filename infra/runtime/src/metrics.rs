//! Prometheus metrics: cold starts and their durations, invocation latency, errors by
//! type, billed instance-seconds; instance and queue gauges are filled at scrape time.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrLabel {
    function: String,
    error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    function: String,
    state: String,
}

/// thaw's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cold_starts: Family<FnLabel, Counter>,
    cold_start_seconds: Family<FnLabel, Histogram>,
    invocation_seconds: Family<FnLabel, Histogram>,
    errors: Family<ErrLabel, Counter>,
    billed: Family<FnLabel, Counter<f64, AtomicU64>>,
    oom_kills: Family<FnLabel, Counter>,
    instances: Family<StateLabel, Gauge>,
    queue_depth: Family<FnLabel, Gauge>,
}

fn histogram() -> Histogram {
    Histogram::new(
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]
        .into_iter(),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("thaw");
        let cold_starts = Family::<FnLabel, Counter>::default();
        let cold_start_seconds =
            Family::<FnLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let invocation_seconds =
            Family::<FnLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let errors = Family::<ErrLabel, Counter>::default();
        let billed = Family::<FnLabel, Counter<f64, AtomicU64>>::default();
        let oom_kills = Family::<FnLabel, Counter>::default();
        let instances = Family::<StateLabel, Gauge>::default();
        let queue_depth = Family::<FnLabel, Gauge>::default();
        registry.register(
            "cold_starts",
            "Instances started from zero",
            cold_starts.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Exec to first next",
            cold_start_seconds.clone(),
        );
        registry.register(
            "invocation_seconds",
            "Call latency at the front",
            invocation_seconds.clone(),
        );
        registry.register("errors", "Failed calls by error type", errors.clone());
        registry.register(
            "billed_instance_seconds",
            "Instance lifetime, start to exit",
            billed.clone(),
        );
        registry.register(
            "instance_oom_kills",
            "Instances killed at their memory limit",
            oom_kills.clone(),
        );
        registry.register("instances", "Instances by state", instances.clone());
        registry.register(
            "queue_depth",
            "Calls waiting for an instance",
            queue_depth.clone(),
        );
        Self {
            registry,
            cold_starts,
            cold_start_seconds,
            invocation_seconds,
            errors,
            billed,
            oom_kills,
            instances,
            queue_depth,
        }
    }
}

fn label(function: &str) -> FnLabel {
    FnLabel {
        function: function.to_owned(),
    }
}

impl Metrics {
    /// An instance reached its first `next`.
    pub fn cold_start(&self, function: &str, took: Duration) {
        self.cold_starts.get_or_create(&label(function)).inc();
        self.cold_start_seconds
            .get_or_create(&label(function))
            .observe(took.as_secs_f64());
    }

    /// A call finished (either way).
    pub fn invocation(&self, function: &str, took: Duration) {
        self.invocation_seconds
            .get_or_create(&label(function))
            .observe(took.as_secs_f64());
    }

    /// A call failed with `error_type`.
    pub fn error(&self, function: &str, error_type: &str) {
        self.errors
            .get_or_create(&ErrLabel {
                function: function.to_owned(),
                error_type: error_type.to_owned(),
            })
            .inc();
    }

    /// An instance was killed at its memory limit.
    pub fn oom_kill(&self, function: &str) {
        self.oom_kills.get_or_create(&label(function)).inc();
    }

    /// An instance lived this long.
    pub fn billed(&self, function: &str, lived: Duration) {
        self.billed
            .get_or_create(&label(function))
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
            let l = StateLabel {
                function: function.to_owned(),
                state: state.to_owned(),
            };
            self.instances.get_or_create(&l).set(n as i64);
        }
        self.queue_depth
            .get_or_create(&label(function))
            .set(status.queue_depth as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
