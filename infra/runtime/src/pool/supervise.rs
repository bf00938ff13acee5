//! The life of one instance: launch through the pool's [`Launcher`], readiness, the
//! calls it runs, how it ended, and the signals that stop it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use thaw_manifest::FunctionPlan;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    CallError, FunctionPool, Pending, Phase, State, BACKOFF_MAX, BACKOFF_START, STOP_GRACE,
};
use crate::launcher::{InstanceControl, InstanceExit, LaunchRequest};
use crate::runtime_api::{InstanceApi, Lifecycle};

impl FunctionPool {
    pub(super) fn instance_name(&self, id: u64) -> String {
        format!("{}-{id}", self.name())
    }

    /// Takes instance `id` out of dispatch and stops it once its calls in flight are done
    /// (at once if it has none); a fresh instance replaces it on demand.
    pub(super) fn retire(&self, id: u64) {
        let mut st = self.lock();
        let Some(inst) = st.instances.get_mut(&id) else {
            return;
        };
        if inst.phase == Phase::Stopping {
            return;
        }
        inst.phase = Phase::Stopping;
        inst.retiring = true;
        if inst.in_flight == 0 {
            self.stop(&mut st, id);
        }
    }

    /// The plan to launch with: every snapshot ready to serve. The first cold start asks
    /// the fetcher for each of the function's snapshots (pulled if the cache lacked them
    /// at boot, and verified once per process); later starts reuse the result. Without a
    /// fetcher the plan's local snapshots are used as resolved.
    pub(super) async fn launch_plan(&self) -> Result<FunctionPlan, String> {
        let Some(fetcher) = &self.fetcher else {
            if self.plan.missing_snapshots.is_empty() {
                return Ok(self.plan.clone());
            }
            return Err(format!(
                "snapshots {:?} are not in the local cache and no snapshot store is configured",
                self.plan.missing_snapshots
            ));
        };
        let mut local = self.local_plan.lock().await;
        if let Some(p) = local.as_ref() {
            return Ok(p.clone());
        }
        let mut plan = self.plan.clone();
        let spec = &self.plan.spec;
        let wanted = (spec.snapshot.iter().map(|s| (None, s)))
            .chain(spec.snapshots.iter().map(|(role, s)| (Some(role), s)));
        for (role, snapshot) in wanted {
            let t = Instant::now();
            let dir = fetcher.fetch(snapshot).await?;
            tracing::info!(function = self.name(), snapshot, ready_ms = t.elapsed().as_millis() as u64, dir = %dir.display(), "snapshot ready");
            match role {
                None => plan.snapshot_dir = Some(dir),
                Some(r) => {
                    plan.snapshot_dirs.insert(r.clone(), dir);
                }
            }
        }
        plan.missing_snapshots.clear();
        *local = Some(plan.clone());
        Ok(plan)
    }

    /// Starts instance `id`, waits for it to be ready, then watches it until it exits.
    pub(super) async fn run_instance(
        self: Arc<Self>,
        id: u64,
        exit_slot: watch::Sender<Option<InstanceExit>>,
    ) {
        let name = self.instance_name(id);
        let started = Instant::now();
        let plan = match self.launch_plan().await {
            Ok(p) => p,
            Err(msg) => return self.init_failed(id, msg),
        };
        let api = Arc::new(InstanceApi::new(self.plan.name.as_str()));
        let request = LaunchRequest {
            plan: &plan,
            instance: &name,
            number: id,
            api: Arc::clone(&api),
            logs: &self.logs,
        };
        let launched = match self.launcher.launch(request).await {
            Ok(l) => l,
            Err(e) => return self.init_failed(id, e.to_string()),
        };
        let control = launched.control;
        let mut exited = launched.exited;
        let pid = control.pid();
        let phase = self.lock().instances.get_mut(&id).map(|inst| {
            inst.control = Some(Arc::clone(&control));
            inst.api = Some(Arc::clone(&api));
            inst.phase
        });
        if matches!(phase, None | Some(Phase::Stopping)) {
            // Stopped while launching (thaw is shutting down): stop_all could not signal
            // it, having no control for it yet.
            control.kill();
            let _ = exited.await;
            if let Some(inst) = self.lock().instances.remove(&id) {
                self.metrics.billed(self.name(), inst.started.elapsed());
            }
            return;
        }
        tracing::info!(function = self.name(), instance = %name, pid, "instance starting");
        let mut lifecycle = api.lifecycle();
        // Set when `exited` resolves in the select: a finished future must not be polled again.
        let mut gone = false;
        let ready = tokio::select! {
            r = async { lifecycle.wait_for(|l| *l != Lifecycle::Initialising).await.map(|l| l.clone()) } => match r {
                Ok(Lifecycle::InitFailed(d)) => Err(format!("{}: {}", d.error_type, d.error_message)),
                Ok(_) => Ok(()),
                Err(_) => Err("runtime api stopped".to_owned()),
            },
            exit = &mut exited => {
                gone = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = self.logs.instance_tail(&name, 10);
                Err(match exit {
                    InstanceExit::OutOfMemory { limit } => format!(
                        "ran out of memory while initialising: killed at its limit of {} MiB",
                        limit >> 20
                    ),
                    InstanceExit::Exited(_) if !tail.is_empty() => tail,
                    InstanceExit::Exited(code) => format!("exited before its first next ({code})"),
                })
            }
            () = tokio::time::sleep(self.plan.spec.startup_timeout.0) => {
                Err(format!("did not reach its first next within {:?}", self.plan.spec.startup_timeout.0))
            }
        };
        if let Err(msg) = ready {
            if !gone {
                control.kill();
                if tokio::time::timeout(Duration::from_secs(5), &mut exited)
                    .await
                    .is_err()
                {
                    // Still not gone: keep awaiting it elsewhere, since what it holds
                    // (its GPU lease, its cgroup) must outlive its processes.
                    tokio::spawn(exited);
                }
            }
            return self.init_failed(id, msg);
        }
        let cold = started.elapsed();
        {
            let mut st = self.lock();
            st.init_failure = None;
            st.cold_starts += 1;
            if let Some(inst) = st.instances.get_mut(&id) {
                inst.phase = if inst.phase == Phase::Stopping {
                    Phase::Stopping
                } else {
                    Phase::Ready
                };
                inst.idle_since = Instant::now();
            }
        }
        self.metrics.cold_start(self.name(), cold);
        tracing::info!(function = self.name(), instance = %name, cold_start_ms = cold.as_millis() as u64, "instance ready");
        self.pump();

        // Serve until it exits, or until its Runtime API says it cannot be reused (a
        // worker's connection was dropped): then stop it, and a fresh one replaces it.
        let exit = tokio::select! {
            exit = &mut exited => exit,
            why = unusable(&mut lifecycle) => {
                tracing::warn!(function = self.name(), instance = %name, reason = %why, "replacing an unusable instance");
                self.retire(id);
                self.pump();
                exited.await
            }
        };
        if let InstanceExit::OutOfMemory { limit } = &exit {
            self.metrics.oom_kill(self.name());
            tracing::warn!(function = self.name(), instance = %name, limit_mib = limit >> 20, "instance killed at its memory limit");
        }
        exit_slot.send_replace(Some(exit.clone()));
        api.abandon_in_flight();
        let removed = self.lock().instances.remove(&id);
        if let Some(inst) = removed {
            self.metrics.billed(self.name(), inst.started.elapsed());
            if inst.phase != Phase::Stopping {
                tracing::warn!(function = self.name(), instance = %name, ?exit, "instance exited");
            }
        }
        self.pump();
    }

    pub(super) fn init_failed(&self, id: u64, msg: String) {
        tracing::warn!(function = self.name(), instance = %self.instance_name(id), error = %msg, "init failed");
        let failed: Vec<Pending> = {
            let mut st = self.lock();
            if let Some(inst) = st.instances.remove(&id) {
                self.metrics.billed(self.name(), inst.started.elapsed());
            }
            let backoff = st
                .init_failure
                .as_ref()
                .map_or(BACKOFF_START, |f| (f.2 * 2).min(BACKOFF_MAX));
            st.init_failure = Some((msg.clone(), Instant::now() + backoff, backoff));
            // With no sibling up or starting nothing can serve the queue now: tell its
            // callers why rather than let them wait. A sibling still starting keeps it.
            if st.instances.values().any(|i| i.phase != Phase::Stopping) {
                Vec::new()
            } else {
                st.queue.drain(..).collect()
            }
        };
        for p in failed {
            let _ = p.reply.send(Err(CallError::InitFailed(msg.clone())));
        }
        self.pump();
    }

    /// Kills an instance now (timeout): SIGKILL to its group.
    pub(super) fn kill(&self, id: u64) {
        let mut st = self.lock();
        if let Some(inst) = st.instances.get_mut(&id) {
            inst.phase = Phase::Stopping;
            if let Some(control) = &inst.control {
                control.kill();
            }
        }
    }

    /// Stops an instance gracefully: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub(super) fn stop(&self, st: &mut State, id: u64) {
        if let Some(inst) = st.instances.get_mut(&id) {
            inst.phase = Phase::Stopping;
            if let Some(control) = inst.control.clone() {
                control.terminate();
                let me = self.me.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(STOP_GRACE).await;
                    if let Some(me) = me.upgrade() {
                        if me.lock().instances.contains_key(&id) {
                            control.kill();
                        }
                    }
                });
            }
        }
    }

    /// Stops instances idle past `idle_timeout`, keeping `min_containers`.
    pub(super) fn reap_idle(&self) {
        let idle_timeout = self.plan.spec.idle_timeout.0;
        let min = self.plan.spec.min_containers as usize;
        let mut st = self.lock();
        let mut live = st
            .instances
            .values()
            .filter(|i| i.phase != Phase::Stopping)
            .count();
        let idle: Vec<u64> = st
            .instances
            .iter()
            .filter(|(_, i)| {
                i.phase == Phase::Ready
                    && i.in_flight == 0
                    && i.idle_since.elapsed() >= idle_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if live <= min {
                break;
            }
            tracing::info!(function = self.name(), instance = %self.instance_name(id), "stopping idle instance");
            self.stop(&mut st, id);
            live -= 1;
        }
    }

    /// SIGTERM every instance, then SIGKILL whatever is left after `grace`, and wait until
    /// every child has been reaped.
    pub async fn stop_all(&self, grace: Duration) {
        let all = {
            let mut st = self.lock();
            for inst in st.instances.values_mut() {
                inst.phase = Phase::Stopping;
            }
            controls(&st)
        };
        for c in &all {
            c.terminate();
        }
        let deadline = Instant::now() + grace;
        while !self.lock().instances.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = controls(&self.lock());
        for c in &left {
            c.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.lock().instances.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.launcher.close().await;
    }
}

/// Resolves when the instance's Runtime API marks it unusable, with why.
async fn unusable(lifecycle: &mut watch::Receiver<Lifecycle>) -> String {
    let why = lifecycle
        .wait_for(|l| matches!(l, Lifecycle::Unusable(_)))
        .await
        .map(|l| match &*l {
            Lifecycle::Unusable(why) => why.clone(),
            _ => String::new(),
        });
    match why {
        Ok(why) => why,
        // The API is gone: only the exit can end this instance now.
        Err(_) => std::future::pending().await,
    }
}

fn controls(st: &State) -> Vec<Arc<dyn InstanceControl>> {
    st.instances
        .values()
        .filter_map(|i| i.control.clone())
        .collect()
}

/// The idle reaper: a background task that stops when thaw shuts down.
pub(super) async fn reaper(pool: Weak<FunctionPool>, mut shutdown: watch::Receiver<bool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.plan.spec.idle_timeout.0 / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        match pool.upgrade() {
            Some(p) => p.reap_idle(),
            None => return,
        }
    }
}
