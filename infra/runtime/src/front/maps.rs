//! `/v1` maps: one function over many inputs.
//!
//! - `POST /v1/functions/{f}/map[?order=completion]`: a JSON array or NDJSON in, NDJSON
//!   out, one line per input: `{"index", "ok"}` or `{"index", "error"}`, in input order
//!   unless `order=completion`. Inputs are read from the body only while fewer than a
//!   window of items are unfinished, so a huge map holds a window, not the map, and a
//!   client that stops reading slows nothing but its own output: results wait in the
//!   store. Every item is committed before it runs. The map id is in the `Thaw-Map-Id`
//!   header, so results can be fetched again with `GET /v1/maps/{id}` if the stream is
//!   cut. An input that ends early ends the stream with `{"error"}` after the items
//!   before it: `InvalidInput` (it cannot be split), `MapTooLarge` (past a limit, when the
//!   body did not declare its length), `StoreError` (the store failed); the map records
//!   the same as its `input_error`, and its `total` is the items committed.
//! - `POST /v1/functions/{f}/spawn_map`: the same input, committed entirely before a 202
//!   `{"map_id", "total"}`, and all or nothing: its items are held until the input has
//!   been read, and deleted if it is refused, so none runs before the 202.
//! - `GET /v1/maps/{id}?offset=N&limit=L&wait=S`: progress and a page of results in input
//!   order from `offset` (`order=completion&after=SEQ` pages by completion instead);
//!   `wait` long-polls for the next result. A page holds at most `L` (≤ 10,000) items
//!   and [`PAGE_BYTES`] of results, whichever comes first; `next_offset` (`next_after`)
//!   says where the next page starts.
//! - `DELETE /v1/maps/{id}`: cancels the map's queued items, a chunk per commit so other
//!   calls are not held up.
//!
//! # Limits
//!
//! | limit | value | past it |
//! |---|---|---|
//! | body | [`MAX_MAP_BYTES`] (32 MiB) | 413 `MapTooLarge`, nothing kept (a streaming map whose body does not declare its length ends with a `MapTooLarge` line instead) |
//! | items | [`MAX_MAP_ITEMS`] (100,000) | as above |
//! | backlog | the function's `max_queue` queued calls | 429 `QueueFull` with `Retry-After` |
//!
//! Why these: a map's inputs stay in the state directory with its items until their
//! `result_ttl`, so the body bound is what one request may add there; 32 MiB holds five
//! maximal (6 MiB) items and refuses the 64 MiB of a hostile client. 100,000 items is
//! the largest map thaw is tested with; each item is a row of a few hundred bytes, and
//! releasing or cancelling them goes in chunks. The backlog check admits a map while the
//! function has fewer than `max_queue` calls queued; the map's own items then queue up to
//! its window (streaming) or its size (`spawn_map`), both bounded above.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::calls::wait_of;
use super::{pool, ApiError, ApiPath, ApiQuery, Shared};
use crate::calls::input::{Item, Splitter};
use crate::calls::signals::Watch;
use crate::calls::store::{CallStore, MapCounts, MapLine, MapOrder as Order, StoreError};

/// Largest map body, in bytes (see the module docs for why).
pub const MAX_MAP_BYTES: u64 = 32 << 20;
/// Most items in one map (see the module docs for why).
pub const MAX_MAP_ITEMS: i64 = 100_000;
/// Most bytes of results in one page, and in one read of a streaming map's results.
pub const PAGE_BYTES: usize = 4 << 20;
/// Items committed per transaction while reading a map's input...
const INSERT_BATCH: usize = 512;
/// ...or fewer, once they hold this many bytes: memory holds one batch, not the map.
const BATCH_BYTES: usize = 4 << 20;
/// Longest wait for the next chunk of a map's body.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Results read from the store per query.
const PAGE: usize = 512;
/// How much of a refused body is read (and discarded) so the client reads the 413.
const DRAIN_CAP: u64 = 128 << 20;

#[derive(Debug, Deserialize)]
pub(super) struct MapQuery {
    #[serde(default)]
    order: Order,
}

/// The window of unfinished items a streaming map keeps: enough to keep every slot of
/// the function busy while the next items are committed.
fn window(rt: &Shared, function: &str) -> usize {
    rt.pools.get(function).map_or(64, |p| {
        let spec = &p.plan().spec;
        (4 * spec.max_containers as usize * spec.concurrency as usize).clamp(64, 4096)
    })
}

/// 413 for a body that declares a length over [`MAX_MAP_BYTES`].
fn declared_too_large(headers: &HeaderMap) -> Option<ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())?;
    (declared > MAX_MAP_BYTES).then(|| ApiError::MapTooLarge(bytes_limit(declared)))
}

fn bytes_limit(seen: u64) -> String {
    format!(
        "a map's input is limited to {} MiB; this one is {seen} bytes or more",
        MAX_MAP_BYTES >> 20
    )
}

/// Reads and discards what is left of a refused body (at most [`DRAIN_CAP`], for at most
/// [`CHUNK_TIMEOUT`] per chunk), so the client finishes sending and reads our answer
/// rather than a reset. Nothing is kept.
async fn drain(chunks: &mut BodyDataStream) {
    let mut read = 0u64;
    while read <= DRAIN_CAP {
        match tokio::time::timeout(CHUNK_TIMEOUT, chunks.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// A map's body, once its function exists and the length it declares is within
/// [`MAX_MAP_BYTES`]; a refused body is drained first so the client reads the 413.
async fn admit(
    rt: &Shared,
    function: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<BodyDataStream, ApiError> {
    pool(rt, function)?;
    let mut chunks = body.into_data_stream();
    if let Some(refused) = declared_too_large(headers) {
        drain(&mut chunks).await;
        return Err(refused);
    }
    Ok(chunks)
}

pub(super) async fn map(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    ApiQuery(q): ApiQuery<MapQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let chunks = admit(&rt, &function, &headers, body).await?;
    let map_id = rt.store.create_map(&function).await?;
    // Both watches exist before the first item is committed, so no finish is missed.
    let ingest_watch = rt.store.signals().watch_map(&map_id);
    let emit_watch = rt.store.signals().watch_map(&map_id);
    let window = window(&rt, &function);
    let (end_tx, end_rx) = watch::channel(None);
    tokio::spawn(stream_ingest(
        rt.store.clone(),
        function,
        map_id.clone(),
        chunks,
        Some((window, ingest_watch)),
        end_tx,
    ));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(emit(
        rt.store.clone(),
        map_id.clone(),
        q.order,
        emit_watch,
        end_rx,
        tx,
    ));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&map_id) {
        resp.headers_mut().insert("thaw-map-id", v);
    }
    Ok(resp)
}

/// A streaming map's input: read, then its end recorded in the store and told to
/// [`emit`] directly, so the stream ends even if the store could not record it.
async fn stream_ingest(
    store: CallStore,
    function: String,
    map_id: String,
    mut chunks: BodyDataStream,
    window: Option<(usize, Watch<u64>)>,
    end_tx: watch::Sender<Option<IngestEnd>>,
) {
    let ingested = ingest(&store, &function, &map_id, &mut chunks, window, false).await;
    if matches!(ingested.ended, Ended::TooLarge(_)) {
        drain(&mut chunks).await;
    }
    let end = ingested.end();
    record_end(&store, &map_id, &end).await;
    let _ = end_tx.send(Some(end));
}

/// Records how a streaming map's input ended: a few tries, since the store may be what
/// failed; past them the next start cuts the map off at what was committed.
async fn record_end(store: &CallStore, map_id: &str, end: &IngestEnd) {
    let message = end.error.as_ref().map(|(_, m)| m.clone());
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        match store.close_map(map_id, end.total, message.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(map = map_id, attempt, error = %e, "cannot record a map's end");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

pub(super) async fn spawn_map(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut chunks = admit(&rt, &function, &headers, body).await?;
    let store = &rt.store;
    let map_id = store.create_map(&function).await?;
    let ingested = ingest(store, &function, &map_id, &mut chunks, None, true).await;
    let total = ingested.total;
    let input_error = match ingested.ended {
        Ended::Input(input_error) => input_error,
        Ended::TooLarge(why) => {
            drain(&mut chunks).await;
            discard(store, &map_id).await;
            return Err(ApiError::MapTooLarge(why));
        }
        Ended::Store(e) => {
            discard(store, &map_id).await;
            return Err(e.into());
        }
    };
    if let Err(e) = store.close_map(&map_id, total, input_error.clone()).await {
        discard(store, &map_id).await;
        return Err(e.into());
    }
    // Accepted now: a failure to release is answered, and the next start releases them.
    store.release_map(&map_id, &function).await?;
    let mut reply = json!({"map_id": map_id, "total": total});
    if let Some(e) = input_error {
        reply["input_error"] = Value::String(e);
    }
    let mut resp = (StatusCode::ACCEPTED, Json(reply)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/maps/{map_id}")) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

/// Deletes a `spawn_map` that is not acknowledged. If the store cannot, its items stay
/// held (they never run) and the next start deletes them.
async fn discard(store: &CallStore, map_id: &str) {
    if let Err(e) = store.discard_map(map_id).await {
        tracing::error!(map = map_id, error = %e, "cannot discard a refused map; its items stay held");
    }
}

/// Items read but not yet committed, and how many were committed before them.
struct Batch<'a> {
    map_id: &'a str,
    function: &'a str,
    held: bool,
    committed: i64,
    items: Vec<Item>,
    /// Input bytes in `items`.
    bytes: usize,
}

impl Batch<'_> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Commits the items, indexed after those committed before; counted only once
    /// committed.
    async fn commit(&mut self, store: &CallStore) -> Result<(), StoreError> {
        let items = std::mem::take(&mut self.items);
        self.bytes = 0;
        let n = items.len() as i64;
        store
            .add_map_items(self.map_id, self.function, self.committed, items, self.held)
            .await?;
        self.committed += n;
        Ok(())
    }
}

/// How a map's input ended.
#[derive(Debug)]
enum Ended {
    /// Read to its end, or to an error of the input (the items before it stand).
    Input(Option<String>),
    /// Past [`MAX_MAP_BYTES`] or [`MAX_MAP_ITEMS`].
    TooLarge(String),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for Ended {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// What [`ingest`] did.
#[derive(Debug)]
struct Ingested {
    /// Items committed.
    total: i64,
    ended: Ended,
}

/// How a streaming map's input ended, as its stream reports it.
#[derive(Debug, Clone)]
struct IngestEnd {
    total: i64,
    /// The error line's type and message, if it ended early.
    error: Option<(&'static str, String)>,
}

impl Ingested {
    fn end(self) -> IngestEnd {
        let error = match self.ended {
            Ended::Input(None) => None,
            Ended::Input(Some(e)) => Some(("InvalidInput", e)),
            Ended::TooLarge(e) => Some(("MapTooLarge", e)),
            Ended::Store(e) => Some((
                "StoreError",
                format!("the call store failed while the input was read; later items were not received: {e}"),
            )),
        };
        IngestEnd {
            total: self.total,
            error,
        }
    }
}

/// Reads a map's input into the store, `INSERT_BATCH` items (or `BATCH_BYTES`) per
/// commit. With a window, waits while `window` items are unfinished. `held` items wait for
/// [`CallStore::release_map`].
/// Never records the end: its caller does, as the kind of map requires.
async fn ingest(
    store: &CallStore,
    function: &str,
    map_id: &str,
    chunks: &mut BodyDataStream,
    window: Option<(usize, Watch<u64>)>,
    held: bool,
) -> Ingested {
    let mut batch = Batch {
        map_id,
        function,
        held,
        committed: 0,
        items: Vec::new(),
        bytes: 0,
    };
    let ended = match read_input(store, &mut batch, chunks, window).await {
        Ok(input_error) => Ended::Input(input_error),
        Err(ended) => ended,
    };
    Ingested {
        total: batch.committed,
        ended,
    }
}

async fn read_input(
    store: &CallStore,
    batch: &mut Batch<'_>,
    chunks: &mut BodyDataStream,
    mut window: Option<(usize, Watch<u64>)>,
) -> Result<Option<String>, Ended> {
    let mut splitter = Splitter::default();
    let mut received: u64 = 0;
    let mut input_error: Option<String> = None;
    let mut ended = false;
    loop {
        loop {
            if let Some((size, watch)) = window.as_mut() {
                loop {
                    let finished = watch.receiver().map_or(0, |rx| *rx.borrow_and_update()) as i64;
                    if batch.committed + (batch.len() as i64) - finished < *size as i64 {
                        break;
                    }
                    if !batch.is_empty() {
                        batch.commit(store).await?;
                        continue;
                    }
                    watch.changed().await;
                }
            }
            match splitter.next_item() {
                Ok(Some(item)) => {
                    if batch.committed + batch.len() as i64 >= MAX_MAP_ITEMS {
                        return Err(Ended::TooLarge(format!(
                            "a map is limited to {MAX_MAP_ITEMS} items"
                        )));
                    }
                    batch.bytes += item.as_ref().map_or(0, Bytes::len);
                    batch.items.push(item);
                    if batch.len() >= INSERT_BATCH || batch.bytes >= BATCH_BYTES {
                        batch.commit(store).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    input_error = Some(e.0);
                    ended = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            batch.commit(store).await?;
        }
        if ended {
            break;
        }
        match tokio::time::timeout(CHUNK_TIMEOUT, chunks.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                if received > MAX_MAP_BYTES {
                    return Err(Ended::TooLarge(bytes_limit(received)));
                }
                splitter.push(&chunk);
            }
            Ok(Some(Err(e))) => {
                input_error = Some(format!("the request body broke off: {e}"));
                break;
            }
            // The splitter still holds the last item; the next pass takes it.
            Ok(None) => {
                splitter.finish();
                ended = true;
            }
            Err(_) => {
                input_error = Some(format!(
                    "no input for {}s; the map was closed",
                    CHUNK_TIMEOUT.as_secs()
                ));
                break;
            }
        }
    }
    Ok(input_error)
}

/// Streams a map's results as NDJSON lines until every item has been sent, then the
/// input's error line if it ended early.
async fn emit(
    store: CallStore,
    map_id: String,
    order: Order,
    mut watch: Watch<u64>,
    mut end_rx: watch::Receiver<Option<IngestEnd>>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut sent: i64 = 0;
    let mut after_seq: i64 = 0;
    let mut end: Option<IngestEnd> = None;
    loop {
        let from = if order == Order::Index {
            sent
        } else {
            after_seq
        };
        let items = match store
            .map_items(&map_id, order, from, PAGE, PAGE_BYTES)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                let _ = tx.send(error_line("StoreError", &e.to_string())).await;
                return;
            }
        };
        if items.is_empty() {
            if end.is_none() {
                end = end_rx.borrow_and_update().clone();
            }
            if let Some(end) = end.as_ref().filter(|e| sent >= e.total) {
                if let Some((kind, message)) = &end.error {
                    let _ = tx.send(error_line(kind, message)).await;
                }
                return;
            }
            tokio::select! {
                () = watch.changed() => {}
                changed = end_rx.changed(), if end.is_none() => {
                    if changed.is_err() && end_rx.borrow().is_none() {
                        let _ = tx
                            .send(error_line("StoreError", "the map's input reader stopped"))
                            .await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            continue;
        }
        for item in items {
            sent += 1;
            after_seq = after_seq.max(item.done_seq);
            if tx.send(Bytes::from(item.to_line())).await.is_err() {
                // The client went away; the map's items run on and stay in the store.
                return;
            }
        }
    }
}

fn error_line(kind: &str, message: &str) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"error": {"type": kind, "message": message}}))
        .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    offset: Option<i64>,
    after: Option<i64>,
    limit: Option<usize>,
    wait: Option<f64>,
    #[serde(default)]
    order: Order,
}

/// A page of a map, serialised straight from the results read (no JSON tree).
#[derive(Debug, Serialize)]
struct Page<'a> {
    map_id: &'a str,
    function: &'a str,
    status: &'static str,
    total: Option<i64>,
    counts: &'a MapCounts,
    created_ms: i64,
    results: Vec<MapLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_error: Option<&'a str>,
}

pub(super) async fn get(
    State(rt): State<Shared>,
    ApiPath(map_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let offset = q.offset.unwrap_or(0).max(0);
    let after = q.after.unwrap_or(0).max(0);
    let wait = wait_of(q.wait);
    let deadline = tokio::time::Instant::now() + wait;
    let mut watch = (!wait.is_zero()).then(|| rt.store.signals().watch_map(&map_id));
    let mut closing = rt.closing_signal();
    loop {
        let summary = rt
            .store
            .map_summary(&map_id)
            .await?
            .ok_or_else(|| ApiError::MapNotFound(map_id.clone()))?;
        let from = if q.order == Order::Index {
            offset
        } else {
            after
        };
        let items = rt
            .store
            .map_items(&map_id, q.order, from, limit, PAGE_BYTES)
            .await?;
        let done = summary.done();
        let waiting = watch.is_some()
            && items.is_empty()
            && !done
            && tokio::time::Instant::now() < deadline
            && !*closing.borrow();
        if !waiting {
            let (next_offset, next_after) = match q.order {
                Order::Index => (Some(offset + items.len() as i64), None),
                Order::Completion => (
                    None,
                    Some(items.iter().map(|i| i.done_seq).max().unwrap_or(after)),
                ),
            };
            let page = Page {
                map_id: &summary.map_id,
                function: &summary.function,
                status: if done { "done" } else { "running" },
                total: summary.total,
                counts: &summary.counts,
                created_ms: summary.created_ms,
                results: items.iter().map(|i| i.line()).collect(),
                next_offset,
                next_after,
                input_error: summary.input_error.as_deref(),
            };
            return Ok(Json(page).into_response());
        }
        if let Some(w) = watch.as_mut() {
            tokio::select! {
                () = w.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = closing.changed() => {}
            }
        }
    }
}

pub(super) async fn cancel(
    State(rt): State<Shared>,
    ApiPath(map_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    if rt.store.map_summary(&map_id).await?.is_none() {
        return Err(ApiError::MapNotFound(map_id));
    }
    let n = rt.store.cancel_map(&map_id).await?;
    Ok(Json(json!({"map_id": map_id, "cancelled": n})).into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::calls::signals::Signals;
    use crate::calls::store::Fault;

    fn store(dir: &std::path::Path) -> CallStore {
        CallStore::open(dir, BTreeMap::new(), Arc::new(Signals::default())).expect("open")
    }

    /// Runs a streaming map's ingest and emit over `body`, returning the NDJSON lines.
    async fn stream(store: &CallStore, map_id: &str, body: Body) -> Vec<Value> {
        let watch = store.signals().watch_map(map_id);
        let (end_tx, end_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(stream_ingest(
            store.clone(),
            "f".into(),
            map_id.into(),
            body.into_data_stream(),
            None,
            end_tx,
        ));
        tokio::spawn(emit(
            store.clone(),
            map_id.into(),
            Order::Index,
            watch,
            end_rx,
            tx,
        ));
        let mut lines = Vec::new();
        let collect = async {
            while let Some(line) = rx.recv().await {
                lines.push(serde_json::from_slice(&line).expect("a JSON line"));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("the stream ends");
        lines
    }

    #[tokio::test]
    async fn a_store_failure_mid_ingest_is_recorded_and_ends_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let map_id = store.create_map("f").await.expect("map");
        // The first batch of items cannot be committed.
        store.inject(Fault::Commit, 1);
        let lines = stream(&store, &map_id, Body::from("1\n2\n3\n")).await;
        let last = lines.last().expect("an error line");
        assert_eq!(last["error"]["type"], "StoreError", "{lines:?}");
        let (total, input_error) = store.map_total(&map_id).await.expect("read").expect("map");
        assert_eq!(total, Some(0), "total is what was committed, not NULL");
        assert!(input_error
            .expect("input_error")
            .contains("call store failed"));
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_is_recorded_and_ends_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let map_id = store.create_map("f").await.expect("map");
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"1\n2\n")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        // Nothing runs the items, so the stream waits for them; cancel them to finish.
        let canceller = {
            let store = store.clone();
            let map_id = map_id.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(Some((Some(_), _))) = store.map_total(&map_id).await {
                        store.cancel_map(&map_id).await.expect("cancel");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let lines = stream(&store, &map_id, body).await;
        canceller.await.expect("canceller");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[2]["error"]["type"], "InvalidInput", "{lines:?}");
        let (total, input_error) = store.map_total(&map_id).await.expect("read").expect("map");
        assert_eq!(total, Some(2));
        assert!(input_error.expect("input_error").contains("broke off"));
    }

    #[tokio::test]
    async fn a_spawn_map_over_the_item_limit_is_refused_and_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let map_id = store.create_map("f").await.expect("map");
        let body = "1\n".repeat(MAX_MAP_ITEMS as usize + 1);
        let mut chunks = Body::from(body).into_data_stream();
        let ingested = ingest(&store, "f", &map_id, &mut chunks, None, true).await;
        assert!(
            matches!(ingested.ended, Ended::TooLarge(_)),
            "{:?}",
            ingested.ended
        );
        let (claimed, _) = store.claim("f", 10).await.expect("claim");
        assert!(claimed.is_empty(), "no item of a refused spawn_map runs");
        store.discard_map(&map_id).await.expect("discard");
        assert!(store.map_summary(&map_id).await.expect("read").is_none());
    }

    #[tokio::test]
    async fn a_map_body_over_the_byte_limit_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let map_id = store.create_map("f").await.expect("map");
        // Undeclared length: counted as it arrives, in 1 MiB chunks of one big item each.
        let item = Bytes::from(format!("\"{}\"\n", "x".repeat((1 << 20) - 4)));
        let chunks = (0..=MAX_MAP_BYTES >> 20).map(move |_| Ok::<_, std::io::Error>(item.clone()));
        let mut chunks = Body::from_stream(futures_util::stream::iter(chunks)).into_data_stream();
        let ingested = ingest(&store, "f", &map_id, &mut chunks, None, true).await;
        assert!(
            matches!(ingested.ended, Ended::TooLarge(_)),
            "{:?}",
            ingested.ended
        );
        // Declared length: refused before anything is read.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(64u64 << 20));
        assert!(matches!(
            declared_too_large(&headers),
            Some(ApiError::MapTooLarge(_))
        ));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_MAP_BYTES));
        assert!(declared_too_large(&headers).is_none());
    }
}
