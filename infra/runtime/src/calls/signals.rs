//! Wake-ups after a commit. They say "look again", never what changed: whoever wakes
//! reads the store, so a missed or spurious wake-up costs a read, never correctness.
//!
//! - A long-poll watches one call id; the entry goes when its last watcher drops, so
//!   polls that time out leave nothing behind.
//! - A map stream watches its map id, whose value counts the items finished since.
//! - An executor waits on its function's [`Notify`]; `notify_one` keeps a permit when
//!   nobody is waiting, so work committed between a claim and the wait is never missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

/// The registry of everyone waiting on the store.
#[derive(Debug, Default)]
pub struct Signals {
    calls: Mutex<HashMap<String, watch::Sender<()>>>,
    maps: Mutex<HashMap<String, watch::Sender<u64>>>,
    work: Mutex<HashMap<String, Arc<Notify>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Signals {
    /// Starts watching a call. Subscribe before reading the store, then wait.
    pub fn watch_call(self: &Arc<Self>, id: &str) -> Watch<()> {
        let rx = lock(&self.calls)
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Watch {
            signals: Arc::clone(self),
            key: Key::Call(id.to_owned()),
            rx: Some(rx),
        }
    }

    /// A call reached a terminal state (or was otherwise updated).
    pub fn call_changed(&self, id: &str) {
        if let Some(tx) = lock(&self.calls).get(id) {
            tx.send_replace(());
        }
    }

    /// Starts watching a map; the value counts its items finished from now on.
    pub fn watch_map(self: &Arc<Self>, map_id: &str) -> Watch<u64> {
        let rx = lock(&self.maps)
            .entry(map_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watch {
            signals: Arc::clone(self),
            key: Key::Map(map_id.to_owned()),
            rx: Some(rx),
        }
    }

    /// `finished` items of a map reached a terminal state.
    pub fn map_progressed(&self, map_id: &str, finished: u64) {
        if let Some(tx) = lock(&self.maps).get(map_id) {
            tx.send_modify(|n| *n += finished);
        }
    }

    /// The wake-up of a function's executor.
    pub fn work(&self, function: &str) -> Arc<Notify> {
        Arc::clone(lock(&self.work).entry(function.to_owned()).or_default())
    }

    /// New work for a function was committed.
    pub fn wake(&self, function: &str) {
        if let Some(n) = lock(&self.work).get(function) {
            n.notify_one();
        }
    }
}

#[derive(Debug)]
enum Key {
    Call(String),
    Map(String),
}

/// A subscription; dropping the last one for a key removes the key.
#[derive(Debug)]
pub struct Watch<T> {
    signals: Arc<Signals>,
    key: Key,
    rx: Option<watch::Receiver<T>>,
}

impl<T> Watch<T> {
    /// Waits for the next change. Never errors: the sender lives while we do.
    pub async fn changed(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The receiver, for reading the current value.
    pub fn receiver(&mut self) -> Option<&mut watch::Receiver<T>> {
        self.rx.as_mut()
    }
}

impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        drop(self.rx.take());
        match &self.key {
            Key::Call(id) => {
                let mut calls = lock(&self.signals.calls);
                if calls.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
                    calls.remove(id);
                }
            }
            Key::Map(id) => {
                let mut maps = lock(&self.signals.maps);
                if maps.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
                    maps.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_watcher_and_dropping_cleans_up() {
        let s = Arc::new(Signals::default());
        let mut w = s.watch_call("c1");
        s.call_changed("c1");
        tokio::time::timeout(std::time::Duration::from_secs(1), w.changed())
            .await
            .expect("woken");
        drop(w);
        assert!(lock(&s.calls).is_empty());
    }

    #[tokio::test]
    async fn work_committed_before_the_wait_is_not_missed() {
        let s = Signals::default();
        let n = s.work("f");
        s.wake("f");
        tokio::time::timeout(std::time::Duration::from_secs(1), n.notified())
            .await
            .expect("permit kept");
    }
}
