"""Plain HTTP for the tests' own reference calls (stdlib only), so that what a client
library under test answers is compared with what thaw's own routes answer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple


def request(
    url: str, method: str = "GET", body: Any = None, headers: Optional[Dict[str, str]] = None
) -> Tuple[int, Dict[str, str], bytes]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and not req.has_header("Content-type"):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def post_json(url: str, body: Any) -> Any:
    status, _, raw = request(url, "POST", body)
    assert status == 200, (status, raw[:500])
    return json.loads(raw)


def embed_reference(base: str, texts: List[str]) -> List[List[float]]:
    """The embed function's own vectors, through its function URL."""
    return post_json(f"{base}/fn/embed/", {"texts": texts})["embeddings"]


def cosine(a: List[float], b: List[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)
