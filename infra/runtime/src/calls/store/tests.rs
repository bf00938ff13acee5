use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::engine::PANIC_BUDGET;
use super::*;
use crate::calls::{CallKind, CallStatus};

fn open(dir: &Path) -> CallStore {
    CallStore::open(dir, BTreeMap::new(), Arc::new(Signals::default())).expect("open")
}

/// Opens again once a dropped store's writer thread has let go of the directory.
async fn reopen(dir: &Path) -> Result<CallStore, StoreError> {
    let open = || CallStore::open(dir, BTreeMap::new(), Arc::new(Signals::default()));
    let mut opened = open();
    for _ in 0..100 {
        if !matches!(opened, Err(StoreError::Locked(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened = open();
    }
    opened
}

fn open_bounded(dir: &Path, max_queue: u32) -> CallStore {
    let settings = BTreeMap::from([(
        "f".to_owned(),
        FunctionSettings {
            result_ttl: Duration::from_secs(3600),
            max_queue,
        },
    )]);
    CallStore::open(dir, settings, Arc::new(Signals::default())).expect("open")
}

fn json(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

async fn spawn(
    store: &CallStore,
    input: &'static str,
    key: Option<&str>,
) -> Result<Spawned, StoreError> {
    store
        .spawn("f", CallKind::Spawn, json(input), key.map(str::to_owned))
        .await
}

#[tokio::test]
async fn spawn_claim_finish_and_idempotency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = spawn(&store, "{}", Some("k")).await.expect("spawn");
    let b = spawn(&store, "{}", Some("k")).await.expect("spawn again");
    assert_eq!(a.call_id, b.call_id);
    assert!(b.replayed);
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1);
    store
        .finish(&a.call_id, Finish::Succeeded(json("{\"x\":1}")))
        .await
        .expect("finish");
    let r = store.get(&a.call_id).await.expect("get").expect("exists");
    assert_eq!(r.status, CallStatus::Succeeded);
    assert_eq!(r.result.as_deref().map(RawValue::get), Some("{\"x\":1}"));
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path());
    let second = CallStore::open(dir.path(), BTreeMap::new(), Arc::new(Signals::default()));
    assert!(matches!(second, Err(StoreError::Locked(_))));
}

#[tokio::test]
async fn a_cancelled_call_is_never_claimed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let s = spawn(&store, "{}", None).await.expect("spawn");
    let r = store
        .cancel(&s.call_id)
        .await
        .expect("cancel")
        .expect("exists");
    assert_eq!(r.status, CallStatus::Cancelled);
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn a_store_from_before_versioning_is_migrated_and_keeps_its_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // The layout every store had before `user_version` was set: version 0.
        let conn = rusqlite::Connection::open(dir.path().join("calls.db")).expect("db");
        conn.execute_batch(schema::MIGRATIONS[0])
            .expect("old schema");
        conn.execute(
            "INSERT INTO calls (id, function, kind, status, input, idempotency_key, created_ms) \
             VALUES ('call_old', 'f', 'spawn', 'queued', X'7B7D', 'k', 1)",
            [],
        )
        .expect("old call");
    }
    let store = open(dir.path());
    let version: i64 = rusqlite::Connection::open(store.path())
        .expect("db")
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
    let old = store.get("call_old").await.expect("get").expect("kept");
    assert_eq!(old.status, CallStatus::Queued);
    // A key from before digests were stored replays, whatever the input.
    let again = spawn(&store, "[1]", Some("k")).await.expect("replay");
    assert_eq!(again.call_id, "call_old");
}

#[tokio::test]
async fn a_store_written_by_a_newer_thaw_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    rusqlite::Connection::open(dir.path().join("calls.db"))
        .expect("db")
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump");
    let opened = reopen(dir.path()).await;
    match opened {
        Err(StoreError::SchemaTooNew {
            found, supported, ..
        }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_begin_is_reported_as_unavailable_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.inject(Fault::Begin, 1);
    let e = spawn(&store, "{}", None).await.expect_err("BEGIN failed");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(store.health().is_err(), "the failure shows in health");
    spawn(&store, "{}", None)
        .await
        .expect("the next batch commits");
    assert!(store.health().is_ok());
}

#[tokio::test]
async fn a_writer_panic_fails_its_batch_and_the_writer_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.inject(Fault::Panic, 1);
    let e = spawn(&store, "{}", None)
        .await
        .expect_err("the writer panicked");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let s = spawn(&store, "{}", None).await.expect("restarted");
    assert!(store.get(&s.call_id).await.expect("get").is_some());
    assert_eq!(store.writer_health().restarts(), 1);
    assert!(store.health().is_ok());
    // Nothing of the failed batch was committed.
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn an_operation_that_panics_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let bad = store.write(
        |w: &mut engine::Writer| -> Result<(), StoreError> {
            w.conn.execute(
                "INSERT INTO maps (id, function, created_ms) VALUES ('m', 'f', 0)",
                [],
            )?;
            panic!("a bug in an operation");
        },
        |_, _| {},
    );
    let (bad, good) = tokio::join!(bad, spawn(&store, "{}", None));
    assert!(matches!(bad, Err(StoreError::Unavailable(_))), "{bad:?}");
    good.expect("the other op in the batch commits");
    assert!(
        store.map_summary("m").await.expect("read").is_none(),
        "rolled back"
    );
    assert_eq!(store.writer_health().restarts(), 0);
}

#[tokio::test]
async fn a_writer_that_keeps_panicking_is_stopped_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.inject(Fault::Panic, PANIC_BUDGET as u32 + 1);
    for _ in 0..=PANIC_BUDGET {
        assert!(spawn(&store, "{}", None).await.is_err());
    }
    // Stopped: answered at once with the reason, never "shutting down", never a hang.
    let e = tokio::time::timeout(Duration::from_secs(5), spawn(&store, "{}", None))
        .await
        .expect("answered")
        .expect_err("stopped");
    assert!(e.to_string().contains("stopped"), "{e}");
    let health = store.health().expect_err("reported");
    assert!(health.to_string().contains("restart thaw"), "{health}");
    // Reads do not depend on the writer.
    assert!(store.get("call_nope").await.expect("read").is_none());
}

#[tokio::test]
async fn a_failed_outcome_record_is_retried_until_it_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = spawn(&store, "{}", None).await.expect("spawn");
    let b = spawn(&store, "{}", None).await.expect("spawn");
    store.claim("f", 10).await.expect("claim");
    store.inject(Fault::Commit, 2);
    store
        .finish(&a.call_id, Finish::Succeeded(json("1")))
        .await
        .expect("recorded in the end");
    let r = store.get(&a.call_id).await.expect("get").expect("exists");
    assert_eq!(r.status, CallStatus::Succeeded, "not left running");
    store.inject(Fault::Begin, 1);
    store
        .unclaim(&b.call_id, 0)
        .await
        .expect("put back in the end");
    let r = store.get(&b.call_id).await.expect("get").expect("exists");
    assert_eq!(r.status, CallStatus::Queued);
}

#[tokio::test]
async fn spawns_and_maps_past_max_queue_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_bounded(dir.path(), 2);
    spawn(&store, "1", Some("a")).await.expect("1 of 2");
    spawn(&store, "2", None).await.expect("2 of 2");
    let e = spawn(&store, "3", None).await.expect_err("full");
    assert!(matches!(e, StoreError::QueueFull { limit: 2, .. }), "{e:?}");
    assert!(matches!(
        store.create_map("f").await,
        Err(StoreError::QueueFull { .. })
    ));
    // A replay adds nothing, so it is answered.
    assert!(
        spawn(&store, "1", Some("a"))
            .await
            .expect("replay")
            .replayed
    );
    // Running calls are not the backlog: claiming one makes room.
    store.claim("f", 1).await.expect("claim");
    spawn(&store, "3", None).await.expect("room again");
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let first = spawn(&store, "{\"n\":1}", Some("k")).await.expect("first");
    let e = spawn(&store, "{\"n\":2}", Some("k"))
        .await
        .expect_err("another input");
    assert!(
        matches!(e, StoreError::IdempotencyKeyReused { .. }),
        "{e:?}"
    );
    let again = spawn(&store, "{\"n\":1}", Some("k"))
        .await
        .expect("same input");
    assert_eq!(again.call_id, first.call_id);
    // Still refused once the result has been collected (the digest stays).
    store.claim("f", 1).await.expect("claim");
    store
        .finish(&first.call_id, Finish::Succeeded(json("1")))
        .await
        .expect("finish");
    store
        .write(
            |w| {
                let now = crate::calls::now_ms();
                Ok(w.conn
                    .execute("UPDATE calls SET expires_ms = ?1", [now - 1])?)
            },
            |_, _| {},
        )
        .await
        .expect("expire");
    store.collect_expired().await.expect("collect");
    assert!(matches!(
        spawn(&store, "{\"n\":2}", Some("k")).await,
        Err(StoreError::IdempotencyKeyReused { .. })
    ));
}

fn items(n: usize) -> Vec<Result<Bytes, CallFailure>> {
    (0..n).map(|i| Ok(Bytes::from(i.to_string()))).collect()
}

#[tokio::test]
async fn held_map_items_run_only_once_closed_and_a_discarded_map_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let map = store.create_map("f").await.expect("map");
    store
        .add_map_items(&map, "f", 0, items(3), true)
        .await
        .expect("items");
    let (claimed, next_due) = store.claim("f", 10).await.expect("claim");
    assert!(claimed.is_empty(), "held items are not due");
    assert_eq!(next_due, None, "and not waited for");
    store.close_map(&map, 3, None).await.expect("close");
    store.release_map(&map, "f").await.expect("release");
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    assert_eq!(claimed.len(), 3);

    let refused = store.create_map("f").await.expect("map");
    store
        .add_map_items(&refused, "f", 0, items(2500), true)
        .await
        .expect("items");
    store.discard_map(&refused).await.expect("discard");
    assert!(store.map_summary(&refused).await.expect("read").is_none());
    let (claimed, _) = store.claim("f", 5000).await.expect("claim");
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn a_large_map_is_cancelled_a_chunk_per_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let map = store.create_map("f").await.expect("map");
    let n = 2 * maps::CHUNK + maps::CHUNK / 2;
    store
        .add_map_items(&map, "f", 0, items(n), false)
        .await
        .expect("items");
    let before = store.writer_health().commits();
    assert_eq!(store.cancel_map(&map).await.expect("cancel"), n);
    // One commit per chunk, so a spawn waits for one chunk at most, never the map.
    assert_eq!(store.writer_health().commits() - before, 3);
    let summary = store.map_summary(&map).await.expect("read").expect("map");
    assert_eq!(summary.counts.cancelled, n as i64);
    assert_eq!(summary.counts.queued, 0);
}

#[tokio::test]
async fn a_page_of_results_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let map = store.create_map("f").await.expect("map");
    store
        .add_map_items(&map, "f", 0, items(10), false)
        .await
        .expect("items");
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    let big = Bytes::from(format!("\"{}\"", "x".repeat(1000)));
    for c in &claimed {
        store
            .finish(&c.call_id, Finish::Succeeded(big.clone()))
            .await
            .expect("finish");
    }
    let page = store
        .map_items(&map, MapOrder::Index, 0, 100, 3500)
        .await
        .expect("page");
    assert_eq!(page.len(), 3, "stops before the bytes run over");
    let next = store
        .map_items(&map, MapOrder::Index, 3, 100, 1)
        .await
        .expect("page");
    assert_eq!(next.len(), 1, "one item however large, so paging moves on");
    assert_eq!(next[0].index, 3);
    let all = store
        .map_items(&map, MapOrder::Completion, 0, 100, usize::MAX)
        .await
        .expect("page");
    assert_eq!(all.len(), 10);
}

#[tokio::test]
async fn a_restart_discards_an_unacknowledged_spawn_map_and_releases_an_accepted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let cut = store.create_map("f").await.expect("map");
    store
        .add_map_items(&cut, "f", 0, items(3), true)
        .await
        .expect("items");
    let accepted = store.create_map("f").await.expect("map");
    store
        .add_map_items(&accepted, "f", 0, items(2), true)
        .await
        .expect("items");
    store.close_map(&accepted, 2, None).await.expect("close");
    // Stopped before the 202 of `cut` and before `accepted` was released.
    drop(store);
    let store = reopen(dir.path()).await.expect("reopen");
    let cut = store.map_summary(&cut).await.expect("read").expect("map");
    assert_eq!(
        cut.total,
        Some(0),
        "none of an unacknowledged spawn_map is kept"
    );
    let (claimed, _) = store.claim("f", 10).await.expect("claim");
    assert_eq!(claimed.len(), 2, "the accepted map's items run");
}
