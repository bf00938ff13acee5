"""examples/python (a handler run by awslambdaric) through every path a function has:
its URL, the Invoke API, a durable spawn and a map; and in the sandbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import post_json, request  # noqa: E402

FN = "words-py"


def test_it_runs_in_the_sandbox(thaw_url) -> None:
    functions = json.loads(request(f"{thaw_url}/v1/functions")[2])["functions"]
    sandbox = next(f for f in functions if f["name"] == FN)["sandbox"]
    assert sandbox["enabled"] and sandbox["mount_namespace"] and sandbox["pid_namespace"]
    assert sandbox["network"] == "isolated"
    # The venv's interpreter is the system's, under /usr: nothing forces a root mapping.
    assert sandbox["user"] == "unprivileged", sandbox


def test_function_url(thaw_url) -> None:
    got = post_json(f"{thaw_url}/fn/{FN}/", {"text": "hello big world"})
    assert got["words"] == 3 and got["upper"] == "HELLO BIG WORLD"
    status, _, raw = request(f"{thaw_url}/fn/{FN}/", "POST", {"nope": 1})
    assert status == 400 and json.loads(raw)["error"]["type"] == "InvalidInput"


def test_invoke_api(thaw_url) -> None:
    got = post_json(f"{thaw_url}/2015-03-31/functions/{FN}/invocations", {"text": "a b"})
    assert got["words"] == 2 and got["request_id"]


def test_spawn_and_poll(thaw_url) -> None:
    status, _, raw = request(f"{thaw_url}/v1/functions/{FN}/spawn", "POST", {"text": "x y z"})
    assert status == 202
    call_id = json.loads(raw)["call_id"]
    status, _, raw = request(f"{thaw_url}/v1/calls/{call_id}?wait=30")
    call = json.loads(raw)
    assert call["status"] == "succeeded", call
    assert call["result"]["words"] == 3


def test_map(thaw_url) -> None:
    inputs = [{"text": "one"}, {"text": "two words"}, {"nope": 1}, {"text": "a b c"}]
    body = "\n".join(json.dumps(i) for i in inputs).encode()
    status, _, raw = request(
        f"{thaw_url}/v1/functions/{FN}/map", "POST", body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200
    lines = [json.loads(l) for l in raw.decode().splitlines() if l.strip()]
    assert [l["index"] for l in lines] == [0, 1, 2, 3]
    assert [l["ok"]["words"] for l in lines if "ok" in l] == [1, 2, 3]
    assert lines[2]["error"]["type"] == "ValueError"
