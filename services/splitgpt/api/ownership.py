"""Who is calling, and which running requests are theirs.

The auth middleware sets the caller for the request's task (a context
variable, so every route, /v1 included, and the gRPC edge in backends.py see it
without being handed it). Ownership lives in the coordinator's request ids: a
request a key starts runs there as `OWNER:ID`, OWNER being the key's
fingerprint. So every gateway replica sees the same owners (the coordinator is
the one place that lists and cancels), a key can only ever name ids in its own
namespace (another key's id is simply not there: 404, and an X-Request-ID
another key uses is no collision either), and no id map has to be kept in step
with requests starting and ending. With no keys configured there is no caller
and ids pass through unchanged, as before keys existed.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    owner: str  # the key's fingerprint (never the key)
    admin: bool


_caller: ContextVar[Caller | None] = ContextVar("splitgpt_caller", default=None)


def current() -> Caller | None:
    return _caller.get()


def set_caller(caller: Caller | None):
    """Returns the token to reset with, once the request is over."""
    return _caller.set(caller)


def reset_caller(token) -> None:
    _caller.reset(token)


def tenant() -> str:
    """Whose share of the coordinator's queue a request takes: the key's fingerprint ("" without keys)."""
    caller = current()
    return "" if caller is None else caller.owner


def coordinator_id(request_id: str) -> str:
    """The id the coordinator runs the caller's request `request_id` under."""
    caller = current()
    return request_id if caller is None else f"{caller.owner}:{request_id}"


def visible_id(task_id: str) -> str | None:
    """How the caller names the coordinator's task `task_id`, or None when it is not theirs to see.

    Their own requests by the id they gave; for an admin, other keys' requests as
    `OWNER:ID`, which is also what cancels them.
    """
    caller = current()
    if caller is None:
        return task_id
    own = caller.owner + ":"
    if task_id.startswith(own):
        return task_id[len(own) :]
    return task_id if caller.admin else None


def cancel_candidates(request_id: str) -> list[str]:
    """The coordinator ids `DELETE /api/tasks/{request_id}` may mean, the caller's own first."""
    caller = current()
    if caller is None:
        return [request_id]
    return [f"{caller.owner}:{request_id}", request_id] if caller.admin else [f"{caller.owner}:{request_id}"]
