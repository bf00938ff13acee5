"""``FunctionCall``: a durable call, by id.

A call made with :meth:`thaw.Function.spawn` is committed to thaw's call store before
its id is returned, so it survives a restart of thaw and of the caller: keep
``call.object_id`` anywhere, and :meth:`FunctionCall.from_id` picks the call up again,
from another process if need be.

A call moves through these states (``info()["status"]``)::

    queued ──> running ──> succeeded            (get() returns the result)
      │            └─────> failed               (get() raises the typed error)
      └──> cancelled                            (get() raises CancelledError)

A failed attempt that will be retried goes back to ``queued``. Results are kept for
the function's ``result_ttl`` (24 h by default); after that, :class:`thaw.ExpiredError`.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ._transport import CONTROL_TIMEOUT, Transport, quote
from .exceptions import CancelledError, ServiceError, TimeoutError, from_failure

MAX_WAIT = 60.0
"""Longest single long-poll thaw holds (``GET /v1/calls/{id}?wait=``); longer waits loop."""

_UNFINISHED = ("queued", "running")


class FunctionCall:
    """A handle on one durable call. Cheap to create: it holds the id and the server's
    address, nothing else, and asks thaw afresh each time."""

    def __init__(self, call_id: str, transport: Transport) -> None:
        self.object_id = call_id
        self._transport = transport

    @classmethod
    def from_id(
        cls, call_id: str, *, url: Optional[str] = None, token: Optional[str] = None
    ) -> "FunctionCall":
        """The call with this id. Nothing is checked until it is used: an unknown id
        raises :class:`thaw.NotFoundError` from :meth:`get`, :meth:`info` or
        :meth:`cancel`."""
        return cls(call_id, Transport(url, token))

    def __repr__(self) -> str:
        return f"FunctionCall({self.object_id!r})"

    def info(self) -> Dict[str, Any]:
        """The call's record as thaw keeps it, at once: ``status``, ``attempts``,
        ``function``, ``created_ms``, and when there are any ``result``, ``error``,
        ``started_ms``, ``finished_ms``, ``expires_ms``."""
        return self._poll(0.0)

    def get(self, timeout: Optional[float] = None) -> Any:
        """Waits for the call to finish and returns its result, decoded from JSON.

        ``timeout`` is in seconds; None waits as long as it takes, 0 only looks. Raises
        :class:`thaw.TimeoutError` if the call is still queued or running then (it goes
        on running: call ``get`` again later), the call's typed error if it failed
        (:class:`thaw.FunctionError`, :class:`thaw.InvalidInputError`, ...), and
        :class:`thaw.CancelledError` if it was cancelled.

        Waiting is long-polling: thaw answers the moment the call finishes, so a call
        that takes 3 s returns after 3 s, not at the next tick of a poll interval.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            wait = MAX_WAIT if deadline is None else min(MAX_WAIT, deadline - time.monotonic())
            wait = max(0.0, wait)
            asked = time.monotonic()
            record = self._poll(wait)
            status = record.get("status")
            if status == "succeeded":
                return record.get("result")
            if status == "failed":
                raise from_failure(record.get("error") or {})
            if status == "cancelled":
                raise CancelledError(
                    f"call {self.object_id} was cancelled before it ran", error_type="Cancelled"
                )
            if status not in _UNFINISHED:
                raise ServiceError(f"call {self.object_id} has an unknown status {status!r}")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(
                    f"call {self.object_id} is still {status} after {timeout} s; "
                    "it goes on: get() it again later"
                )
            if now - asked < wait / 2:
                # thaw answered early without a result (it is shutting down): do not
                # turn the remaining wait into a busy loop of requests.
                time.sleep(min(0.5, wait / 2))

    def cancel(self) -> None:
        """Cancels the call if it is still queued; it will then never run.

        A call that is already running or finished cannot be cancelled:
        :class:`thaw.ConflictError` says which (its ``error_type`` is ``CallRunning``
        or ``CallFinished``). Cancelling an already cancelled call succeeds again.
        """
        self._transport.request("DELETE", f"/v1/calls/{quote(self.object_id)}")

    def _poll(self, wait: float) -> Dict[str, Any]:
        path = f"/v1/calls/{quote(self.object_id)}"
        if wait > 0:
            path += f"?wait={wait:.3f}"
        # The socket must outlast the long-poll it asked for.
        record = self._transport.request("GET", path, timeout=wait + CONTROL_TIMEOUT).json()
        if not isinstance(record, dict):
            raise ServiceError(f"call {self.object_id}: thaw answered {record!r}, not a call")
        return record
