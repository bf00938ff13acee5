//! The machine's GPUs, lent to instances.
//!
//! Every function launcher of one `thaw serve` shares one [`GpuPool`]. An instance of a
//! GPU function is lent a free device before it starts ([`GpuPool::lend`]) and sees only
//! that one (`CUDA_VISIBLE_DEVICES`). The [`GpuLease`] goes with the instance's exit
//! future ([`hold_until_exit`]) and puts the device back when the last of its processes
//! is gone, so two live instances of this thaw never share a device, however often
//! instances are replaced.
//!
//! A full pool is a capacity limit, not a fault: a launch waits for a device to come back
//! (an instance being stopped gives its device back within the stop grace). A function
//! with `gpu_required = true` waits up to its `startup_timeout` and then fails to start,
//! saying why; any other waits up to [`CPU_FALLBACK_AFTER`] and then starts without a
//! device (`CUDA_VISIBLE_DEVICES` empty), which it serves on the CPU with a warning.
//!
//! The machine's devices are `THAW_GPUS` (`0,1,3`), else thaw's own
//! `CUDA_VISIBLE_DEVICES`, else one per GPU the NVIDIA driver lists under
//! `/proc/driver/nvidia/gpus`. With none of them thaw does not know the machine's GPUs:
//! nothing is lent, and instances see whatever the driver shows them. The pool is this
//! process's: two `thaw serve` on one machine should be given disjoint `THAW_GPUS`. The
//! device nodes bound into a sandbox are all of `/dev/nvidia*`, so the separation is
//! CUDA's device visibility, not the kernel's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::Notify;

use super::{InstanceExit, Launched};

/// How long a function that does not require its GPU waits for one before it starts on
/// the CPU.
pub const CPU_FALLBACK_AFTER: Duration = Duration::from_secs(5);

/// Why a function that requires a GPU got none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoGpu {
    /// Every device stayed lent for the whole wait.
    #[error("no GPU came free within {waited:?}: all {total} of this machine's GPUs are held by other instances")]
    AllLent {
        /// The machine's devices.
        total: usize,
        /// How long the launch waited.
        waited: Duration,
    },
    /// The machine's device list is empty.
    #[error("this machine has no GPUs to lend (THAW_GPUS or CUDA_VISIBLE_DEVICES is empty)")]
    NoneOnMachine,
}

/// What an instance is lent.
#[derive(Debug)]
pub enum Lent {
    /// thaw does not know the machine's GPUs: the instance sees what the driver shows.
    Unknown,
    /// One device of its own.
    Device(GpuLease),
    /// No device: it starts with none visible and serves on the CPU.
    Cpu,
}

/// The machine's GPUs and which are lent.
#[derive(Debug)]
pub struct GpuPool {
    /// Device ids as `CUDA_VISIBLE_DEVICES` names them; `None` when thaw does not know.
    ids: Option<Vec<String>>,
    /// `lent[i]` while `ids[i]` is held by an instance.
    lent: Mutex<Vec<bool>>,
    /// Woken whenever a device comes back.
    freed: Notify,
}

impl GpuPool {
    /// The machine's GPUs, found as the module docs say.
    pub fn from_env() -> Arc<Self> {
        let listed = std::env::var("THAW_GPUS")
            .or_else(|_| std::env::var("CUDA_VISIBLE_DEVICES"))
            .ok()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
        let ids = listed.or_else(|| {
            let n = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?.count();
            Some((0..n).map(|i| i.to_string()).collect())
        });
        Arc::new(Self::new(ids))
    }

    /// A pool of these devices; `None`: unknown, lend nothing. A device listed twice is
    /// one device (lending it twice would put two instances on it).
    pub fn new(ids: Option<Vec<String>>) -> Self {
        let ids = ids.map(|ids| {
            let mut seen = std::collections::HashSet::new();
            ids.into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect::<Vec<_>>()
        });
        let n = ids.as_ref().map_or(0, Vec::len);
        Self {
            ids,
            lent: Mutex::new(vec![false; n]),
            freed: Notify::new(),
        }
    }

    /// Lends a device to an instance, waiting for one as the module docs say: up to
    /// `wait` when `required`, else up to [`CPU_FALLBACK_AFTER`] (or `wait`, if shorter)
    /// before settling for the CPU.
    pub async fn lend(self: &Arc<Self>, required: bool, wait: Duration) -> Result<Lent, NoGpu> {
        let Some(ids) = &self.ids else {
            return Ok(Lent::Unknown);
        };
        if ids.is_empty() {
            return if required {
                Err(NoGpu::NoneOnMachine)
            } else {
                Ok(Lent::Cpu)
            };
        }
        let waited = if required {
            wait
        } else {
            wait.min(CPU_FALLBACK_AFTER)
        };
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            // Registered before looking, so a device given back in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(lease) = self.take() {
                return Ok(Lent::Device(lease));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break;
            }
        }
        if required {
            Err(NoGpu::AllLent {
                total: ids.len(),
                waited,
            })
        } else {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "no GPU came free: the instance starts on the CPU"
            );
            Ok(Lent::Cpu)
        }
    }

    /// The lowest-numbered free device, if any.
    fn take(self: &Arc<Self>) -> Option<GpuLease> {
        let mut lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        let slot = lent.iter().position(|l| !l)?;
        lent[slot] = true;
        Some(GpuLease {
            pool: Arc::clone(self),
            slot,
        })
    }

    /// How many devices are lent now.
    pub fn lent(&self) -> usize {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.iter().filter(|l| **l).count()
    }
}

/// A device lent to one instance; dropping it gives it back.
#[derive(Debug)]
pub struct GpuLease {
    pool: Arc<GpuPool>,
    slot: usize,
}

impl GpuLease {
    /// The device as `CUDA_VISIBLE_DEVICES` names it.
    pub fn device(&self) -> &str {
        self.pool
            .ids
            .as_deref()
            .and_then(|ids| ids.get(self.slot))
            .map_or("", String::as_str)
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        {
            let mut lent = self.pool.lent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = lent.get_mut(self.slot) {
                *l = false;
            }
        }
        self.pool.freed.notify_waiters();
    }
}

/// `launched`, holding `lent` until its exit future resolves: the device comes back when
/// the instance's last process is gone.
pub fn hold_until_exit(lent: Lent, launched: Launched) -> Launched {
    let exited = launched.exited;
    Launched {
        control: launched.control,
        exited: async move {
            let exit: InstanceExit = exited.await;
            drop(lent);
            exit
        }
        .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ids: &[&str]) -> Arc<GpuPool> {
        Arc::new(GpuPool::new(Some(
            ids.iter().map(|s| (*s).to_owned()).collect(),
        )))
    }

    async fn device(p: &Arc<GpuPool>) -> GpuLease {
        match p.lend(true, Duration::ZERO).await {
            Ok(Lent::Device(lease)) => lease,
            other => panic!("expected a device, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn instances_hold_distinct_devices_and_give_them_back() {
        let p = pool(&["0", "1", "3"]);
        let a = device(&p).await;
        let b = device(&p).await;
        assert_eq!((a.device(), b.device()), ("0", "1"));
        // A replacement of `a` while `b` lives gets the device `a` gave back, never `b`'s.
        drop(a);
        let c = device(&p).await;
        assert_eq!(c.device(), "0");
        let d = device(&p).await;
        assert_eq!(d.device(), "3");
        assert_eq!(p.lent(), 3);
        drop((b, c, d));
        assert_eq!(p.lent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_waits_for_a_device_then_refuses_or_falls_back() {
        let p = pool(&["5"]);
        let held = device(&p).await;
        // Required: waits the whole startup timeout, then says why.
        let t = tokio::time::Instant::now();
        let r = p.lend(true, Duration::from_secs(30)).await;
        assert_eq!(
            r.err(),
            Some(NoGpu::AllLent {
                total: 1,
                waited: Duration::from_secs(30)
            })
        );
        assert_eq!(t.elapsed(), Duration::from_secs(30));
        // Not required: the CPU after CPU_FALLBACK_AFTER.
        let t = tokio::time::Instant::now();
        assert!(matches!(
            p.lend(false, Duration::from_secs(30)).await,
            Ok(Lent::Cpu)
        ));
        assert_eq!(t.elapsed(), CPU_FALLBACK_AFTER);
        // A device given back while a launch waits goes to it at once.
        let waiter = {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.lend(true, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = tokio::time::Instant::now();
        drop(held);
        match waiter.await {
            Ok(Ok(Lent::Device(lease))) => assert_eq!(lease.device(), "5"),
            other => panic!("expected the device back, got {other:?}"),
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_listed_twice_is_lent_once() {
        let p = pool(&["4", "4", "7"]);
        let (a, b) = (device(&p).await, device(&p).await);
        assert_eq!((a.device(), b.device()), ("4", "7"));
        assert!(matches!(p.lend(false, Duration::ZERO).await, Ok(Lent::Cpu)));
    }

    #[tokio::test]
    async fn unknown_or_empty_machines() {
        let unknown = Arc::new(GpuPool::new(None));
        assert!(matches!(
            unknown.lend(true, Duration::ZERO).await,
            Ok(Lent::Unknown)
        ));
        let empty = pool(&[]);
        assert_eq!(
            empty.lend(true, Duration::ZERO).await.err(),
            Some(NoGpu::NoneOnMachine)
        );
        assert!(matches!(
            empty.lend(false, Duration::ZERO).await,
            Ok(Lent::Cpu)
        ));
    }
}
