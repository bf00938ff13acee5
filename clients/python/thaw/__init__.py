"""Python client for thaw, the serverless function runtime.

Look a function up by name, then call it one of three ways::

    import thaw

    embed = thaw.Function.lookup("embed")          # $THAW_URL, $THAW_TOKEN
    vector = embed.remote({"text": "hello"})       # now: the result, or a typed error

    call = embed.spawn({"text": "hello"})          # durable: committed before it returns
    call.object_id                                 # keep it; FunctionCall.from_id(...) later
    vector = call.get(timeout=30)                  # long-polls until it is done

    for vector in embed.map([{"text": "a"}, {"text": "b"}]):   # streamed, in order
        ...

Every failure is a subclass of :class:`thaw.Error`, chosen in one place
(:mod:`thaw.exceptions`) from thaw's stable error types: :class:`NotFoundError`,
:class:`InvalidInputError`, :class:`FunctionError` (the function raised; with its
``error_type``, ``message`` and ``stack_trace``), :class:`QueueFullError`,
:class:`TimeoutError`, :class:`CancelledError`, and so on.

The client is the standard library only (``http.client`` and ``json``), so it installs
anywhere Python 3.9+ does. Its modules:

- :mod:`thaw.function`: :class:`Function`: ``lookup``, ``remote``, ``spawn``, ``map``.
- :mod:`thaw.call`: :class:`FunctionCall`: ``get``, ``cancel``, ``info``, ``from_id``.
- :mod:`thaw.exceptions`: the exceptions, and the mapping from thaw's answers to them.
"""

from ._version import __version__
from .call import FunctionCall
from .exceptions import (
    AuthError,
    CancelledError,
    ConflictError,
    ConnectionError,
    Error,
    ExpiredError,
    FunctionError,
    FunctionTimeoutError,
    InvalidInputError,
    NotFoundError,
    QueueFullError,
    ServiceError,
    TimeoutError,
)
from .function import Function

__all__ = [
    "__version__",
    "Function",
    "FunctionCall",
    "Error",
    "AuthError",
    "CancelledError",
    "ConflictError",
    "ConnectionError",
    "ExpiredError",
    "FunctionError",
    "FunctionTimeoutError",
    "InvalidInputError",
    "NotFoundError",
    "QueueFullError",
    "ServiceError",
    "TimeoutError",
]
