//! Property tests of the manifest parser and validator, on stable Rust with proptest.
//!
//! What must hold for any input:
//! - parsing and validating never panic, whatever the text; every failure is a
//!   [`ManifestError`] with a message;
//! - a manifest that validates has every number within [`limits`] (nothing out of range
//!   reaches the runtime, which sizes memory and timers from these numbers);
//! - a bound's error names the key, the value as written, and a line on which that key
//!   is written;
//! - a manifest whose numbers are all within their bounds validates.
//!
//! Case counts are fixed and small enough that the whole file runs in well under a
//! second in release mode, inside `make test`.

use proptest::prelude::*;
use thaw_manifest::{limits, Manifest, ManifestError};

fn parse_and_validate(text: &str) -> Result<Manifest, ManifestError> {
    let m = Manifest::parse(text)?;
    m.validate()?;
    Ok(m)
}

/// TOML-looking text: headers, keys the schema knows or not, and values of every kind,
/// valid or broken.
fn tomlish() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        Just("[app]".to_owned()),
        Just("[function.f]".to_owned()),
        Just("[function.f.batch]".to_owned()),
        "\\[[a-z._\"-]{0,20}\\]",
    ];
    let key = prop_oneof![
        Just("name"),
        Just("binary"),
        Just("max_containers"),
        Just("min_containers"),
        Just("concurrency"),
        Just("timeout"),
        Just("memory"),
        Just("cpu"),
        Just("pids"),
        Just("tmp"),
        Just("batch"),
        Just("gpu"),
        Just("env"),
        Just("volumes"),
        Just("max_size"),
        Just("wait"),
        Just("url"),
        Just("network"),
        Just("snapshots"),
        Just("unknown"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        "\"[0-9]{0,12}(ns|ms|s|m|h|days|years|MiB|GiB|TiB|B|x)?\"",
        "\"[ -~]{0,16}\"",
        "\\{ ?[a-z_]{1,8} = [0-9\"a-z]{0,6} ?\\}",
        "\\[[0-9, \"a-z]{0,12}\\]",
        "[ -~]{0,12}",
    ];
    let line = prop_oneof![
        header,
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        "[ -~\\t]{0,24}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

/// A function's numeric keys with values anywhere (in range, out of range, negative,
/// overflowing, malformed), each on its own line, in any order.
fn wild_function() -> impl Strategy<Value = Vec<(String, String)>> {
    let int = prop_oneof![
        0i64..=2_000,
        Just(1024),
        Just(1025),
        0i64..=5_000_000,
        Just(i64::from(u32::MAX)),
        Just(i64::from(u32::MAX) + 1),
        -5i64..0,
    ]
    .prop_map(|n| n.to_string());
    let unit = prop_oneof![
        Just("ns"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("days"),
        Just("years"),
    ];
    let duration =
        (0u64..=u64::MAX >> 20, unit).prop_map(|(n, u)| format!("\"{}{u}\"", n % 100_000_000));
    let size_unit = prop_oneof![
        Just("B"),
        Just("KiB"),
        Just("MiB"),
        Just("GiB"),
        Just("TiB"),
        Just("MB")
    ];
    let size = (0u64..=5_000, size_unit).prop_map(|(n, u)| format!("\"{n}{u}\""));
    let cpu = prop_oneof![
        any::<f64>().prop_map(|x| if x.is_nan() {
            "nan".to_owned()
        } else if x.is_infinite() {
            if x > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            }
        } else {
            format!("{x:?}")
        }),
        (0u32..=30_000).prop_map(|n| format!("{}", f64::from(n) / 100.0)),
    ];
    let entry = prop_oneof![
        (
            prop_oneof![
                Just("max_containers"),
                Just("min_containers"),
                Just("concurrency"),
                Just("max_queue"),
                Just("retries"),
                Just("pids")
            ],
            int.clone()
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        (
            prop_oneof![
                Just("timeout"),
                Just("startup_timeout"),
                Just("idle_timeout"),
                Just("retry_backoff"),
                Just("result_ttl")
            ],
            duration.clone()
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        (prop_oneof![Just("memory"), Just("tmp")], size).prop_map(|(k, v)| (k.to_owned(), v)),
        cpu.prop_map(|v| ("cpu".to_owned(), v)),
        (int.clone(), duration).prop_map(|(n, d)| (
            "batch".to_owned(),
            format!("{{ max_size = {n}, wait = {d} }}")
        )),
        (1u32..=40).prop_map(|n| ("gpu".to_owned(), format!("\"T4:{n}\""))),
    ];
    prop::collection::vec(entry, 0..10)
}

fn render(entries: &[(String, String)]) -> String {
    let mut text = String::from("[app]\nname = \"x\"\n\n[function.f]\nbinary = \"f\"\n");
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in entries {
        // A key twice is a TOML error of its own; keep the first.
        if seen.insert(k.clone()) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text
}

/// Every number of a validated manifest is within its bounds.
fn assert_within_limits(m: &Manifest) {
    for f in m.function.values() {
        assert!((1..=limits::MAX_CONTAINERS).contains(&f.max_containers));
        assert!(f.min_containers <= f.max_containers);
        assert!((1..=limits::MAX_CONCURRENCY).contains(&f.concurrency));
        assert!(f.max_queue <= limits::MAX_QUEUE);
        assert!(f.retries <= limits::MAX_RETRIES);
        assert!((limits::MIN_DURATION..=limits::MAX_TIMEOUT).contains(&f.timeout.0));
        assert!((limits::MIN_DURATION..=limits::MAX_STARTUP_TIMEOUT).contains(&f.startup_timeout.0));
        assert!((limits::MIN_DURATION..=limits::MAX_IDLE_TIMEOUT).contains(&f.idle_timeout.0));
        assert!((limits::MIN_DURATION..=limits::MAX_RETRY_BACKOFF).contains(&f.retry_backoff.0));
        assert!((limits::MIN_RESULT_TTL..=limits::MAX_RESULT_TTL).contains(&f.result_ttl.0));
        assert!((limits::MIN_MEMORY..=limits::MAX_MEMORY).contains(&f.memory.0));
        assert!((limits::MIN_TMP..=limits::MAX_TMP).contains(&f.tmp.0));
        assert!((limits::MIN_PIDS..=limits::MAX_PIDS).contains(&f.pids));
        if let Some(cpu) = f.cpu {
            assert!((limits::MIN_CPU..=limits::MAX_CPU).contains(&cpu));
        }
        if let Some(b) = &f.batch {
            assert!((1..=limits::MAX_BATCH_SIZE).contains(&b.max_size));
            assert!(b.wait.0 <= limits::MAX_BATCH_WAIT);
        }
        assert!(f.gpu.count <= limits::MAX_GPUS);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_string_is_a_manifest_or_a_typed_error(text in any::<String>()) {
        match parse_and_validate(&text) {
            Ok(m) => assert_within_limits(&m),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn tomlish_text_is_a_manifest_or_a_typed_error(text in tomlish()) {
        match parse_and_validate(&text) {
            Ok(m) => assert_within_limits(&m),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn wild_numbers_are_bounded_or_refused_on_their_line(entries in wild_function()) {
        let text = render(&entries);
        match parse_and_validate(&text) {
            Ok(m) => assert_within_limits(&m),
            Err(ManifestError::OutOfRange { key, value, line, .. }) => {
                let line = line.expect("parsed from text, so the line is known");
                let written = text.lines().nth(line - 1).unwrap_or_default();
                let top = key.split('.').next().unwrap_or(key);
                prop_assert!(written.starts_with(&format!("{top} = ")), "{key} reported on line {line}: {written:?}");
                if !key.contains('.') {
                    prop_assert!(written.ends_with(&value), "{key}: value {value:?} is not as written: {written:?}");
                }
            }
            Err(ManifestError::MinOverMax { line, .. }) => {
                let line = line.expect("line");
                let written = text.lines().nth(line - 1).unwrap_or_default();
                prop_assert!(written.starts_with("min_containers = "), "{written:?}");
            }
            // Negative or overflowing integers, durations humantime refuses: toml's own
            // error, which names the line and column.
            Err(ManifestError::Parse(msg)) => prop_assert!(msg.contains("line"), "{msg}"),
            Err(other) => prop_assert!(false, "unexpected error {other:?} for\n{text}"),
        }
    }

    #[test]
    fn numbers_within_their_bounds_validate(
        max_containers in 1..=limits::MAX_CONTAINERS,
        min_frac in 0.0..=1.0f64,
        concurrency in 1..=limits::MAX_CONCURRENCY,
        max_queue in 0..=limits::MAX_QUEUE,
        retries in 0..=limits::MAX_RETRIES,
        pids in limits::MIN_PIDS..=limits::MAX_PIDS,
        timeout_ms in 1..=limits::MAX_TIMEOUT.as_millis() as u64,
        idle_ms in 1..=limits::MAX_IDLE_TIMEOUT.as_millis() as u64,
        ttl_s in 1..=limits::MAX_RESULT_TTL.as_secs(),
        memory_mib in (limits::MIN_MEMORY >> 20)..=(limits::MAX_MEMORY >> 20),
        tmp_mib in (limits::MIN_TMP >> 20)..=(limits::MAX_TMP >> 20),
        cpu_centi in 1u32..=25_600,
        batch in 1..=limits::MAX_BATCH_SIZE,
    ) {
        let min_containers = (f64::from(max_containers) * min_frac).floor() as u32;
        let text = format!(
            "[app]\nname = \"x\"\n[function.f]\nbinary = \"f\"\nmax_containers = {max_containers}\n\
             min_containers = {min_containers}\nconcurrency = {concurrency}\nmax_queue = {max_queue}\n\
             retries = {retries}\npids = {pids}\ntimeout = \"{timeout_ms}ms\"\nidle_timeout = \"{idle_ms}ms\"\n\
             result_ttl = \"{ttl_s}s\"\nmemory = \"{memory_mib}MiB\"\ntmp = \"{tmp_mib}MiB\"\n\
             cpu = {}\nbatch = {{ max_size = {batch}, wait = \"5ms\" }}\n",
            f64::from(cpu_centi) / 100.0
        );
        let m = parse_and_validate(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        assert_within_limits(&m);
    }
}
