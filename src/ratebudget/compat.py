"""A drop-in for ``token-budget-py`` (``from token_budget import ...``).

Change the import to ``from ratebudget.compat import BudgetPool, BudgetExceeded``
and keep the code: ``BudgetPool``, ``Reservation``, ``BudgetSnapshot`` and
``BudgetExceeded`` have token-budget-py's names, arguments and attributes.
The pool is a thin layer over one ``Limiter`` of ``Cap`` limits, used
through the blocking, thread-safe ``limiter.sync``; ``pool.limiter`` hands
it to async code. Two token-budget-py 0.1.0 bugs are fixed:

- a commit above the estimate that crossed a cap raised and recorded
  *nothing*; here the real usage is always recorded, past the cap if need
  be, and the next ``record``/``reserve`` raises ``BudgetExceeded``;
- ``reset()`` dropped outstanding reservations, so their later release made
  room that was never there; here reservations stay outstanding through a
  reset and their commit or release settles exactly what they hold.

Money: USD is summed exactly in ``Decimal`` (a float goes through ``str()``,
so ``0.1`` is one tenth), but ``BudgetSnapshot`` and ``BudgetExceeded``
report it as ``float``, as token-budget-py does, because drop-in callers mix
it with floats (``total += snap.usd_used``, ``pytest.approx``), which a
``Decimal`` would refuse. Each float is one rounding of the exact sum, so it
never drifts (``0.1 + 0.2`` reads ``0.3``). The exact figures are on the
core: ``pool.limiter.sync.snapshot()`` and ``BudgetExceeded.used`` etc.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from ._exceptions import BudgetExceeded as _CoreBudgetExceeded
from ._exceptions import InvalidRequest
from ._limiter import Limiter
from ._limits import Cap
from ._snapshot import Snapshot
from ._sync import SyncLease

__all__ = ("BudgetExceeded", "BudgetPool", "BudgetSnapshot", "Reservation")

_UNBOUNDED_TOKENS: Final = 10**18
_UNBOUNDED_USD: Final = 10**9

UsdAmount = float | Decimal | str
"""A USD amount: ``0.0036``, ``Decimal("0.0036")`` or ``"0.0036"``."""


def _out(axis: str, value: int | Decimal) -> float:
    """The token-budget-py type of an amount: ``int`` tokens, ``float`` USD."""
    return int(value) if axis == "tokens" else float(value)


def _exact(axis: str, value: object, what: str) -> int | Decimal:
    """Validate a caller's amount and make it exact: ``int`` tokens, ``Decimal`` USD."""
    if axis == "tokens":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{what}: tokens must be an int, got {value!r}")
        if value < 0:
            raise InvalidRequest(f"{what}: amounts must be non-negative, got {value}")
        return value
    if isinstance(value, float):
        value = str(value)  # 0.1 is one tenth
    d: Decimal | None = None
    if isinstance(value, (Decimal, int, str)) and not isinstance(value, bool):
        try:
            d = Decimal(value)
        except InvalidOperation:
            pass
    if d is None or not d.is_finite() or d < 0:
        raise InvalidRequest(
            f"{what}: usd must be a finite, non-negative number, got {value!r}"
        )
    return d


def _num(axis: str, value: float | Decimal) -> int | Decimal:
    """An amount given to ``BudgetExceeded``, made exact like the core's."""
    d = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    return int(d) if axis != "usd" and d == d.to_integral_value() else d


class BudgetExceeded(_CoreBudgetExceeded):
    """A ``record`` or ``reserve`` would push past a cap; nothing was taken.

    token-budget-py's attributes: ``axis`` (``"tokens"`` or ``"usd"``),
    ``attempted`` (used + reserved + requested) and ``cap``, as ``int`` tokens
    or ``float`` USD. Also a ``ratebudget.BudgetExceeded``, whose ``limit``,
    ``used``, ``reserved`` and ``requested`` are exact.
    """

    attempted: float
    cap: float

    def __init__(
        self,
        axis: str,
        attempted: float | Decimal,
        cap: float | Decimal,
        *,
        used: int | Decimal | None = None,
        reserved: int | Decimal = 0,
        requested: int | Decimal = 0,
        resets_at: datetime | None = None,
    ) -> None:
        exact = _num(axis, attempted)
        super().__init__(
            f"budget exceeded on {axis}: attempted {float(attempted):.6g} "
            f"> cap {float(cap):.6g}",
            axis=axis,
            limit=_num(axis, cap),
            used=exact - reserved - requested if used is None else used,
            reserved=reserved,
            requested=requested,
            resets_at=resets_at,
        )
        self.attempted = _out(axis, exact)
        self.cap = _out(axis, self.limit)


@dataclass(frozen=True)
class BudgetSnapshot:
    """Pool usage at one moment, from ``BudgetPool.snapshot()``.

    ``*_remaining`` is cap - used - reserved (``None`` when unbounded); it is
    negative after a commit overran the cap.
    """

    tokens_used: int
    usd_used: float
    token_cap: int | None
    usd_cap: float | None
    tokens_remaining: int | None
    usd_remaining: float | None


class Reservation:
    """A ``reserve()``'d slice of the budget: ``commit`` it or ``release`` it."""

    __slots__ = ("_completed", "_lease", "_tokens", "_usd")

    def __init__(self, lease: SyncLease, tokens: int, usd: Decimal) -> None:
        self._lease = lease
        self._tokens = tokens
        self._usd = usd
        self._completed = False

    def commit(
        self, *, tokens: int | None = None, usd: UsdAmount | None = None
    ) -> None:
        """Record the real usage in place of the estimate (``None``: the estimate).

        Usage above the estimate is recorded even past a cap (token-budget-py
        raised and recorded nothing); it never raises ``BudgetExceeded``.
        Raises ``RuntimeError`` if already committed or released.
        """
        if self._completed:
            raise RuntimeError("reservation already committed or released")
        actual: dict[str, int | Decimal] = {}
        if tokens is not None:
            actual["tokens"] = _exact("tokens", tokens, "commit")
        if usd is not None:
            actual["usd"] = _exact("usd", usd, "commit")
        self._lease.commit(**actual)
        self._completed = True

    def release(self) -> None:
        """Give the reservation back; a no-op once committed or released."""
        if not self._completed:
            self._completed = True
            self._lease.release()

    @property
    def reserved_tokens(self) -> int:
        return self._tokens

    @property
    def reserved_usd(self) -> float:
        return float(self._usd)

    @property
    def completed(self) -> bool:
        return self._completed


class BudgetPool:
    """Thread-safe shared token and USD budget; ``None`` leaves an axis unbounded.

    A ``record`` or ``reserve`` raises ``BudgetExceeded`` (and takes nothing)
    if used + reserved + requested would pass a cap on an axis it asks for.
    Calls do not block.
    """

    __slots__ = ("_caps", "_limiter")

    def __init__(
        self, token_cap: int | None = None, usd_cap: UsdAmount | None = None
    ) -> None:
        caps: dict[str, int | Decimal | None] = {"tokens": None, "usd": None}
        for axis, name, cap in (
            ("tokens", "token_cap", token_cap),
            ("usd", "usd_cap", usd_cap),
        ):
            if cap is not None:
                try:
                    caps[axis] = _exact(axis, cap, name)
                except InvalidRequest:
                    raise InvalidRequest(f"{name} must be >= 0 or None") from None
        self._caps = caps
        tokens, usd = caps["tokens"], caps["usd"]
        # An unbounded axis is counted by a soft cap: it never blocks.
        self._limiter = Limiter(
            Cap(tokens=_UNBOUNDED_TOKENS, soft=True)
            if tokens is None
            else Cap(tokens=tokens),
            Cap(usd=_UNBOUNDED_USD, soft=True) if usd is None else Cap(usd=usd),
        )

    @property
    def limiter(self) -> Limiter:
        """The underlying ``Limiter``, to move code to the async API.

        It shares this pool's state. Its ``acquire`` waits for reservations
        rather than raising; while such a waiter is queued, the pool's calls
        queue behind it (first come, first served).
        """
        return self._limiter

    def _grant(self, tokens: object, usd: object, what: str) -> Reservation:
        amounts = {
            "tokens": _exact("tokens", tokens, what),
            "usd": _exact("usd", usd, what),
        }
        tokens_n, usd_n = amounts["tokens"], amounts["usd"]
        sync = self._limiter.sync
        try:
            while True:
                lease = sync.try_acquire(tokens_n, usd=usd_n, requests=0)
                if lease is not None:
                    break
                snap = sync.snapshot()
                # Held by others' reservations: token-budget-py raises.
                self._raise_if_over(snap, amounts)
                if snap.waiting:  # callers of limiter.acquire are queued first
                    lease = sync.acquire(tokens_n, usd=usd_n, requests=0)
                    break
                # else a reservation was given back meanwhile: try again
        except _CoreBudgetExceeded as exc:
            if isinstance(exc, BudgetExceeded):
                raise
            raise BudgetExceeded(
                exc.axis,
                exc.used + exc.reserved + exc.requested,
                exc.limit,
                used=exc.used,
                reserved=exc.reserved,
                requested=exc.requested,
                resets_at=exc.resets_at,
            ) from None
        return Reservation(lease, int(tokens_n), Decimal(usd_n))

    def _raise_if_over(self, snap: Snapshot, amounts: dict[str, int | Decimal]) -> None:
        by_axis = {ls.axis: ls for ls in snap.limits}
        for axis, cap in self._caps.items():
            ls, n = by_axis[axis], amounts[axis]
            if cap is not None and n and ls.used + ls.reserved + n > cap:
                raise BudgetExceeded(
                    axis,
                    ls.used + ls.reserved + n,
                    cap,
                    used=ls.used,
                    reserved=ls.reserved,
                    requested=n,
                    resets_at=ls.resets_at,
                )

    def record(self, *, tokens: int = 0, usd: UsdAmount = 0.0) -> None:
        """Add usage to the pool; on a breach raise ``BudgetExceeded``, change nothing."""
        self._grant(tokens, usd, "record").commit()

    def try_reserve(self, *, tokens: int = 0, usd: UsdAmount = 0.0) -> Reservation:
        """Hold an estimate, to ``commit()`` or ``release()`` later.

        Raises ``BudgetExceeded`` (holding nothing) on a breach.
        """
        return self._grant(tokens, usd, "reserve")

    @contextmanager
    def reserve(
        self, *, tokens: int = 0, usd: UsdAmount = 0.0
    ) -> Iterator[Reservation]:
        """``try_reserve`` as a context manager.

        Leaving the block without ``commit()``, normally or by an exception,
        releases the reservation, as in token-budget-py (a core ``Lease``
        commits its estimate on a normal exit instead).
        """
        r = self._grant(tokens, usd, "reserve")
        try:
            yield r
        finally:
            r.release()

    def snapshot(self) -> BudgetSnapshot:
        """Totals, caps and what is left, read atomically."""
        by_axis = {ls.axis: ls for ls in self._limiter.sync.snapshot().limits}
        t, u = by_axis["tokens"], by_axis["usd"]
        t_cap, u_cap = self._caps["tokens"], self._caps["usd"]
        return BudgetSnapshot(
            tokens_used=int(t.used),
            usd_used=float(u.used),
            token_cap=None if t_cap is None else int(t_cap),
            usd_cap=None if u_cap is None else float(u_cap),
            tokens_remaining=None
            if t_cap is None
            else int(t_cap - t.used - t.reserved),
            usd_remaining=None if u_cap is None else float(u_cap - u.used - u.reserved),
        )

    def reset(self) -> None:
        """Zero both totals; outstanding reservations stay outstanding."""
        self._limiter.sync.reset()

    def __repr__(self) -> str:
        return f"<BudgetPool {self._limiter!r}>"
