//! The machine's GPUs, lent to instances.
//!
//! Every function launcher of a `thaw serve` shares one [`GpuPool`]. An instance of a GPU
//! function takes a group of free devices before it starts ([`GpuPool::take`]) and sees
//! only those (`CUDA_VISIBLE_DEVICES`); the [`GpuLease`] goes with the instance's exit
//! future and puts the devices back when the last of its processes is gone. So two live
//! instances never share a device, however often instances are replaced, and a launch
//! that finds every device taken fails with [`NoFreeGpu`] rather than doubling up.
//!
//! The machine's devices are `THAW_GPUS` (`0,1,3`), else thaw's own
//! `CUDA_VISIBLE_DEVICES`, else one per GPU the NVIDIA driver lists under
//! `/proc/driver/nvidia/gpus`. With none of them thaw does not know the machine's GPUs:
//! nothing is lent, and instances see whatever the driver shows them.

use std::sync::{Arc, Mutex};

/// A launch found too few free devices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the instance needs {wanted} GPU(s), but {free} of this machine's {total} are free (the others are held by running instances)")]
pub struct NoFreeGpu {
    /// Devices asked for.
    pub wanted: usize,
    /// Devices free at the time.
    pub free: usize,
    /// Devices the machine has.
    pub total: usize,
}

/// The machine's GPUs and which are lent.
#[derive(Debug)]
pub struct GpuPool {
    /// Device ids as `CUDA_VISIBLE_DEVICES` names them; `None` when thaw does not know.
    ids: Option<Vec<String>>,
    /// `lent[i]` while `ids[i]` is held by an instance.
    lent: Mutex<Vec<bool>>,
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

    /// A pool of these devices; `None`: unknown, lend nothing.
    pub fn new(ids: Option<Vec<String>>) -> Self {
        let n = ids.as_ref().map_or(0, Vec::len);
        Self {
            ids,
            lent: Mutex::new(vec![false; n]),
        }
    }

    /// Lends `count` free devices, the lowest-numbered first; `Ok(None)` when the
    /// machine's GPUs are unknown.
    pub fn take(self: &Arc<Self>, count: u32) -> Result<Option<GpuLease>, NoFreeGpu> {
        let Some(ids) = &self.ids else {
            return Ok(None);
        };
        let wanted = (count as usize).max(1);
        let mut lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        let free: Vec<usize> = (0..ids.len()).filter(|&i| !lent[i]).collect();
        if free.len() < wanted {
            return Err(NoFreeGpu {
                wanted,
                free: free.len(),
                total: ids.len(),
            });
        }
        let slots = free[..wanted].to_vec();
        for &i in &slots {
            lent[i] = true;
        }
        Ok(Some(GpuLease {
            pool: Arc::clone(self),
            slots,
        }))
    }

    /// How many devices are lent now.
    pub fn lent(&self) -> usize {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.iter().filter(|l| **l).count()
    }
}

/// Devices lent to one instance; dropping it gives them back.
#[derive(Debug)]
pub struct GpuLease {
    pool: Arc<GpuPool>,
    slots: Vec<usize>,
}

impl GpuLease {
    /// The devices as `CUDA_VISIBLE_DEVICES` wants them.
    pub fn devices(&self) -> String {
        let ids = self.pool.ids.as_deref().unwrap_or_default();
        let names: Vec<&str> = self
            .slots
            .iter()
            .filter_map(|&i| ids.get(i).map(String::as_str))
            .collect();
        names.join(",")
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut lent = self.pool.lent.lock().unwrap_or_else(|p| p.into_inner());
        for &i in &self.slots {
            if let Some(l) = lent.get_mut(i) {
                *l = false;
            }
        }
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

    /// A lease of `count` devices, which the test expects to be free.
    fn lend(p: &Arc<GpuPool>, count: u32) -> GpuLease {
        p.take(count)
            .expect("free devices")
            .expect("a known machine")
    }

    #[test]
    fn instances_hold_distinct_devices_and_give_them_back() {
        let p = pool(&["0", "1", "3"]);
        let a = lend(&p, 1);
        let b = lend(&p, 1);
        assert_eq!((a.devices().as_str(), b.devices().as_str()), ("0", "1"));
        // A replacement of `a` while `b` lives gets the device `a` gave back, never `b`'s.
        drop(a);
        let c = lend(&p, 1);
        assert_eq!(c.devices(), "0");
        let d = lend(&p, 1);
        assert_eq!(d.devices(), "3");
        assert_eq!(p.lent(), 3);
        // All lent: the next launch is refused, and says so.
        assert_eq!(
            p.take(1).err(),
            Some(NoFreeGpu {
                wanted: 1,
                free: 0,
                total: 3
            })
        );
        drop((b, c, d));
        assert_eq!(p.lent(), 0);
    }

    #[test]
    fn groups_take_several_free_devices() {
        let p = pool(&["0", "1", "2", "3"]);
        let one = lend(&p, 1);
        let two = lend(&p, 2);
        assert_eq!(two.devices(), "1,2");
        assert!(p.take(2).is_err());
        drop(one);
        assert_eq!(lend(&p, 2).devices(), "0,3");
    }

    #[test]
    fn unknown_machine_lends_nothing() {
        let p = Arc::new(GpuPool::new(None));
        assert!(matches!(p.take(1), Ok(None)));
        assert_eq!(p.lent(), 0);
    }
}
