"""Labels, and the current scope of a task: ``ratebudget.scope()``.

A web app shares one SDK client between requests; each request runs its LLM
calls in ``with ratebudget.scope(users[user_id], feature="chat"):``, and
the metering transport (and ``limiter.meter()``) charge the scope's limiter
and label the calls with the scope's labels. The scope is a context
variable: it follows the task (asyncio or trio) and the tasks it starts,
and a thread's own code; it never leaks into another request's task.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Final

from ._exceptions import InvalidRequest

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ("EMPTY_LABELS", "Scope", "current_scope", "labels_of", "scope")

MAX_LABELS: Final = 16
MAX_KEY: Final = 64
MAX_VALUE: Final = 256

EMPTY_LABELS: Final[Mapping[str, str]] = MappingProxyType({})


def labels_of(labels: object) -> Mapping[str, str]:
    """``labels`` checked, as a read-only copy, or ``InvalidRequest``.

    At most 16 pairs; a key is a non-empty string of at most 64 printable
    characters without spaces, a value a string of at most 256 printable
    characters.
    """
    if labels is None:
        return EMPTY_LABELS
    if not isinstance(labels, Mapping):
        raise InvalidRequest(
            f"labels={labels!r:.60}: expected a mapping of strings to strings"
        )
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(
            f"labels: {len(labels)} pairs, at most {MAX_LABELS} (labels are for "
            "attribution, not for payloads)"
        )
    for key, value in labels.items():
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= MAX_KEY
            or not key.isprintable()
            or " " in key
        ):
            raise InvalidRequest(
                f"label key {key!r:.80}: expected 1 to {MAX_KEY} printable "
                "characters without spaces"
            )
        if (
            not isinstance(value, str)
            or len(value) > MAX_VALUE
            or not value.isprintable()
        ):
            raise InvalidRequest(
                f"label {key}={value!r:.80}: expected a string of at most "
                f"{MAX_VALUE} printable characters"
            )
    return MappingProxyType(dict(labels))


@dataclass(frozen=True)
class Scope:
    """Where the calls of the current task are charged, and how labelled."""

    limiter: Limiter | None
    """The limiter the transport and ``meter()`` charge (``None``: their own)."""
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    """Labels added to the calls the transport and ``meter()`` make."""


_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "ratebudget.scope", default=None
)


def current_scope() -> Scope | None:
    """The scope the current task runs in (``None``: none)."""
    return _current.get()


class scope:
    """Run a block in a scope: ``with ratebudget.scope(limiter, **labels):``.

    Inside it, the metering transport and ``limiter.meter()`` charge
    ``limiter`` instead of their own, and add ``labels`` to each call's
    labels. Scopes nest: an inner one's limiter (if given) replaces the
    outer one's, and its labels are added to the outer one's (replacing
    those of the same key). ``with`` and ``async with`` both work; the scope
    is a context variable, so it follows the task and the tasks it starts.
    """

    __slots__ = ("_scope", "_token")

    def __init__(self, limiter: Limiter | None = None, /, **labels: str) -> None:
        from ._limiter import Limiter

        if limiter is not None and not isinstance(limiter, Limiter):
            raise InvalidRequest(
                f"scope({limiter!r:.60}): expected a Limiter (or None, for labels only)"
            )
        self._scope = Scope(limiter, labels_of(labels))
        self._token: contextvars.Token[Scope | None] | None = None

    def __enter__(self) -> Scope:
        if self._token is not None:
            raise InvalidRequest("this scope is already entered; make another")
        outer = _current.get()
        current = self._scope
        if outer is not None:
            current = Scope(
                current.limiter if current.limiter is not None else outer.limiter,
                MappingProxyType({**outer.labels, **current.labels}),
            )
        self._token = _current.set(current)
        return current

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)

    async def __aenter__(self) -> Scope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
