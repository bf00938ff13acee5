"""HTTP to one thaw server, on the standard library's ``http.client`` alone.

Why ``http.client`` rather than ``urllib.request``: a map streams its results back
while its inputs are still being sent, and only ``http.client`` lets a request body be
written (from a thread) while the response is read. Using it everywhere keeps one code
path for headers, auth and errors.

Each request opens its own connection and closes it afterwards. That keeps a
:class:`Transport` safe to share between threads with no locking, at the price of a
TCP handshake per call, which is small next to a function call.

Errors leave this module already typed: an answer of 400 or more becomes the exception
:func:`thaw.exceptions.from_response` picks, and a socket or protocol failure becomes
:class:`thaw.ConnectionError`. Callers only see a status under 400.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from typing import Any, Dict, Iterator, Mapping, Optional

from ._version import __version__
from .exceptions import ConnectionError, Error, ServiceError, from_response

DEFAULT_URL = "http://127.0.0.1:8787"
"""Where ``thaw serve`` listens by default."""

CONTROL_TIMEOUT = 30.0
"""Socket timeout, in seconds, for requests thaw answers at once (lookup, spawn, cancel)."""

_SEND_PIECE = 64 * 1024
"""A streamed body is written in pieces this size, so closing the socket stops the
writer within one piece rather than after the whole body."""


def to_json(value: Any) -> bytes:
    """An input as strict JSON: compact, UTF-8, and no NaN or Infinity, which thaw
    refuses (as the functions it feeds would). Raises ``TypeError`` or ``ValueError``
    for a value JSON cannot hold, before anything is sent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def quote(segment: str) -> str:
    """A path segment (a function name, a call id) with everything but unreserved
    characters escaped, so a ``/`` in it cannot reach another route."""
    return urllib.parse.quote(segment, safe="")


class Response:
    """A successful (status < 400) answer, read to its end."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body as JSON; a body that is not JSON is thaw misbehaving."""
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ServiceError(f"thaw answered {self.status} with a body not JSON: {e}") from e


class Stream:
    """A streaming answer: its ``headers``, and its body line by line when iterated."""

    def __init__(self, response: http.client.HTTPResponse, upload: "_Upload") -> None:
        self.headers = response.headers
        self._response = response
        self._upload = upload

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = _readline(self._response)
            if self._upload.error is not None:
                raise ConnectionError(f"sending the request body failed: {self._upload.error}")
            if not line:
                return
            line = line.strip()
            if line:
                yield line


class Transport:
    """The address of one thaw server and the token to present to it.

    ``url`` defaults to ``$THAW_URL``, else ``http://127.0.0.1:8787``; it may carry a
    path prefix (``https://gateway.example/thaw``) that every route is appended to.
    ``token`` defaults to ``$THAW_TOKEN``; without one, no ``Authorization`` header is
    sent, which a thaw on a loopback address accepts.
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None) -> None:
        url = url or os.environ.get("THAW_URL") or DEFAULT_URL
        if token is None:
            token = os.environ.get("THAW_TOKEN") or None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"thaw url must be http:// or https:// with a host, not {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = token

    def __repr__(self) -> str:
        return f"Transport({self.url!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = CONTROL_TIMEOUT,
    ) -> Response:
        """Sends one request and reads the whole answer; raises the typed error for a
        status of 400 or more. ``timeout`` bounds each socket operation (None: none)."""
        conn = self._connect(timeout)
        try:
            try:
                conn.request(method, self._prefix + path, body=body, headers=self._headers(headers))
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
        finally:
            conn.close()
        if resp.status >= 400:
            raise _error(resp.status, resp.headers, data)
        return Response(resp.status, resp.headers, data)

    @contextlib.contextmanager
    def stream(
        self, path: str, body: bytes, *, headers: Optional[Mapping[str, str]] = None
    ) -> Iterator[Stream]:
        """POSTs ``body`` and yields the answer as a :class:`Stream` of lines.

        Over plain HTTP the body is written by a thread while the answer is read, so
        results arrive while later inputs are still on their way (thaw reads a map's
        input only as fast as it runs it). Over TLS the body is sent first: an
        ``ssl`` socket must not be written and read from two threads at once.

        Leaving the ``with`` block, early or not, closes the connection.
        """
        conn = self._connect(None)
        upload = _Upload(body)
        resp: Optional[http.client.HTTPResponse] = None
        try:
            try:
                conn.putrequest("POST", self._prefix + path)
                all_headers = self._headers(headers)
                all_headers["Content-Length"] = str(len(body))
                for name, value in all_headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                sock = conn.sock
                if self._https or sock is None:
                    conn.send(body)
                else:
                    upload.start(sock)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
            if resp.status >= 400:
                raise _error(resp.status, resp.headers, _read_all(resp))
            yield Stream(resp, upload)
        finally:
            upload.stop()
            if resp is not None:
                resp.close()
            conn.close()

    def _connect(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, extra: Optional[Mapping[str, str]]) -> Dict[str, str]:
        headers = {"User-Agent": f"thaw-python/{__version__}", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if extra:
            headers.update(extra)
        return headers

    def _unreachable(self, cause: BaseException) -> ConnectionError:
        why = str(cause) or type(cause).__name__
        return ConnectionError(f"cannot talk to thaw at {self.url}: {why}")


class _Upload:
    """A request body written by a thread of its own (see :meth:`Transport.stream`).

    ``error`` is why the write failed, if it did; the reader checks it so a body cut
    short is reported as the connection failure it is, not as whatever thaw made of
    the truncated input.
    """

    def __init__(self, body: bytes) -> None:
        self._body = memoryview(body)
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._stopping = threading.Event()
        self.error: Optional[OSError] = None

    def start(self, sock: socket.socket) -> None:
        self._sock = sock
        self._thread = threading.Thread(
            target=self._send, args=(sock,), name="thaw-upload", daemon=True
        )
        self._thread.start()

    def _send(self, sock: socket.socket) -> None:
        try:
            for at in range(0, len(self._body), _SEND_PIECE):
                if self._stopping.is_set():
                    return
                sock.sendall(self._body[at : at + _SEND_PIECE])
        except OSError as e:
            if not self._stopping.is_set():
                self.error = e

    def stop(self) -> None:
        """Stops a write still in progress and waits for the thread. Shutting the
        socket down is what wakes a ``sendall`` blocked on a full send buffer; it is
        done on the socket the thread writes to, which ``http.client`` may already
        have dropped its own reference to."""
        if self._thread is None or self._sock is None:
            return
        self._stopping.set()
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join()


def _readline(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.readline()
    except (OSError, http.client.HTTPException) as e:
        raise ConnectionError(f"the connection to thaw broke while reading: {e}") from e


def _read_all(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException) as e:
        raise ConnectionError(f"the connection to thaw broke while reading: {e}") from e


def _retry_after(headers: http.client.HTTPMessage) -> Optional[float]:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        # An HTTP date: thaw never sends one, and a hint is not worth a date parser.
        return None


def _error(status: int, headers: http.client.HTTPMessage, body: bytes) -> Error:
    """Reads the type and message out of an error answer in either of thaw's shapes,
    ``{"error": {"type", "message"}}`` or the Invoke API's ``x-amzn-ErrorType`` with
    ``{"message"}``, and lets :func:`from_response` choose the exception."""
    text = body.decode("utf-8", "replace").strip()
    error_type: Optional[str] = None
    message = text[:2000] or http.client.responses.get(status, "error")
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        inner = doc.get("error")
        if isinstance(inner, dict):
            error_type = inner.get("type")
            message = str(inner.get("message", message))
        elif "message" in doc:
            message = str(doc["message"])
    if error_type is None:
        aws_type = headers.get("x-amzn-ErrorType")
        # AWS may append ":<documentation url>".
        error_type = aws_type.split(":", 1)[0] if aws_type else None
    return from_response(status, error_type, message, retry_after=_retry_after(headers))
