"""``Function``: one function of a thaw server, and the three ways to call it.

======================  ================================  ==============================
method                  thaw API                          when
======================  ================================  ==============================
``remote(input)``       the AWS Lambda Invoke API         you want the answer now
``spawn(input)``        ``POST /v1/functions/{f}/spawn``  the call must not be lost, or
                                                          you will collect it later
``map(inputs)``         ``POST /v1/functions/{f}/map``    many inputs, results streamed
======================  ================================  ==============================

``remote`` uses the Invoke API because it answers with the function's JSON exactly as
the function returned it, and reports the function's own error as
``X-Amz-Function-Error`` with its type and message; a function URL would wrap the
result in an HTTP response (``statusCode``, ``headers``, ``body``). It is not durable:
if thaw restarts mid-call the call is lost, so use ``spawn`` for work that must happen.

Inputs and results are JSON: anything ``json.dumps`` takes goes in, and what comes out
is what ``json.loads`` makes of the function's answer.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from . import _map
from ._transport import Transport, quote, to_json
from .call import FunctionCall
from .exceptions import NotFoundError, ServiceError, from_failure


class Function:
    """A function of a thaw server, by name."""

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self._transport = transport

    @classmethod
    def from_name(
        cls, name: str, *, url: Optional[str] = None, token: Optional[str] = None
    ) -> "Function":
        """The function called ``name``, without asking thaw whether it exists (the
        first call does). ``url`` defaults to ``$THAW_URL`` (else
        ``http://127.0.0.1:8787``), ``token`` to ``$THAW_TOKEN``."""
        return cls(name, Transport(url, token))

    @classmethod
    def lookup(
        cls, name: str, *, url: Optional[str] = None, token: Optional[str] = None
    ) -> "Function":
        """The function called ``name``, once thaw confirms it serves one: raises
        :class:`thaw.NotFoundError` if not, and :class:`thaw.AuthError` or
        :class:`thaw.ConnectionError` if thaw cannot be asked. Defaults as
        :meth:`from_name`."""
        function = cls.from_name(name, url=url, token=token)
        listing = function._transport.request("GET", "/v1/functions").json()
        entries = listing.get("functions") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise ServiceError(f"GET /v1/functions answered {listing!r}, not a listing")
        names = {entry.get("name") for entry in entries if isinstance(entry, dict)}
        if name not in names:
            raise NotFoundError(
                f"thaw at {function._transport.url} has no function {name!r} "
                f"(it has: {', '.join(sorted(map(str, names))) or 'none'})",
                error_type="FunctionNotFound",
            )
        return function

    def __repr__(self) -> str:
        return f"Function({self.name!r}, url={self._transport.url!r})"

    def remote(self, input: Any) -> Any:
        """Calls the function, waits, and returns its result.

        Raises the function's failure typed (:class:`thaw.FunctionError` with its
        ``error_type``, :class:`thaw.InvalidInputError`, :class:`thaw.FunctionTimeoutError`),
        or thaw's (:class:`thaw.QueueFullError`, :class:`thaw.NotFoundError`, ...).
        There is no idempotency on this path; for that, :meth:`spawn` with a key.
        """
        resp = self._transport.request(
            "POST",
            f"/2015-03-31/functions/{quote(self.name)}/invocations",
            body=to_json(input),
            headers={"Content-Type": "application/json"},
            # thaw bounds the call by the function's own timeout and always answers.
            timeout=None,
        )
        answer = resp.json()
        if resp.headers.get("X-Amz-Function-Error"):
            raise from_failure(answer if isinstance(answer, dict) else {})
        return answer

    def spawn(self, input: Any, *, idempotency_key: Optional[str] = None) -> FunctionCall:
        """Starts a durable call and returns its handle once thaw has committed it.

        With ``idempotency_key`` (1 to 255 visible ASCII characters), spawning again
        with the same key and the same input returns the call the key first created
        instead of starting another, across thaw restarts too: retrying a spawn whose
        answer was lost is then safe. The same key with a different input raises
        :class:`thaw.ConflictError` (``IdempotencyKeyReused``).
        """
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        answer = self._transport.request(
            "POST",
            f"/v1/functions/{quote(self.name)}/spawn",
            body=to_json(input),
            headers=headers,
        ).json()
        call_id = answer.get("call_id") if isinstance(answer, dict) else None
        if not isinstance(call_id, str):
            raise ServiceError(f"spawn answered {answer!r}, without a call_id")
        return FunctionCall(call_id, self._transport)

    def map(
        self,
        inputs: Iterable[Any],
        *,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Runs the function over every input and yields the results as they arrive.

        Lazy: nothing is sent until the first result is asked for. With
        ``order_outputs`` (the default) results come in input order, else in the order
        the calls finish. An input that failed raises its typed exception when its turn
        comes, after the results before it were yielded; with ``return_exceptions``
        the exception object is yielded in its place instead and the map goes on.

        Inputs already sent keep running in thaw if iteration stops early, and their
        results stay readable under the map's id. Any number of inputs may be given:
        beyond one request's limits (100,000 inputs, 32 MiB) they go in several.
        """
        return _map.run(
            self._transport,
            self.name,
            inputs,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
        )
