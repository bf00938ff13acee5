//! The instance sandbox, tried as a hostile function would: a real `thaw serve`, the
//! `thaw-fault` function's hostile actions, and checks from the host side.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_tests::{alive, Serve};

std::thread_local! {
    /// Set by the tests in [`with_templates`]: every function is forked from a warm
    /// template instead of exec'd.
    static TEMPLATES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn manifest(functions: &str) -> String {
    let functions = if TEMPLATES.with(std::cell::Cell::get) {
        let mut out = String::new();
        for line in functions.split_inclusive('\n') {
            out.push_str(line);
            if line.starts_with("[function.") {
                out.push_str("template = true\n");
            }
        }
        out
    } else {
        functions.to_owned()
    };
    format!("[app]\nname = \"sandbox\"\n\n{functions}")
}

/// Every sandbox test again, with each function's instances forked from a warm template.
mod with_templates {
    macro_rules! forked {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                super::TEMPLATES.with(|t| t.set(true));
                super::$name();
            }
        )*};
    }
    forked!(
        a_function_over_its_memory_limit_gets_502_out_of_memory_and_nothing_else_suffers,
        a_function_sees_only_its_own_files_processes_and_environment,
        no_instance_can_reach_another_instances_runtime_api,
        nothing_an_instance_started_outlives_it,
        a_fork_bomb_stops_at_the_pids_cap,
        outbound_functions_reach_the_host_and_isolated_ones_do_not,
        without_sandbox_parts_thaw_serves_and_says_what_is_off,
        cpu_and_pids_limits_are_written_to_the_instances_cgroup,
        tmp_is_private_and_capped_at_its_size,
    );
}

fn call(s: &Serve, f: &str, body: Value) -> thaw_tests::Reply {
    s.post(
        &format!("/fn/{f}/"),
        body.to_string().as_bytes(),
        &[("content-type", "application/json")],
    )
}

fn report(s: &Serve, f: &str, body: Value) -> Value {
    let r = call(s, f, body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    if TEMPLATES.with(std::cell::Cell::get) {
        // What answered was forked: no launch fell back to exec.
        let t = s.state(f)["template"].clone();
        assert!(t["forks"].as_u64() >= Some(1), "{f}: {t}");
        assert_eq!(t["fallbacks"], 0, "{f}: {t}");
    }
    r.json()["report"].clone()
}

/// Host pids whose command line carries `marker`.
fn pids_with(marker: &str) -> Vec<u64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&marker.as_bytes()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn all_dead(pids: &[u64], within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_function_over_its_memory_limit_gets_502_out_of_memory_and_nothing_else_suffers() {
    let s = Serve::start(&manifest(
        "[function.hog]\nbinary = \"thaw-fault\"\nmemory = \"128MiB\"\nmax_containers = 1\ntimeout = \"20s\"\n\
         retries = 1\nretry_backoff = \"100ms\"\n\
         [function.neighbour]\nbinary = \"thaw-fault\"\nmax_containers = 1\n",
    ));
    let first = call(&s, "hog", json!({"action": "echo"})).json();
    std::thread::scope(|scope| {
        let neighbour = scope.spawn(|| {
            (0..30)
                .map(|i| {
                    call(
                        &s,
                        "neighbour",
                        json!({"action": "sleep", "ms": 10, "echo": i}),
                    )
                })
                .filter(|r| r.status == 200)
                .count()
        });
        let t = Instant::now();
        let r = call(&s, "hog", json!({"action": "alloc", "mb": 512}));
        let took = t.elapsed();
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        let e = &r.json()["error"];
        assert_eq!(e["type"], "OutOfMemory", "{e}");
        assert!(
            e["message"].as_str().unwrap_or("").contains("128 MiB"),
            "{e}"
        );
        assert!(took < Duration::from_secs(20), "answered after {took:?}");
        println!("hog: 502 OutOfMemory after {} ms", took.as_millis());
        assert_eq!(neighbour.join().expect("neighbour"), 30);
    });
    let next = call(&s, "hog", json!({"action": "echo"}));
    assert_eq!(next.status, 200, "{}", String::from_utf8_lossy(&next.body));
    assert_ne!(
        next.json()["instance"],
        first["instance"],
        "a fresh instance"
    );
    let metrics = String::from_utf8_lossy(&s.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("thaw_instance_oom_kills_total{function=\"hog\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("error_type=\"OutOfMemory\""), "{metrics}");
    assert_eq!(s.get("/healthz").status, 200, "thaw itself is unaffected");
}

#[test]
fn a_function_sees_only_its_own_files_processes_and_environment() {
    let state_parent = tempfile::tempdir().expect("tempdir");
    let state = state_parent.path().join("state");
    let mut s = Serve::start_with_state_and_env(
        &manifest(
            "[function.spy]\nbinary = \"thaw-fault\"\n\
             [function.victim]\nbinary = \"thaw-fault\"\nsnapshot = \"tiny-cross-encoder\"\n\
             env = { DB_PASSWORD = \"hunter2\" }\n",
        ),
        &state,
        &[("THAW_URL_TOKEN", "sekrit-token"), ("THAW_OWN_SECRET", "x")],
    );
    assert_eq!(call(&s, "victim", json!({})).status, 200);
    let victim_pid = s.state("victim")["instances"][0]["pid"]
        .as_u64()
        .expect("victim pid");
    let victim_snapshot = thaw_tests::snapshot_dir("tiny-cross-encoder");
    let thaw_pid = s.pid();
    let calls_db = state.join("calls.db");
    let paths = [
        "/etc/shadow".to_owned(),
        "/etc/passwd".to_owned(),
        calls_db.display().to_string(),
        victim_snapshot.join("snapshot.json").display().to_string(),
        thaw_tests::binary("thaw").display().to_string(),
        format!("/proc/{victim_pid}/environ"),
        format!("/proc/{thaw_pid}/environ"),
    ];
    assert!(
        std::fs::metadata(&calls_db).is_ok(),
        "the call store exists"
    );
    let read = report(&s, "spy", json!({"action": "read", "paths": paths}));
    for p in &paths {
        assert_eq!(read[p]["ok"], false, "{p} was readable: {read}");
    }
    let procs = report(&s, "spy", json!({"action": "proc_environ"}));
    let visible: Vec<u64> = procs["visible_pids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        visible.iter().all(|p| *p < 10),
        "only its own namespace's pids: {procs}"
    );
    assert!(!procs.to_string().contains("hunter2"), "{procs}");
    let env = report(&s, "spy", json!({"action": "environ"}));
    let names: Vec<&str> = env
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert!(!env.to_string().contains("sekrit-token"), "{env}");
    for name in &names {
        let allowed = name.starts_with("AWS_LAMBDA_")
            || [
                "THAW_INSTANCE_ID",
                "PATH",
                "LANG",
                "HOME",
                "PWD",
                // Set by thaw-fn in its own process, not passed in.
                "RAYON_NUM_THREADS",
                "TOKENIZERS_PARALLELISM",
                // Set by lambda_runtime from each invocation's Lambda-Runtime-Trace-Id.
                "_X_AMZN_TRACE_ID",
            ]
            .contains(name);
        assert!(allowed, "unexpected variable {name} in {env}");
    }
    println!(
        "spy: {} paths unreadable, sees pids {visible:?}, env {names:?}",
        paths.len()
    );
    s.signal(libc::SIGTERM);
    let _ = s.child.wait();
}

#[test]
fn no_instance_can_reach_another_instances_runtime_api() {
    let s = Serve::start(&manifest(
        "[function.prober]\nbinary = \"thaw-fault\"\ntimeout = \"60s\"\n\
         [function.victim]\nbinary = \"thaw-fault\"\nmax_containers = 2\nconcurrency = 2\n",
    ));
    assert_eq!(call(&s, "victim", json!({})).status, 200);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let victim = scope.spawn(|| {
            let mut ok = 0;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = call(&s, "victim", json!({"action": "sleep", "ms": 5, "echo": i}));
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                assert_eq!(r.json()["echo"], i, "a caller got somebody else's answer");
                ok += 1;
                i += 1;
            }
            ok
        });
        let probe = report(&s, "prober", json!({"action": "probe"}));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let answered = victim.join().expect("victim");
        assert_eq!(probe["stolen"], json!([]), "{probe}");
        assert_eq!(
            probe["open"],
            json!([9001]),
            "only its own Runtime API: {probe}"
        );
        assert!(answered > 0);
        println!(
            "probe: learned {}, open {}, scan {} ms; victim answered {answered} calls correctly",
            probe["learned"], probe["open"], probe["scan_ms"]
        );
    });
}

/// Starts a child, a setsid grandchild and a double-forked daemon in `f`, and returns
/// their host pids.
fn spawn_tree(s: &Serve, f: &str, marker: &str) -> Vec<u64> {
    let r = report(s, f, json!({"action": "spawn_tree", "marker": marker}));
    assert_eq!(r["spawned"], 3, "{r}");
    let t = Instant::now();
    loop {
        let pids = pids_with(marker);
        if pids.len() >= 3 || t.elapsed() > Duration::from_secs(5) {
            assert_eq!(pids.len(), 3, "{marker}: {pids:?}");
            return pids;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn nothing_an_instance_started_outlives_it() {
    let m = manifest(
        "[function.reaped]\nbinary = \"thaw-fault\"\nidle_timeout = \"1s\"\n\
         [function.slow]\nbinary = \"thaw-fault\"\ntimeout = \"1s\"\n\
         [function.held]\nbinary = \"thaw-fault\"\n",
    );
    let s = Serve::start(&m);
    // Idle reap.
    let pids = spawn_tree(&s, "reaped", "linger-reap");
    assert!(
        all_dead(&pids, Duration::from_secs(8)),
        "idle reap left {pids:?}"
    );
    // Timeout kill.
    let pids = spawn_tree(&s, "slow", "linger-timeout");
    let r = call(&s, "slow", json!({"action": "hang"}));
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        all_dead(&pids, Duration::from_secs(5)),
        "timeout kill left {pids:?}"
    );
    // SIGTERM of thaw.
    let pids = spawn_tree(&s, "held", "linger-term");
    let mut s = s;
    s.signal(libc::SIGTERM);
    let _ = s.child.wait();
    assert!(
        all_dead(&pids, Duration::from_secs(5)),
        "SIGTERM of thaw left {pids:?}"
    );
    // SIGKILL of thaw.
    let s = Serve::start(&m);
    let pids = spawn_tree(&s, "held", "linger-kill");
    let mut s = s;
    s.signal(libc::SIGKILL);
    let _ = s.child.wait();
    assert!(
        all_dead(&pids, Duration::from_secs(5)),
        "SIGKILL of thaw left {pids:?}"
    );
    println!("child, setsid grandchild and daemon: gone after idle reap, timeout kill, SIGTERM and SIGKILL of thaw");
}

#[test]
fn a_fork_bomb_stops_at_the_pids_cap() {
    let s = Serve::start(&manifest(
        "[function.bomb]\nbinary = \"thaw-fault\"\npids = 128\nmemory = \"2GiB\"\ntimeout = \"60s\"\n\
         [function.neighbour]\nbinary = \"thaw-fault\"\n",
    ));
    let r = call(
        &s,
        "bomb",
        json!({"action": "forkbomb", "n": 2000, "marker": "bomb"}),
    );
    assert_ne!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let message = body["errorMessage"]
        .as_str()
        .or_else(|| body["error"]["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    let started: usize = message
        .split("after ")
        .nth(1)
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        started < 128,
        "{} -> {message}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(message.contains("process limit reached"), "{message}");
    println!("fork bomb: {message}");
    // The machine and the neighbour are fine; so is the bomb's instance.
    assert_eq!(call(&s, "neighbour", json!({})).status, 200);
    assert_eq!(call(&s, "bomb", json!({})).status, 200);
    assert!(std::process::Command::new("true").status().is_ok());
}

#[test]
fn outbound_functions_reach_the_host_and_isolated_ones_do_not() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::Write as _;
            let mut stream = stream;
            let _ = stream.write_all(b"hello from the host\n");
        }
    });
    let s = Serve::start(&manifest(
        "[function.net]\nbinary = \"thaw-fault\"\nnetwork = \"outbound\"\n\
         [function.closed]\nbinary = \"thaw-fault\"\n",
    ));
    let sandbox = s.get("/v1/functions").json()["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "net").cloned())
        .expect("net")["sandbox"]
        .clone();
    if sandbox["network"] != "outbound" {
        println!("slirp4netns not installed: outbound mode not tested ({sandbox})");
        return;
    }
    let addr = format!("10.0.2.2:{port}");
    let out = report(&s, "net", json!({"action": "connect", "addr": addr}));
    assert_eq!(out["ok"], true, "{out}");
    assert!(
        out["greeting"].as_str().unwrap_or("").contains("hello"),
        "{out}"
    );
    let closed = report(&s, "closed", json!({"action": "connect", "addr": addr}));
    assert_eq!(closed["ok"], false, "{closed}");
    // Outbound instances still keep their Runtime API to themselves.
    let probe = report(&s, "net", json!({"action": "probe", "scan": false}));
    assert_eq!(probe["stolen"], json!([]), "{probe}");
}

#[test]
fn without_sandbox_parts_thaw_serves_and_says_what_is_off() {
    let s = Serve::start_with_env(
        &manifest("[function.f]\nbinary = \"thaw-fault\"\n"),
        &[],
        &[("THAW_SANDBOX_UNAVAILABLE", "namespaces,network,cgroups")],
    );
    assert_eq!(call(&s, "f", json!({})).status, 200);
    let v = s.get("/v1/functions").json();
    let sb = &v["functions"][0]["sandbox"];
    assert_eq!(sb["enabled"], true, "{sb}");
    assert_eq!(sb["pid_namespace"], false, "{sb}");
    assert_eq!(sb["mount_namespace"], false, "{sb}");
    assert_eq!(sb["network"], "host", "{sb}");
    assert_eq!(sb["cgroup"], "none", "{sb}");
    assert_eq!(sb["missing"].as_array().map_or(0, Vec::len), 4, "{sb}");
    let warnings = s.stderr_lines();
    for part in [
        "namespaces off",
        "network isolation off",
        "resource limits off",
    ] {
        assert!(
            warnings
                .iter()
                .any(|l| l.contains(part) && l.contains("WARN")),
            "no warning for {part}: {warnings:?}"
        );
    }

    let off = Serve::start_with_args(
        &manifest("[function.f]\nbinary = \"thaw-fault\"\n"),
        &["--no-sandbox"],
    );
    assert_eq!(call(&off, "f", json!({})).status, 200);
    let v = off.get("/v1/functions").json();
    assert_eq!(v["functions"][0]["sandbox"]["enabled"], false, "{v}");
    let status = std::process::Command::new(thaw_tests::binary("thaw"))
        .args(["status", "--endpoint", &off.base])
        .output()
        .expect("thaw status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("sandbox: OFF"), "{text}");
    let status = std::process::Command::new(thaw_tests::binary("thaw"))
        .args(["status", "--endpoint", &s.base])
        .output()
        .expect("thaw status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("pid ns OFF") && text.contains("missing: "),
        "{text}"
    );
}

#[test]
fn cpu_and_pids_limits_are_written_to_the_instances_cgroup() {
    let s = Serve::start(&manifest(
        "[function.capped]\nbinary = \"thaw-fault\"\ncpu = 0.5\npids = 64\n",
    ));
    assert_eq!(call(&s, "capped", json!({})).status, 200);
    let v = s.get("/v1/functions").json();
    let sb = &v["functions"][0]["sandbox"];
    if sb["cpu_limit"].is_null() {
        println!("no cpu controller here: cpu not enforced, and the report says so ({sb})");
        assert!(sb["missing"].to_string().contains("cpu"), "{sb}");
        return;
    }
    assert_eq!(sb["cpu_limit"], 0.5, "{sb}");
    assert_eq!(sb["pids_limit"], 64, "{sb}");
    // The running instance's cgroup, found from the host by its pid.
    let pid = s.state("capped")["instances"][0]["pid"]
        .as_u64()
        .expect("pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let rel = |controller: &str| {
        cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|x| x == controller))
            })
            .and_then(|l| l.splitn(3, ':').nth(2))
            .map(str::to_owned)
    };
    match (rel("cpu"), rel("pids")) {
        (Some(cpu), Some(pids)) => {
            let quota =
                std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{cpu}/cpu.cfs_quota_us"))
                    .expect("quota");
            assert_eq!(quota.trim(), "50000", "cpu = 0.5 of a 100 ms period");
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup/pids{pids}/pids.max"))
                .expect("pids.max");
            assert_eq!(max.trim(), "64");
            println!(
                "instance cgroup: cpu.cfs_quota_us {}, pids.max {}",
                quota.trim(),
                max.trim()
            );
        }
        _ => {
            // cgroup v2: one directory.
            let rel = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("v2 path");
            let dir = format!("/sys/fs/cgroup{rel}");
            let cpu_max = std::fs::read_to_string(format!("{dir}/cpu.max")).expect("cpu.max");
            assert_eq!(cpu_max.trim(), "50000 100000");
        }
    }
}

#[test]
fn tmp_is_private_and_capped_at_its_size() {
    let s = Serve::start(&manifest(
        "[function.small]\nbinary = \"thaw-fault\"\ntmp = \"16MiB\"\n\
         [function.other]\nbinary = \"thaw-fault\"\n",
    ));
    let full = report(
        &s,
        "small",
        json!({"action": "write", "paths": ["/tmp/fill"], "mb": 64}),
    );
    assert_eq!(full["ok"], false, "{full}");
    assert!(full["written_mb"].as_u64().unwrap_or(99) <= 16, "{full}");
    assert!(
        full["error"].as_str().unwrap_or("").contains("StorageFull"),
        "{full}"
    );
    // Another function's /tmp is its own: the file is not there, and it has room.
    let seen = report(
        &s,
        "other",
        json!({"action": "read", "paths": ["/tmp/fill"]}),
    );
    assert_eq!(seen["/tmp/fill"]["ok"], false, "{seen}");
    let fits = report(
        &s,
        "other",
        json!({"action": "write", "paths": ["/tmp/fill"], "mb": 32}),
    );
    assert_eq!(fits["ok"], true, "{fits}");
    println!("tmp = 16MiB: {full}");
}
