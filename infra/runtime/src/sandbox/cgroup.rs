//! Resource limits through cgroups: memory plus swap, a pids cap, a CPU quota.
//!
//! thaw makes one cgroup per instance under a base of its own (`thaw-<pid>`, inside the
//! cgroup thaw itself runs in, so limits imposed on thaw still hold). The instance's
//! first process joins it *before exec*: [`InstanceCgroup::procs_files`] are opened by
//! thaw and written with `0` ("this process") in the forked child, so no process of an
//! instance ever exists outside its limits.
//!
//! Two layouts are supported, chosen at startup by [`CgroupRoot::detect`]:
//!
//! - **v2** (unified), where its `memory` controller is available: `memory.max`,
//!   `memory.swap.max = 0`, `pids.max`, `cpu.max`, `cpu.weight`; OOM kills are read from
//!   `memory.events`.
//! - **v1**, one hierarchy per controller: `memory.limit_in_bytes` and
//!   `memory.memsw.limit_in_bytes`, `pids.max`, `cpu.cfs_quota_us` and `cpu.shares`; OOM
//!   kills are read from `memory.oom_control`.
//!
//! Writing files is all there is to it, which is why this is a small module and not a
//! dependency: what no library offered was joining the cgroup from a pre-opened
//! descriptor in the child before exec. The file writes for both versions are
//! unit-tested against a directory tree that stands in for the cgroup filesystem.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// What an instance may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory plus swap, bytes.
    pub memory: u64,
    /// Processes and threads.
    pub pids: u32,
    /// CPU cores (a quota); `None` for no cap.
    pub cpu: Option<f64>,
}

/// The CFS period thaw uses for CPU quotas, microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Where instance cgroups are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    /// The unified hierarchy: one directory, every controller.
    V2 {
        /// thaw's base directory.
        base: PathBuf,
    },
    /// One hierarchy per controller; `cpu` is optional (limits only when declared).
    V1 {
        /// thaw's base directory in the memory hierarchy.
        memory: PathBuf,
        /// ... in the pids hierarchy.
        pids: PathBuf,
        /// ... in the cpu hierarchy, where it is mounted.
        cpu: Option<PathBuf>,
    },
}

impl CgroupRoot {
    /// Finds a writable hierarchy with memory and pids controllers and makes thaw's base
    /// in it: v2 where its memory controller is available, else v1. Errors say why not.
    pub fn detect() -> io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let base_name = format!("thaw-{}", std::process::id());
        let v2_refusal = match v2_root(&mountinfo, &own, &base_name) {
            Ok(Some(root)) => return Ok(root),
            Ok(None) => None,
            Err(why) => Some(why),
        };
        let dir = |controller: &str| -> Option<PathBuf> {
            let mount = v1_mount(&mountinfo, controller)?;
            let rel = own_path(&own, Some(controller))?;
            Some(join_rel(&mount, &rel).join(&base_name))
        };
        let (Some(memory), Some(pids)) = (dir("memory"), dir("pids")) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                v2_refusal.unwrap_or_else(|| {
                    "no cgroup v2 memory controller and no cgroup v1 memory and pids hierarchies"
                        .to_owned()
                }),
            ));
        };
        let cpu = dir("cpu");
        std::fs::create_dir_all(&memory)?;
        std::fs::create_dir_all(&pids)?;
        let cpu = cpu.filter(|c| std::fs::create_dir_all(c).is_ok());
        Ok(Self::V1 { memory, pids, cpu })
    }

    /// Whether CPU quotas can be set.
    pub fn has_cpu(&self) -> bool {
        match self {
            Self::V2 { base } => std::fs::read_to_string(base.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu")),
            Self::V1 { cpu, .. } => cpu.is_some(),
        }
    }

    /// The layout's name, for status and logs.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2",
            Self::V1 { .. } => "v1",
        }
    }

    /// Makes `name`'s cgroup with `limits`. A leftover of the same name (an instance of a
    /// thaw that was SIGKILLed) is emptied and reused.
    pub fn create(&self, name: &str, limits: Limits) -> io::Result<InstanceCgroup> {
        let cg = match self {
            Self::V2 { base } => InstanceCgroup {
                version: Version::V2,
                dirs: vec![base.join(name)],
                removed: Default::default(),
            },
            Self::V1 { memory, pids, cpu } => {
                let mut dirs = vec![memory.join(name), pids.join(name)];
                if let (Some(cpu), Some(_)) = (cpu, limits.cpu) {
                    dirs.push(cpu.join(name));
                }
                InstanceCgroup {
                    version: Version::V1,
                    dirs,
                    removed: Default::default(),
                }
            }
        };
        for dir in &cg.dirs {
            if dir.exists() {
                kill_procs(dir);
            } else {
                std::fs::create_dir(dir)?;
            }
        }
        match cg.version {
            Version::V2 => write_v2_limits(&cg.dirs[0], limits)?,
            Version::V1 => write_v1_limits(&cg.dirs, limits)?,
        }
        Ok(cg)
    }

    /// Removes what a previous thaw left behind (it was SIGKILLed): kills every process
    /// still in an instance cgroup of a `thaw-*` base whose thaw is gone, and removes it.
    pub fn sweep_stale(&self) -> usize {
        let bases: Vec<&Path> = match self {
            Self::V2 { base } => vec![base],
            Self::V1 { memory, pids, cpu } => {
                let mut v = vec![memory.as_path(), pids.as_path()];
                v.extend(cpu.as_deref());
                v
            }
        };
        let mut swept = 0;
        for base in bases {
            let Some(parent) = base.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("thaw-")
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                for child in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if child.path().is_dir() {
                        kill_procs(&child.path());
                        if remove_dir_patiently(&child.path()) {
                            swept += 1;
                        }
                    }
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        swept
    }

    /// Removes thaw's base directories (at shutdown; instance cgroups are gone by then).
    pub fn remove(&self) {
        match self {
            Self::V2 { base } => {
                let _ = std::fs::remove_dir(base);
            }
            Self::V1 { memory, pids, cpu } => {
                for d in [Some(memory), Some(pids), cpu.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One instance's cgroup (one directory in v2, one per controller in v1). Dropping it
/// without [`InstanceCgroup::remove`] (a failed launch) still kills what is inside and
/// tries once to remove it.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
    removed: std::sync::atomic::AtomicBool,
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        if self.removed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for d in &self.dirs {
            for pid in read_pids(&d.join("cgroup.procs")) {
                crate::launcher::signal_pid(pid, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl InstanceCgroup {
    /// `cgroup.procs` of every directory, opened for writing: the child writes `0` to each
    /// before exec to join.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| OpenOptions::new().write(true).open(d.join("cgroup.procs")))
            .collect()
    }

    /// Moves process `pid` (and, from then on, its children) into every directory.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the instance, as thaw sees their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.dirs
            .first()
            .map(|d| read_pids(&d.join("cgroup.procs")))
            .unwrap_or_default()
    }

    /// How many times the kernel's OOM killer killed a process of this instance.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        self.dirs
            .first()
            .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
            .and_then(|text| keyed_value(&text, key))
            .unwrap_or(0)
    }

    /// How many forks the pids cap refused.
    pub fn pids_refused(&self) -> u64 {
        let dir = match self.version {
            Version::V2 => self.dirs.first(),
            Version::V1 => self.dirs.get(1),
        };
        dir.and_then(|d| std::fs::read_to_string(d.join("pids.events")).ok())
            .and_then(|text| keyed_value(&text, "max"))
            .unwrap_or(0)
    }

    /// SIGKILLs every process still in the instance (what a PID namespace does by itself;
    /// this covers the modes without one).
    pub fn kill_all(&self) {
        for d in &self.dirs {
            kill_procs(d);
        }
    }

    /// Kills what is left and removes the directories. Blocking (up to about a second
    /// while killed processes finish exiting).
    pub fn remove(&self) {
        let mut all = true;
        for d in &self.dirs {
            kill_procs(d);
            all &= remove_dir_patiently(d);
        }
        self.removed.store(all, std::sync::atomic::Ordering::SeqCst);
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_v2_limits(dir: &Path, limits: Limits) -> io::Result<()> {
    write(dir, "memory.max", &limits.memory.to_string())?;
    // Memory plus swap: no swap at all on top of memory.max.
    if dir.join("memory.swap.max").exists() {
        write(dir, "memory.swap.max", "0")?;
    }
    write(dir, "pids.max", &limits.pids.to_string())?;
    // Only where the cpu controller is enabled (its files exist); the report says so.
    if let (Some(cpu), true) = (limits.cpu, dir.join("cpu.max").exists()) {
        write(
            dir,
            "cpu.max",
            &format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpu)),
        )?;
        let weight = ((cpu * 100.0).round() as u64).clamp(1, 10_000);
        write(dir, "cpu.weight", &weight.to_string())?;
    }
    Ok(())
}

fn write_v1_limits(dirs: &[PathBuf], limits: Limits) -> io::Result<()> {
    let (Some(memory), Some(pids)) = (dirs.first(), dirs.get(1)) else {
        return Err(io::Error::other(
            "v1 cgroup without memory and pids directories",
        ));
    };
    // memsw must stay >= the memory limit, and a reused cgroup may hold a lower one:
    // raise memsw first when it exists, then set memory, then memsw again.
    let memsw = memory.join("memory.memsw.limit_in_bytes").exists();
    if memsw {
        let _ = write(memory, "memory.memsw.limit_in_bytes", "-1");
    }
    write(memory, "memory.limit_in_bytes", &limits.memory.to_string())?;
    if memsw {
        write(
            memory,
            "memory.memsw.limit_in_bytes",
            &limits.memory.to_string(),
        )?;
    }
    write(pids, "pids.max", &limits.pids.to_string())?;
    if let (Some(cpu_dir), Some(cpu)) = (dirs.get(2), limits.cpu) {
        write(cpu_dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
        write(cpu_dir, "cpu.cfs_quota_us", &cpu_quota_us(cpu).to_string())?;
        let shares = ((cpu * 1024.0).round() as u64).max(2);
        write(cpu_dir, "cpu.shares", &shares.to_string())?;
    }
    Ok(())
}

fn cpu_quota_us(cpu: f64) -> u64 {
    // The kernel's floor is 1 ms.
    ((cpu * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

fn read_pids(procs: &Path) -> Vec<u32> {
    std::fs::read_to_string(procs)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs every process in a cgroup directory, a few rounds (a fork may race a kill).
fn kill_procs(dir: &Path) {
    for _ in 0..8 {
        let pids = read_pids(&dir.join("cgroup.procs"));
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            crate::launcher::signal_pid(pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// rmdir fails while a killed process is still exiting; try for up to a second.
fn remove_dir_patiently(dir: &Path) -> bool {
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    false
}

/// `key value` lines, as in `memory.events` or `memory.oom_control`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// thaw's cgroup path for `controller` (`None`: the v2 `0::` line) from /proc/self/cgroup.
fn own_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_owned())
    })
}

/// The mount point of the v1 hierarchy carrying `controller`, from /proc/self/mountinfo.
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup" && opts.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(mount_point))
    })
}

/// The v2 layout, if its memory and pids controllers are available (`Ok(None)` if not),
/// or why they cannot be delegated to thaw's instances.
fn v2_root(mountinfo: &str, own: &str, base_name: &str) -> Result<Option<CgroupRoot>, String> {
    let Some(mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or_default()))
    }) else {
        return Ok(None);
    };
    let Some(rel) = own_path(own, None) else {
        return Ok(None);
    };
    let dir = join_rel(&mount, &rel);
    let Ok(controllers) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return Ok(None);
    };
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("pids")) {
        return Ok(None);
    }
    // v2's "no internal processes" rule: controllers can be handed to children only by a
    // cgroup with no processes of its own. That holds for the root cgroup, or for a
    // cgroup delegated to thaw with thaw itself in a leaf (systemd's Delegate=yes).
    let wanted = if has("cpu") {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    let refused = |e: io::Error| {
        format!(
            "cgroup v2 at {} cannot hand memory and pids to thaw's instances ({e}): run thaw \
             in the root cgroup or in a delegated cgroup with thaw itself in a leaf",
            dir.display()
        )
    };
    write(&dir, "cgroup.subtree_control", wanted).map_err(refused)?;
    let base = dir.join(base_name);
    std::fs::create_dir_all(&base).map_err(refused)?;
    if let Err(e) = write(&base, "cgroup.subtree_control", wanted) {
        let _ = std::fs::remove_dir(&base);
        return Err(refused(e));
    }
    Ok(Some(CgroupRoot::V2 { base }))
}

fn join_rel(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap_or_default()
    }

    #[test]
    fn v2_writes_memory_swap_pids_and_cpu() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = CgroupRoot::V2 {
            base: tmp.path().to_owned(),
        };
        // The kernel makes these files with the directory; a test makes the one we probe.
        std::fs::create_dir(tmp.path().join("embed-1")).expect("mkdir");
        std::fs::write(tmp.path().join("embed-1/memory.swap.max"), "max").expect("write");
        std::fs::write(tmp.path().join("embed-1/cpu.max"), "max 100000").expect("write");
        let limits = Limits {
            memory: 128 << 20,
            pids: 64,
            cpu: Some(0.5),
        };
        let cg = root.create("embed-1", limits).expect("create");
        let dir = tmp.path().join("embed-1");
        assert_eq!(read(&dir, "memory.max"), "134217728");
        assert_eq!(read(&dir, "memory.swap.max"), "0");
        assert_eq!(read(&dir, "pids.max"), "64");
        assert_eq!(read(&dir, "cpu.max"), "50000 100000");
        assert_eq!(read(&dir, "cpu.weight"), "50");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .expect("write");
        assert_eq!(cg.oom_kills(), 1);
        std::fs::write(dir.join("pids.events"), "max 7\n").expect("write");
        assert_eq!(cg.pids_refused(), 7);
    }

    #[test]
    fn v1_writes_memsw_after_memory_and_cpu_only_when_declared() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (m, p, c) = (
            tmp.path().join("memory"),
            tmp.path().join("pids"),
            tmp.path().join("cpu"),
        );
        for d in [&m, &p, &c] {
            std::fs::create_dir_all(d.join("fn-1")).expect("mkdir");
        }
        std::fs::write(m.join("fn-1/memory.memsw.limit_in_bytes"), "-1").expect("write");
        let root = CgroupRoot::V1 {
            memory: m.clone(),
            pids: p.clone(),
            cpu: Some(c.clone()),
        };
        let limits = Limits {
            memory: 256 << 20,
            pids: 100,
            cpu: None,
        };
        let cg = root.create("fn-1", limits).expect("create");
        assert_eq!(read(&m.join("fn-1"), "memory.limit_in_bytes"), "268435456");
        assert_eq!(
            read(&m.join("fn-1"), "memory.memsw.limit_in_bytes"),
            "268435456"
        );
        assert_eq!(read(&p.join("fn-1"), "pids.max"), "100");
        assert_eq!(read(&c.join("fn-1"), "cpu.cfs_quota_us"), "");
        std::fs::write(
            m.join("fn-1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("write");
        assert_eq!(cg.oom_kills(), 2);

        let with_cpu = Limits {
            cpu: Some(2.0),
            ..limits
        };
        std::fs::create_dir_all(c.join("fn-2")).expect("mkdir");
        root.create("fn-2", with_cpu).expect("create");
        assert_eq!(read(&c.join("fn-2"), "cpu.cfs_quota_us"), "200000");
        assert_eq!(read(&c.join("fn-2"), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&c.join("fn-2"), "cpu.shares"), "2048");
    }

    #[test]
    fn finds_v1_mounts_and_own_paths() {
        let mountinfo = "34 25 0:29 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory\n\
                         35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            v1_mount(mountinfo, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            v1_mount(mountinfo, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1_mount(mountinfo, "pids"), None);
        let own = "8:pids:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            own_path(own, Some("memory")).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path(own, None).as_deref(), Some("/"));
    }
}
