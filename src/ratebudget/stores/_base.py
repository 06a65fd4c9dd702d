"""The ``Store`` interface the persistent stores implement."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from ._core import Plan

__all__ = ("Store",)


class Store(abc.ABC):
    """Where a limiter's state lives, shared by every limiter of one name.

    A store is thread-safe. ``execute`` is blocking (the limiter runs it in a
    worker thread, so it works on every event loop) and runs a batch of
    operations atomically, in order. Stores raise ``StoreUnavailable`` when
    they cannot be reached within their timeout.
    """

    url: str = ""
    #: whether state outlives the process and is shared with other processes
    persistent: bool = True

    @abc.abstractmethod
    def register(self, name: str, spec: dict[str, Any]) -> list[str]:
        """Note limiter ``name`` and its limits (for ``ratebudget status``).

        Returns warnings to log once (a Redis without persistence, say).
        """

    @abc.abstractmethod
    def execute(
        self,
        name: str,
        plan: Plan,
        ops: list[list[Any]],
        *,
        keep_us: int,
        now_us: int | None = None,
    ) -> list[list[Any]]:
        """Run ``ops`` (see ``_core.run``) atomically; one result per op.

        ``now_us`` overrides the store's clock (tests with a fake clock);
        ``keep_us`` is how long settled and expired lease records are kept.
        """

    @abc.abstractmethod
    def limiters(self) -> dict[str, dict[str, Any]]:
        """Every limiter registered on this store: name -> its spec."""

    def subscribe(self, name: str, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (from any thread) when another process settles a
        lease of limiter ``name`` that a blocked caller may be waiting for.

        Returns whether the store can: callers blocked on a cap poll anyway,
        this only makes their wake-up prompt.
        """
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store may be used again afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
