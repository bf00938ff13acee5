"""``Function.map``: many inputs through thaw's streaming map API.

One ``POST /v1/functions/{f}/map`` takes NDJSON in (one JSON input per line) and
streams NDJSON back, one line per input: ``{"index": i, "ok": result}`` or
``{"index": i, "error": {"type", "message"}}``, in input order unless
``?order=completion``. If the input ends early, the stream ends with an
``{"error": ...}`` line that has no index.

One request holds at most :data:`MAX_ITEMS` inputs and :data:`MAX_BYTES` of body (the
server's limits). A longer map is cut into chunks sent one after the other; each
chunk's indices start again at 0 on the wire, so :func:`run` adds the chunk's start,
and chunks in sequence keep the whole map in input order. Only the chunk being sent is
held in memory, so the inputs may be a generator of any length.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from ._transport import Transport, quote, to_json
from .exceptions import Error, ServiceError, from_failure, from_response

MAX_ITEMS = 100_000
"""Most inputs in one map request (thaw's ``MAX_MAP_ITEMS``)."""

MAX_BYTES = 32 << 20
"""Largest map request body, in bytes (thaw's ``MAX_MAP_BYTES``)."""


class Chunk:
    """Consecutive inputs sent as one request: ``start`` is the first one's index in
    the whole map, ``count`` how many, ``body`` their NDJSON."""

    def __init__(self, start: int, lines: List[bytes]) -> None:
        self.start = start
        self.count = len(lines)
        self.body = b"".join(lines)


def chunks(
    inputs: Iterable[Any], *, max_items: Optional[int] = None, max_bytes: Optional[int] = None
) -> Iterator[Chunk]:
    """Cuts ``inputs`` into chunks within the limits, encoding each input once.

    An input too large for a request on its own still gets a chunk of its own, so thaw
    answers it (413 ``MapTooLarge``) rather than this client guessing at its policy.
    """
    max_items = MAX_ITEMS if max_items is None else max_items
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    lines: List[bytes] = []
    size = 0
    start = 0
    for value in inputs:
        # to_json never writes a raw newline, so each input is exactly one line.
        line = to_json(value) + b"\n"
        if lines and (len(lines) >= max_items or size + len(line) > max_bytes):
            yield Chunk(start, lines)
            start += len(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield Chunk(start, lines)


def run(
    transport: Transport,
    function: str,
    inputs: Iterable[Any],
    *,
    order_outputs: bool,
    return_exceptions: bool,
) -> Iterator[Any]:
    """Yields each input's result, or raises (or yields, with ``return_exceptions``)
    the typed exception of each input that failed."""
    path = f"/v1/functions/{quote(function)}/map"
    if not order_outputs:
        path += "?order=completion"
    headers = {"Content-Type": "application/x-ndjson", "Accept": "application/x-ndjson"}
    for chunk in chunks(inputs):
        with transport.stream(path, chunk.body, headers=headers) as stream:
            map_id = stream.headers.get("Thaw-Map-Id", "?")
            received = 0
            for line in stream:
                index, outcome = _decode(line, chunk, map_id)
                if order_outputs and index != chunk.start + received:
                    raise ServiceError(
                        f"map {map_id}: expected the result of input {chunk.start + received}, "
                        f"got {index}"
                    )
                received += 1
                if isinstance(outcome, Error) and not return_exceptions:
                    raise outcome
                yield outcome
            if received != chunk.count:
                raise ServiceError(
                    f"map {map_id}: the stream ended after {received} of {chunk.count} results; "
                    f"the rest can be read with GET /v1/maps/{map_id}"
                )


def _decode(line: bytes, chunk: Chunk, map_id: str) -> Tuple[int, Any]:
    """One result line: its index in the whole map, and the result or the exception."""
    try:
        doc = json.loads(line)
    except ValueError as e:
        raise ServiceError(f"map {map_id}: a result line is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ServiceError(f"map {map_id}: a result line is not an object: {line[:200]!r}")
    if "index" not in doc:
        # The input ended early; thaw says why (InvalidInput, MapTooLarge, StoreError).
        err = doc.get("error")
        if not isinstance(err, dict):
            err = {}
        raise from_response(None, err.get("type"), str(err.get("message", "the map ended early")))
    index = chunk.start + int(doc["index"])
    if "error" in doc:
        failure = doc["error"] if isinstance(doc["error"], dict) else {}
        return index, from_failure(failure)
    return index, doc.get("ok")
