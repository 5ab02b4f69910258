"""The one-line errors a run stops with, found again in the exceptions Ray raises.

A BadDataError or StorageError raised in a trainer or a pool actor reaches the driver wrapped:
Ray Train's TrainingFailedError holds the ranks' exceptions, each rank's holds Ray Data's, which
holds the actor task's (a RayTaskError that is an instance of the user's type and carries the
original as its cause); Ray Data also appends its retry advice to the original's args. The
search goes by type (`pipelines.errors.FeedlineError`) through every exception these hold (their
causes, contexts and exception-valued attributes), and the error is rebuilt from its own
`message`: never from message text, so a change in Ray's wording cannot break it.
"""

from __future__ import annotations

from collections.abc import Iterator

from ray.exceptions import RayError

from pipelines.errors import FeedlineError

__all__ = ["user_error"]


def _held(err: BaseException) -> Iterator[BaseException]:
    """The exceptions `err` holds: cause, context, and attributes that are exceptions or
    collections of them (Ray Train's worker_failures, controller_failure, the wrapped user
    exception; Ray's task error's cause)."""
    yield from (e for e in (err.__cause__, err.__context__) if e is not None)
    for value in vars(err).values():
        values = (value.values() if isinstance(value, dict)
                  else value if isinstance(value, list | tuple) else (value,))
        yield from (v for v in values if isinstance(v, BaseException))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen, queue = set(), [error]
    while queue:
        err = queue.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        queue.extend(_held(err))


def user_error(error: BaseException) -> FeedlineError | None:
    """The feedline error (BadDataError, StorageError, SchemaError) the run stopped with, if
    that is why it failed, as it was raised: one line, nothing of Ray's around it."""
    for err in _chain(error):
        message = getattr(err, "message", None)
        if isinstance(err, FeedlineError) and isinstance(message, str):
            # Ray's task error is a class of its own that also derives from the user's type;
            # the user's type is the first feedline class in its MRO that is not Ray's.
            kind = next(c for c in type(err).__mro__
                        if issubclass(c, FeedlineError) and not issubclass(c, RayError))
            return kind(message)
    return None
