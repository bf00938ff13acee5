"""Every error the thaw client raises, and the one place that decides which.

thaw reports failures in three shapes, all carrying a stable *type* string:

- a platform error on its own surface (``/v1``): an HTTP status with
  ``{"error": {"type", "message"}}``, for example 404 ``FunctionNotFound``;
- an AWS-shaped error on the Invoke API: a status, the type in the
  ``x-amzn-ErrorType`` header and ``{"Type", "message"}`` in the body;
- the failure of one call: a durable call's ``error``, a map item's ``error``, or an
  Invoke API reply with ``X-Amz-Function-Error``. Its type is either one of thaw's
  (``Timeout``, ``FunctionCrashed``, ...) or whatever the function itself raised
  (``ValueError``), which is why these are looked up in a table of their own: a
  function whose exception class happens to be called ``QueueFull`` failed, it did not
  meet a full queue.

:func:`from_response` turns the first two into an exception, :func:`from_failure` the
third. Nothing else in the package chooses an exception class for a server answer, so
the tables below are the whole contract; see the README for the same as a table.

Every exception keeps what thaw said: ``message``, ``error_type`` (the wire type, such
as ``"CallNotFound"`` or ``"ValueError"``), ``status`` (the HTTP status, when there was
one) and ``stack_trace`` (the function's traceback lines, when it sent any).
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, List, Mapping, Optional, Type

__all__ = [
    "Error",
    "ConnectionError",
    "AuthError",
    "NotFoundError",
    "ExpiredError",
    "InvalidInputError",
    "ConflictError",
    "QueueFullError",
    "TimeoutError",
    "CancelledError",
    "FunctionError",
    "FunctionTimeoutError",
    "ServiceError",
    "from_response",
    "from_failure",
]


class Error(Exception):
    """Base of every thaw error: ``except thaw.Error`` catches anything thaw reported."""

    def __init__(
        self,
        message: str,
        *,
        error_type: Optional[str] = None,
        status: Optional[int] = None,
        stack_trace: Optional[List[str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = status
        self.stack_trace = stack_trace

    def __str__(self) -> str:
        if self.error_type:
            return f"{self.error_type}: {self.message}"
        return self.message


class ConnectionError(Error, builtins.ConnectionError):
    """thaw could not be reached, or the connection broke before its answer was read.

    Also a builtin ``ConnectionError``, so code that already handles network failures
    generically handles this one.
    """


class AuthError(Error):
    """401: the control-plane token (``THAW_TOKEN``) is missing or wrong."""


class NotFoundError(Error):
    """404: no such function, call, map or route."""


class ExpiredError(NotFoundError):
    """410: the call finished, but its result outlived the function's ``result_ttl``."""


class InvalidInputError(Error):
    """The input can never succeed: thaw refused it (400, 413), or the function reported
    ``InvalidInput`` or ``PayloadTooLarge``. Retrying the same input is pointless."""


class ConflictError(Error):
    """The request contradicts the call's state: cancelling a running or finished call
    (409), or reusing an idempotency key with a different input (422)."""


class QueueFullError(Error):
    """429: the function's queue is full. ``retry_after`` is the server's hint, in seconds.

    The client does not retry by itself: whether to wait, shed load or fail is the
    caller's decision.
    """

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TimeoutError(Error, builtins.TimeoutError):
    """The call did not finish within the time the caller gave ``FunctionCall.get``.

    The call itself goes on: ask again later. Also a builtin ``TimeoutError``.
    """


class CancelledError(Error):
    """The call was cancelled before it ran; it has no result and never will."""


class FunctionError(Error):
    """The call failed in the function: it raised (``error_type`` is its own type, such
    as ``"ValueError"``), crashed, failed to initialise, or ran out of memory.

    ``stack_trace`` holds the function's traceback lines when its runtime sent them.
    """


class FunctionTimeoutError(FunctionError):
    """The function ran past its ``timeout`` and was stopped (type ``Timeout``).

    Deliberately *not* a :class:`TimeoutError`: that one means "not finished yet, ask
    again", this one means the attempt failed for good.
    """


class ServiceError(Error):
    """thaw itself could not serve the request: shutting down (503), its call store
    failed (500), or it answered something this client cannot read."""


# What a call can fail with, besides the function's own types (which are FunctionError).
# Sources: the executor's CallFailure kinds, the pool's CallError kinds, the function
# protocol's ErrorType, and a map item cancelled before it ran.
_FAILURES: Dict[str, Type[Error]] = {
    "InvalidInput": InvalidInputError,
    "PayloadTooLarge": InvalidInputError,
    "Timeout": FunctionTimeoutError,
    "Cancelled": CancelledError,
    # FunctionCrashed, InitError, OutOfMemory, ResponseTooLarge, BadBatchReply,
    # ModelError, Internal and the function's own: FunctionError.
}

# Platform types, thaw's own (front/error.rs) and the Invoke API's AWS names.
_PLATFORM: Dict[str, Type[Error]] = {
    "BadRequest": InvalidInputError,
    "PayloadTooLarge": InvalidInputError,
    "MapTooLarge": InvalidInputError,
    "InvalidInput": InvalidInputError,
    "Unauthorized": AuthError,
    "FunctionNotFound": NotFoundError,
    "CallNotFound": NotFoundError,
    "MapNotFound": NotFoundError,
    "NotFound": NotFoundError,
    "CallExpired": ExpiredError,
    "CallRunning": ConflictError,
    "CallFinished": ConflictError,
    "IdempotencyKeyReused": ConflictError,
    "QueueFull": QueueFullError,
    # The request body reached thaw too slowly: a transport problem.
    "RequestTimeout": ConnectionError,
    "ShuttingDown": ServiceError,
    "NotReady": ServiceError,
    "StoreUnavailable": ServiceError,
    "StoreError": ServiceError,
    # Failures of the call itself, answered as a status on the synchronous paths.
    "Timeout": FunctionTimeoutError,
    "FunctionCrashed": FunctionError,
    "InitError": FunctionError,
    "OutOfMemory": FunctionError,
    "ResponseTooLarge": FunctionError,
    "BadBatchReply": FunctionError,
    # The Invoke API (x-amzn-ErrorType).
    "ResourceNotFoundException": NotFoundError,
    "InvalidRequestContentException": InvalidInputError,
    "InvalidParameterValueException": InvalidInputError,
    "RequestEntityTooLargeException": InvalidInputError,
    "RequestTimeoutException": ConnectionError,
    "UnrecognizedClientException": AuthError,
    "TooManyRequestsException": QueueFullError,
    "ServiceException": ServiceError,
}

# A type this client does not know yet (a newer thaw) still lands somewhere sensible.
_STATUS: Dict[int, Type[Error]] = {
    400: InvalidInputError,
    401: AuthError,
    404: NotFoundError,
    408: ConnectionError,
    409: ConflictError,
    410: ExpiredError,
    413: InvalidInputError,
    422: ConflictError,
    429: QueueFullError,
    502: FunctionError,
    504: FunctionTimeoutError,
}


def _build(
    cls: Type[Error],
    message: str,
    retry_after: Optional[float],
    **kw: Any,
) -> Error:
    if issubclass(cls, QueueFullError):
        return cls(message, retry_after=retry_after, **kw)
    return cls(message, **kw)


def from_response(
    status: Optional[int],
    error_type: Optional[str],
    message: str,
    *,
    retry_after: Optional[float] = None,
) -> Error:
    """The exception for a platform error: by its type, else by its status.

    ``status`` is None for an error line inside a map's stream (the response itself
    was 200); an unknown 5xx is a :class:`ServiceError`, any other unknown a bare
    :class:`Error`.
    """
    cls = _PLATFORM.get(error_type or "")
    if cls is None and status is not None:
        cls = _STATUS.get(status, ServiceError if status >= 500 else Error)
    return _build(cls or Error, message, retry_after, error_type=error_type, status=status)


def from_failure(failure: Mapping[str, Any], *, status: Optional[int] = None) -> Error:
    """The exception for one call's failure.

    ``failure`` is thaw's ``{"type", "message"}`` (durable calls, map items) or the
    Invoke API's ``{"errorType", "errorMessage", "stackTrace"}``; both are accepted so
    the callers need not translate.
    """
    error_type = failure.get("type") or failure.get("errorType") or "Unknown"
    message = failure.get("message") or failure.get("errorMessage") or ""
    trace = failure.get("stack_trace", failure.get("stackTrace"))
    stack_trace: Optional[List[str]] = None
    if isinstance(trace, list):
        stack_trace = [str(line) for line in trace]
    elif isinstance(trace, str):
        stack_trace = trace.splitlines()
    cls = _FAILURES.get(str(error_type), FunctionError)
    return cls(str(message), error_type=str(error_type), status=status, stack_trace=stack_trace)
