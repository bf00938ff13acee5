"""Tests of the Python client (``clients/python``), most of them against a live thaw.

The live tests call ``words-py``, a Python function with one instance
(``max_containers = 1``, ``concurrency = 1``) whose handler takes
``{"text": str, optional "sleep": seconds}``, answers
``{"words": <count>, "upper": text.upper(), "request_id": ...}`` and raises
``ValueError`` for anything else. Its single instance is what makes the cancel test
deterministic: a sleeping call holds it, so the next call stays queued.

The rest (error mapping, chunking, configuration) need no server.
"""

from __future__ import annotations

import builtins
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

# The client in this repository, not whatever version may be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))

import thaw  # noqa: E402
from thaw import _map  # noqa: E402
from thaw._transport import Transport, to_json  # noqa: E402
from thaw.exceptions import from_failure, from_response  # noqa: E402

FUNCTION = "words-py"
BAD = {"nope": 1}


def words(text: str) -> Dict[str, Any]:
    """What words-py answers for ``text``, less its request id."""
    return {"words": len(text.split()), "upper": text.upper()}


def strip(result: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in result.items() if k != "request_id"}


@pytest.fixture(scope="module")
def fn(thaw_url: str, thaw_token: Optional[str]) -> thaw.Function:
    return thaw.Function.lookup(FUNCTION, url=thaw_url, token=thaw_token)


# --- live: remote ---------------------------------------------------------------------


def test_remote_returns_the_decoded_result(fn: thaw.Function) -> None:
    assert strip(fn.remote({"text": "hello big world"})) == words("hello big world")


def test_remote_raises_the_functions_error_typed(fn: thaw.Function) -> None:
    with pytest.raises((thaw.FunctionError, thaw.InvalidInputError)) as caught:
        fn.remote(BAD)
    assert caught.value.error_type
    assert caught.value.message


def test_lookup_of_a_missing_function_raises_not_found(
    thaw_url: str, thaw_token: Optional[str]
) -> None:
    with pytest.raises(thaw.NotFoundError):
        thaw.Function.lookup("no-such-function", url=thaw_url, token=thaw_token)


def test_every_path_reports_a_missing_function_as_not_found(
    thaw_url: str, thaw_token: Optional[str]
) -> None:
    # Each path answers in its own shape (thaw's JSON, the Invoke API's AWS one).
    missing = thaw.Function.from_name("no-such-function", url=thaw_url, token=thaw_token)
    with pytest.raises(thaw.NotFoundError):
        missing.remote({"text": "a"})
    with pytest.raises(thaw.NotFoundError):
        missing.spawn({"text": "a"})
    with pytest.raises(thaw.NotFoundError):
        list(missing.map([{"text": "a"}]))


def test_a_wrong_token_raises_auth_error(thaw_url: str, thaw_token: Optional[str]) -> None:
    if thaw_token is None:
        pytest.skip("this thaw has no control-plane token: every token is accepted")
    with pytest.raises(thaw.AuthError):
        thaw.Function.lookup(FUNCTION, url=thaw_url, token=thaw_token + "-wrong")


# --- live: spawn, get, cancel ---------------------------------------------------------


def test_spawn_then_get_and_from_id(
    fn: thaw.Function, thaw_url: str, thaw_token: Optional[str]
) -> None:
    call = fn.spawn({"text": "durable call"})
    assert call.object_id.startswith("call_")
    assert strip(call.get(timeout=20)) == words("durable call")
    again = thaw.FunctionCall.from_id(call.object_id, url=thaw_url, token=thaw_token)
    assert strip(again.get(timeout=0)) == words("durable call")
    assert again.info()["status"] == "succeeded"


def test_a_failed_call_raises_its_typed_error_on_get(fn: thaw.Function) -> None:
    call = fn.spawn(BAD)
    with pytest.raises((thaw.FunctionError, thaw.InvalidInputError)) as caught:
        call.get(timeout=20)
    assert caught.value.error_type
    assert call.info()["status"] == "failed"


def test_get_with_a_short_timeout_raises_timeout_error(fn: thaw.Function) -> None:
    call = fn.spawn({"text": "slow", "sleep": 1})
    started = time.monotonic()
    with pytest.raises(thaw.TimeoutError) as caught:
        call.get(timeout=0.1)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, builtins.TimeoutError)
    # Timing out the wait does not end the call.
    assert strip(call.get(timeout=20)) == words("slow")


def test_cancel_a_queued_call(fn: thaw.Function) -> None:
    busy = fn.spawn({"text": "a", "sleep": 3})
    queued = fn.spawn({"text": "never runs"})
    queued.cancel()
    assert queued.info()["status"] == "cancelled"
    with pytest.raises(thaw.CancelledError):
        queued.get(timeout=5)
    # The sleeper holds the only instance, so it is (or soon is) running: not cancellable.
    deadline = time.monotonic() + 10
    while busy.info()["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(thaw.ConflictError):
        busy.cancel()
    assert strip(busy.get(timeout=20)) == words("a")


def test_an_idempotency_key_replays_the_same_call(fn: thaw.Function) -> None:
    key = f"client-test-{uuid.uuid4()}"
    first = fn.spawn({"text": "once"}, idempotency_key=key)
    second = fn.spawn({"text": "once"}, idempotency_key=key)
    assert second.object_id == first.object_id
    with pytest.raises(thaw.ConflictError) as caught:
        fn.spawn({"text": "another input"}, idempotency_key=key)
    assert caught.value.error_type == "IdempotencyKeyReused"
    assert strip(first.get(timeout=20)) == words("once")


def test_an_unknown_call_id_raises_not_found(thaw_url: str, thaw_token: Optional[str]) -> None:
    call = thaw.FunctionCall.from_id("call_0000", url=thaw_url, token=thaw_token)
    with pytest.raises(thaw.NotFoundError):
        call.get(timeout=0)


# --- live: map ------------------------------------------------------------------------

TEXTS = ["one", "two words", None, "three more words", "and four more words"]
INPUTS = [BAD if t is None else {"text": t} for t in TEXTS]


def test_map_with_return_exceptions_yields_the_error_in_place(fn: thaw.Function) -> None:
    results = list(fn.map(INPUTS, return_exceptions=True))
    assert len(results) == len(INPUTS)
    for text, result in zip(TEXTS, results):
        if text is None:
            assert isinstance(result, (thaw.FunctionError, thaw.InvalidInputError))
        else:
            assert strip(result) == words(text)


def test_map_raises_the_first_failure_after_the_results_before_it(fn: thaw.Function) -> None:
    seen: List[Any] = []
    with pytest.raises((thaw.FunctionError, thaw.InvalidInputError)):
        for result in fn.map(INPUTS):
            seen.append(strip(result))
    assert seen == [words("one"), words("two words")]


def test_map_in_completion_order_yields_every_result(fn: thaw.Function) -> None:
    texts = [f"item {i}" for i in range(6)]
    results = fn.map(({"text": t} for t in texts), order_outputs=False)
    assert sorted(r["upper"] for r in results) == sorted(t.upper() for t in texts)


def test_a_map_past_one_requests_limit_keeps_global_order(
    fn: thaw.Function, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two inputs per request: five requests, whose indices each start at 0 on the wire.
    monkeypatch.setattr(_map, "MAX_ITEMS", 2)
    texts: List[Optional[str]] = [f"w{i} " * (i + 1) for i in range(9)]
    texts[6] = None
    inputs = [BAD if t is None else {"text": t} for t in texts]
    results = list(fn.map(inputs, return_exceptions=True))
    assert len(results) == 9
    for text, result in zip(texts, results):
        if text is None:
            assert isinstance(result, (thaw.FunctionError, thaw.InvalidInputError))
        else:
            assert strip(result) == words(text)


def test_an_empty_map_sends_nothing(fn: thaw.Function) -> None:
    assert list(fn.map([])) == []


# --- no server: the mapping of thaw's answers to exceptions ---------------------------


@pytest.mark.parametrize(
    "status, error_type, expected",
    [
        (400, "BadRequest", thaw.InvalidInputError),
        (401, "Unauthorized", thaw.AuthError),
        (401, "UnrecognizedClientException", thaw.AuthError),
        (404, "FunctionNotFound", thaw.NotFoundError),
        (404, "ResourceNotFoundException", thaw.NotFoundError),
        (409, "CallRunning", thaw.ConflictError),
        (410, "CallExpired", thaw.ExpiredError),
        (413, "MapTooLarge", thaw.InvalidInputError),
        (422, "IdempotencyKeyReused", thaw.ConflictError),
        (429, "QueueFull", thaw.QueueFullError),
        (500, "StoreUnavailable", thaw.ServiceError),
        (502, "FunctionCrashed", thaw.FunctionError),
        (503, "ShuttingDown", thaw.ServiceError),
        (504, "Timeout", thaw.FunctionTimeoutError),
        # Types this client does not know fall back on the status.
        (404, "SomethingNew", thaw.NotFoundError),
        (507, None, thaw.ServiceError),
        (418, None, thaw.Error),
    ],
)
def test_platform_errors_map_by_type_then_status(
    status: int, error_type: Optional[str], expected: type
) -> None:
    err = from_response(status, error_type, "why")
    assert type(err) is expected
    assert (err.status, err.error_type, err.message) == (status, error_type, "why")


def test_queue_full_carries_retry_after() -> None:
    err = from_response(429, "QueueFull", "full", retry_after=1.0)
    assert isinstance(err, thaw.QueueFullError)
    assert err.retry_after == 1.0


@pytest.mark.parametrize(
    "error_type, expected",
    [
        ("ValueError", thaw.FunctionError),
        ("ModelError", thaw.FunctionError),
        ("InitError", thaw.FunctionError),
        ("InvalidInput", thaw.InvalidInputError),
        ("PayloadTooLarge", thaw.InvalidInputError),
        ("Timeout", thaw.FunctionTimeoutError),
        ("Cancelled", thaw.CancelledError),
        # A function's own exception named like a platform error is still its failure.
        ("QueueFull", thaw.FunctionError),
    ],
)
def test_call_failures_map_by_type(error_type: str, expected: type) -> None:
    err = from_failure({"type": error_type, "message": "m"})
    assert type(err) is expected
    assert (err.error_type, err.message) == (error_type, "m")


def test_the_invoke_apis_function_error_keeps_its_stack_trace() -> None:
    err = from_failure(
        {"errorType": "ValueError", "errorMessage": "bad", "stackTrace": ["  File x", "  y"]}
    )
    assert isinstance(err, thaw.FunctionError)
    assert (err.error_type, err.message) == ("ValueError", "bad")
    assert err.stack_trace == ["  File x", "  y"]
    assert str(err) == "ValueError: bad"


def test_a_function_timeout_is_not_a_wait_timeout() -> None:
    assert not issubclass(thaw.FunctionTimeoutError, thaw.TimeoutError)
    assert issubclass(thaw.TimeoutError, builtins.TimeoutError)
    assert issubclass(thaw.ConnectionError, thaw.Error)
    assert issubclass(thaw.ExpiredError, thaw.NotFoundError)


# --- no server: chunking, encoding, configuration -------------------------------------


def test_chunks_respect_both_limits_and_carry_their_start() -> None:
    by_items = list(_map.chunks(range(7), max_items=3))
    assert [(c.start, c.count) for c in by_items] == [(0, 3), (3, 3), (6, 1)]
    assert by_items[1].body == b"3\n4\n5\n"
    # Each line of '"xxxx"\n' is 7 bytes: two fit in 15, not three.
    by_bytes = list(_map.chunks(["xxxx"] * 5, max_bytes=15))
    assert [(c.start, c.count) for c in by_bytes] == [(0, 2), (2, 2), (4, 1)]
    # An input over the limit alone still goes, in a chunk of its own.
    assert [c.count for c in _map.chunks(["x" * 100, 1], max_bytes=10)] == [1, 1]


def test_inputs_are_strict_single_line_json() -> None:
    assert to_json({"text": "a\nb", "é": 1}) == '{"text":"a\\nb","é":1}'.encode()
    with pytest.raises(ValueError):
        to_json(float("nan"))


def test_url_and_token_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THAW_URL", raising=False)
    monkeypatch.delenv("THAW_TOKEN", raising=False)
    assert Transport().url == "http://127.0.0.1:8787"
    monkeypatch.setenv("THAW_URL", "https://example.test/prefix/")
    monkeypatch.setenv("THAW_TOKEN", "t0ken")
    transport = Transport()
    assert transport.url == "https://example.test/prefix"
    assert transport._headers(None)["Authorization"] == "Bearer t0ken"
    assert "Authorization" not in Transport("http://h:1", token="")._headers(None)
    with pytest.raises(ValueError):
        Transport("ftp://example.test")


def test_an_unreachable_server_raises_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(thaw.ConnectionError) as caught:
        thaw.Function.lookup("any", url=f"http://127.0.0.1:{port}")
    assert isinstance(caught.value, builtins.ConnectionError)
