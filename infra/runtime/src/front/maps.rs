//! `/v1` maps: one function over many inputs.
//!
//! - `POST /v1/functions/{f}/map[?order=completion]`: a JSON array or NDJSON in, NDJSON
//!   out, one line per input: `{"index", "ok"}` or `{"index", "error"}`, in input order
//!   unless `order=completion`. Inputs are read from the body only while fewer than a
//!   window of items are unfinished, so a huge map holds a window, not the map, and a
//!   client that stops reading slows nothing but its own output: results wait in the
//!   store. Every item is committed before it runs. The map id is in the `Thaw-Map-Id`
//!   header, so results can be fetched again with `GET /v1/maps/{id}` if the stream is
//!   cut. An input that cannot be split ends the stream with `{"error"}`.
//! - `POST /v1/functions/{f}/spawn_map`: the same input, committed entirely before a 202
//!   `{"map_id", "total"}`.
//! - `GET /v1/maps/{id}?offset=N&limit=L&wait=S`: progress and a page of results in input
//!   order from `offset` (`order=completion&after=SEQ` pages by completion instead);
//!   `wait` long-polls for the next result.
//! - `DELETE /v1/maps/{id}`: cancels the map's queued items.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::calls::wait_of;
use super::{pool, ApiError, ApiPath, ApiQuery, Shared};
use crate::calls::input::{Item, Splitter};
use crate::calls::signals::Watch;
use crate::calls::store::{CallStore, MapItem, MapOrder as Order, StoreError};

/// Items committed per transaction while reading a map's input.
const INSERT_BATCH: usize = 512;
/// Longest wait for the next chunk of a map's body.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Results read from the store per query.
const PAGE: usize = 512;

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

pub(super) async fn map(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    ApiQuery(q): ApiQuery<MapQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    pool(&rt, &function)?;
    let map_id = rt.store.create_map(&function).await?;
    // Both watches exist before the first item is committed, so no finish is missed.
    let ingest_watch = rt.store.signals().watch_map(&map_id);
    let emit_watch = rt.store.signals().watch_map(&map_id);
    let window = window(&rt, &function);
    tokio::spawn(ingest(
        rt.store.clone(),
        function,
        map_id.clone(),
        body,
        Some((window, ingest_watch)),
    ));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(emit(rt.clone(), map_id.clone(), q.order, emit_watch, tx));
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

pub(super) async fn spawn_map(
    State(rt): State<Shared>,
    ApiPath(function): ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    pool(&rt, &function)?;
    let map_id = rt.store.create_map(&function).await?;
    let (total, input_error) =
        ingest(rt.store.clone(), function, map_id.clone(), body, None).await?;
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

/// Items read but not yet committed, and how many came before them.
struct Batch<'a> {
    map_id: &'a str,
    function: &'a str,
    committed: i64,
    items: Vec<Item>,
}

impl Batch<'_> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Commits the items, indexed after those committed before.
    async fn commit(&mut self, store: &CallStore) -> Result<(), StoreError> {
        let first = self.committed;
        self.committed += self.items.len() as i64;
        store
            .add_map_items(
                self.map_id,
                self.function,
                first,
                std::mem::take(&mut self.items),
            )
            .await
    }
}

/// Reads a map's input into the store, `INSERT_BATCH` items per commit. With a window,
/// waits while `window` items are unfinished. Ends by recording the total.
async fn ingest(
    store: CallStore,
    function: String,
    map_id: String,
    body: Body,
    mut window: Option<(usize, Watch<u64>)>,
) -> Result<(i64, Option<String>), StoreError> {
    let mut splitter = Splitter::default();
    let mut chunks = body.into_data_stream();
    let mut batch = Batch {
        map_id: &map_id,
        function: &function,
        committed: 0,
        items: Vec::new(),
    };
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
                        batch.commit(&store).await?;
                        continue;
                    }
                    watch.changed().await;
                }
            }
            match splitter.next_item() {
                Ok(Some(item)) => {
                    batch.items.push(item);
                    if batch.len() >= INSERT_BATCH {
                        batch.commit(&store).await?;
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
            batch.commit(&store).await?;
        }
        if ended {
            break;
        }
        match tokio::time::timeout(CHUNK_TIMEOUT, chunks.next()).await {
            Ok(Some(Ok(chunk))) => splitter.push(&chunk),
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
    let total = batch.committed;
    store.close_map(&map_id, total, input_error.clone()).await?;
    Ok((total, input_error))
}

/// Streams a map's results as NDJSON lines until every item has been sent.
async fn emit(
    rt: Shared,
    map_id: String,
    order: Order,
    mut watch: Watch<u64>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut sent: i64 = 0;
    let mut after_seq: i64 = 0;
    loop {
        let from = if order == Order::Index {
            sent
        } else {
            after_seq
        };
        let page = rt.store.map_items(&map_id, order, from, PAGE).await;
        let items = match page {
            Ok(items) => items,
            Err(e) => {
                let _ = tx.send(error_line("StoreError", &e.to_string())).await;
                return;
            }
        };
        if items.is_empty() {
            let (total, input_error) = match rt.store.map_total(&map_id).await {
                Ok(Some(t)) => t,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(error_line("StoreError", &e.to_string())).await;
                    return;
                }
            };
            if total.is_some_and(|t| sent >= t) {
                if let Some(e) = input_error {
                    let _ = tx.send(error_line("InvalidInput", &e)).await;
                }
                return;
            }
            tokio::select! {
                () = watch.changed() => {}
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

fn item_value(item: &MapItem) -> Value {
    match &item.result {
        Ok(ok) => json!({"index": item.index, "ok": ok}),
        Err(e) => json!({"index": item.index, "error": e}),
    }
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
        let items = rt.store.map_items(&map_id, q.order, from, limit).await?;
        let done = summary.done();
        let waiting = watch.is_some()
            && items.is_empty()
            && !done
            && tokio::time::Instant::now() < deadline
            && !*closing.borrow();
        if !waiting {
            let mut reply = json!({
                "map_id": summary.map_id,
                "function": summary.function,
                "status": if done { "done" } else { "running" },
                "total": summary.total,
                "counts": summary.counts,
                "created_ms": summary.created_ms,
                "results": items.iter().map(item_value).collect::<Vec<_>>(),
            });
            match q.order {
                Order::Index => reply["next_offset"] = json!(offset + items.len() as i64),
                Order::Completion => {
                    reply["next_after"] =
                        json!(items.iter().map(|i| i.done_seq).max().unwrap_or(after));
                }
            }
            if let Some(e) = summary.input_error {
                reply["input_error"] = Value::String(e);
            }
            return Ok(Json(reply).into_response());
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
