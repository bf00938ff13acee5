//! A closed-loop HTTP load generator, and what a server's process tree costs in memory.
//!
//! Closed loop: `clients` threads, each with its own keep-alive connection, each sending
//! its next request only when its last one has answered. This is how an application with
//! N request handlers calling an embedding service behaves, and unlike an open-loop
//! generator it cannot overrun the server: throughput is what the server sustains at that
//! concurrency, and latency is what each caller waits.
//!
//! Every request is timed and every reply is read to its end (a keep-alive connection
//! cannot be reused otherwise). A reply that is not 2xx, or a request that fails in
//! transport, is counted as an error and reported, never dropped: a server that fails
//! fast would otherwise look fast.
//!
//! Blocking `ureq` on threads rather than an async client: at most 64 connections, and a
//! thread per client keeps each client's loop as plain as the closed loop it models.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::time::{Duration, Instant};

/// What one load produced.
#[derive(Debug, Default)]
pub struct Measured {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Replies that were not 2xx, by status.
    pub status_errors: BTreeMap<u16, u64>,
    /// Requests that failed before a status came back (refused, reset, timed out).
    pub transport_errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// From the first request to the last reply.
    pub elapsed: Duration,
    /// Every 2xx request's latency, sorted ascending. Errors are left out so that a
    /// server answering 503 at once cannot pull its percentiles down.
    pub latencies: Vec<Duration>,
}

impl Measured {
    /// Every request that did not end in a 2xx.
    pub fn errors(&self) -> u64 {
        self.status_errors.values().sum::<u64>() + self.transport_errors
    }

    /// 2xx replies per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of latency in ms (nearest rank), NaN without samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        for (s, n) in other.status_errors {
            *self.status_errors.entry(s).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }
}

/// Drives `url` with `clients` closed-loop clients for `duration`; `body(client, seq)`
/// makes each request's JSON body. Requests already sent when the time is up are waited
/// for and counted, and `elapsed` runs to the last of them.
pub fn drive(
    url: &str,
    clients: usize,
    duration: Duration,
    body: &(dyn Fn(usize, u64) -> Vec<u8> + Sync),
) -> Measured {
    let start = Instant::now();
    let deadline = start + duration;
    let mut total = Measured::default();
    let parts: Vec<Measured> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| scope.spawn(move || client(url, c, deadline, body)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    total.elapsed = start.elapsed();
    for p in parts {
        total.merge(p);
    }
    total.latencies.sort_unstable();
    total
}

/// One client: one agent, so one pooled keep-alive connection, reused request after
/// request.
fn client(
    url: &str,
    c: usize,
    deadline: Instant,
    body: &(dyn Fn(usize, u64) -> Vec<u8> + Sync),
) -> Measured {
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections_per_host(1)
        .timeout(Duration::from_secs(120))
        .build();
    let mut m = Measured::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let payload = body(c, seq);
        seq += 1;
        let t = Instant::now();
        let reply = agent
            .post(url)
            .set("content-type", "application/json")
            .send_bytes(&payload);
        match reply {
            Ok(r) => {
                buf.clear();
                match r.into_reader().read_to_end(&mut buf) {
                    Ok(_) => {
                        m.latencies.push(t.elapsed());
                        m.ok += 1;
                    }
                    Err(e) => {
                        m.transport_errors += 1;
                        m.first_error
                            .get_or_insert_with(|| format!("reading reply: {e}"));
                    }
                }
            }
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                *m.status_errors.entry(status).or_default() += 1;
                m.first_error
                    .get_or_insert_with(|| format!("HTTP {status}: {}", clip(&text)));
            }
            Err(e) => {
                m.transport_errors += 1;
                m.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    m
}

fn clip(s: &str) -> &str {
    let end = s.char_indices().nth(200).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// Memory of a process and all its descendants.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeMemory {
    /// Summed proportional set size: shared pages are split between the processes that
    /// map them, so a model file mapped by two instances counts once in the total.
    pub pss_kib: u64,
    /// How many processes were summed.
    pub processes: usize,
}

/// PSS summed over `root` and every process below it, from `/proc/<pid>/smaps_rollup`.
/// The tree is found from each process's parent pid in `/proc/<pid>/stat`, which also
/// sees processes inside the sandbox's pid namespace (by their host pid).
pub fn tree_memory(root: u32) -> TreeMemory {
    let mut memory = TreeMemory::default();
    for pid in tree_pids(root) {
        if let Some(kib) = pss_kib(pid) {
            memory.pss_kib += kib;
            memory.processes += 1;
        }
    }
    memory
}

/// `root` and every live process below it.
fn tree_pids(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        out.push(pid);
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids);
        }
    }
    out
}

/// The parent pid: the fourth field of `/proc/<pid>/stat`, counted after the command
/// name's closing parenthesis (the name itself may hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine's 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU counters at one instant: the whole machine's busy time, this bench process's, and
/// the server's process tree's.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    machine_busy: u64,
    client: u64,
    server: u64,
    root: u64,
}

/// Where the cores went between two [`CpuMark`]s, in cores' worth (2.0 = both cores).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This bench: the load generator's client threads.
    pub client: f64,
    /// The server's whole process tree.
    pub server: f64,
    /// The tree's root process alone: for thaw, the platform (HTTP front, scheduler,
    /// Runtime API) without its instances.
    pub root: f64,
    /// Everything else on the machine. The load average cannot tell this: it counts the
    /// bench's own clients and server, and lags a minute behind.
    pub others: f64,
}

impl CpuMark {
    /// Reads the counters now; `server` is the root of the server's process tree.
    pub fn now(server: u32) -> Self {
        Self {
            at: Instant::now(),
            machine_busy: machine_busy_ticks(),
            client: process_ticks("self"),
            root: process_ticks(&server.to_string()),
            server: tree_pids(server)
                .iter()
                .map(|p| process_ticks(&p.to_string()))
                .sum(),
        }
    }

    /// Where the cores went from `self` to `later`.
    pub fn until(&self, later: &Self) -> CpuUse {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / USER_HZ / secs;
        let client = cores(self.client, later.client);
        let server = cores(self.server, later.server);
        let busy = cores(self.machine_busy, later.machine_busy);
        CpuUse {
            client,
            server,
            root: cores(self.root, later.root),
            others: (busy - client - server).max(0.0),
        }
    }
}

/// `/proc` reports CPU time in USER_HZ ticks, fixed at 100 per second by the kernel's ABI.
const USER_HZ: f64 = 100.0;

/// Busy ticks of all cores together: the `cpu` line of `/proc/stat` less idle and iowait.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    cpu.iter().sum::<u64>().saturating_sub(idle)
}

/// utime + stime of one process, all its threads (`/proc/<pid>/stat` fields 14 and 15).
fn process_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    // After the name, fields start at 3 (state): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
