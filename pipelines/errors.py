"""feedline's errors about the user's data, storage or configuration: one line each, which the
command lines print as `error: ...`."""

from __future__ import annotations

__all__ = ["FeedlineError"]


class FeedlineError(Exception):
    """Base of feedline's user-facing errors. `message` is the one line a user reads, kept apart
    from `args`: Ray's wrappers append their own advice to the args of an exception that
    crosses a task boundary (Ray Data's map errors), and pickling keeps this attribute."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
