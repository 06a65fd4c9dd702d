"""``Limiter.per_key``: a child scope per key, made on first use, with the
idle ones forgotten past a bound (DESIGN §6, contract 15)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from ._alerts import AlertHandler

if TYPE_CHECKING:
    from ._limiter import Limiter
    from ._limits import Cap, Rate
    from ._runaway import Runaway

__all__ = ("Keys",)

logger = logging.getLogger("ratebudget")

_LOOKS: Final = 8  # idle candidates looked at per new key past the bound


class Keys(Mapping[str, "Limiter"]):
    """The child scopes of one scope made from one template, by key.

    ``keys["alice"]`` is the child ``alice`` with the template's limits,
    made on first use (a key is a non-empty string of at most 200 printable
    characters without ``/``; anything else is ``InvalidRequest``). ``len``,
    iteration and ``in`` see the keys held now. Past ``max_keys`` the least
    recently used keys whose state no longer counts anything (no lease, no
    waiter, rates full, caps unused this period) are forgotten; a key that
    still counts is kept however many there are (a warning is logged once),
    and a new key is never refused. A key forgotten and used again starts
    from a fresh state, as it would have after its periods ended. Thread-safe.
    """

    __slots__ = (
        "_handlers",
        "_held",
        "_limits",
        "_lock",
        "_parent",
        "_runaway",
        "_warned",
        "max_keys",
    )

    def __init__(
        self,
        parent: Limiter,
        limits: tuple[Rate | Cap, ...],
        max_keys: int,
        handlers: tuple[AlertHandler, ...],
        runaway: Runaway | None = None,
    ) -> None:
        self._parent = parent
        self._runaway = runaway
        self._limits = limits
        self.max_keys = max_keys
        self._handlers = handlers
        self._held: OrderedDict[str, Limiter] = OrderedDict()
        self._lock = threading.Lock()
        self._warned = False

    @property
    def limits(self) -> tuple[Rate | Cap, ...]:
        """The limits each key's scope gets: those ``update`` stored for the
        template, else the code's."""
        return self._parent._store.live.get(self._parent._keys_key(), self._limits)

    async def update(self, *limits: Rate | Cap) -> None:
        """Replace the template's limits: every key's scope, held now or made
        later, in every process using the store, takes ``limits`` (a key
        whose own scope's ``update`` stored limits keeps those), until
        ``update()`` with no limits goes back to the code's. As
        ``Limiter.update``: usage carries over, leases made before settle
        by the limits they were made with, other processes follow within
        about a second (Redis: at once).
        """
        from ._limiter import _set_live

        parent = self._parent
        await _set_live(parent._store, parent._keys_key(), parent._checked(limits))

    @property
    def parent(self) -> Limiter:
        """The scope whose children the keys are."""
        return self._parent

    def __getitem__(self, key: str) -> Limiter:
        from ._limiter import _scoped, _segment

        if type(key) is str:
            with self._lock:
                got = self._held.get(key)
                if got is not None:
                    self._held.move_to_end(key)
                    return got
        segment = _segment(key, "key")  # anything but a good key: InvalidRequest
        parent = self._parent
        name = segment if parent.name is None else f"{parent.name}/{segment}"
        made = _scoped(
            parent,
            name,
            self._limits,
            self._handlers,
            keyed=True,
            runaway=self._runaway,
        )
        with self._lock:
            got = self._held.setdefault(key, made)
            self._held.move_to_end(key)
            if len(self._held) > self.max_keys:
                self._trim()
        return got

    def _trim(self) -> None:
        """Forget up to ``_LOOKS`` of the least recently used idle keys (the
        lock held)."""
        held = self._held
        for _ in range(min(_LOOKS, len(held) - self.max_keys)):
            key, oldest = next(iter(held.items()))
            if oldest._b.forget():
                del held[key]
            else:
                held.move_to_end(key)
        if len(held) > self.max_keys and not self._warned:
            self._warned = True
            logger.warning(
                "ratebudget: per_key of %s holds %d keys, past max_keys=%d: "
                "the least recently used still count something (a lease, a "
                "waiter, a rate refilling, usage this period), so they are "
                "kept until they no longer do (logged once)",
                repr(self._parent.name) if self._parent.name else "an unnamed limiter",
                len(held),
                self.max_keys,
            )

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._held

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._held))

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        limits = ", ".join(map(repr, self._limits))
        return f"<Keys of {self._parent.name!r}: {limits}; {len(self)} held>"
