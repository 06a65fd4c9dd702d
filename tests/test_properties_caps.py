"""Property tests: caps against a simple model over random operation sequences.

The model keeps, per cap, the committed usage and the outstanding leases'
estimates in integer units, and the money committed as an exact ``Decimal``
sum of what was passed in. After every step the limiter's snapshot must agree
with it, and a hard cap may be over its limit only by what commits above
their estimate added (contracts 1, 6, 7 and 11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Lease,
    Limiter,
)
from ratebudget.testing import FakeClock

NANO = 10**9
USD_LIMIT = 10  # hard, per UTC day
SOFT_USD_LIMIT = 5  # soft, per UTC day: counts like the hard one, never refuses
TOKEN_LIMIT = 1_000  # hard, lifetime
START = datetime(2026, 1, 1, 20, tzinfo=timezone.utc)

Form = Literal["decimal", "str", "float"]
Money = Decimal | str | float


def money(nanos: int, form: Form) -> Money:
    """``nanos`` nano-dollars written the way a caller might."""
    d = Decimal(nanos).scaleb(-9)
    if form == "str":
        return str(d)
    if form == "float":
        return float(d)  # at most 10 significant digits: str() gives them back
    return d


def as_decimal(value: Money) -> Decimal:
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


@dataclass(frozen=True)
class Acquire:
    usd: int
    tokens: int
    form: Form
    via_timeout: bool  # acquire(timeout=0) instead of try_acquire


@dataclass(frozen=True)
class Commit:
    pick: int
    usd: int | None
    tokens: int | None
    form: Form


@dataclass(frozen=True)
class Release:
    pick: int


@dataclass(frozen=True)
class Record:
    usd: int
    tokens: int
    form: Form


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Advance:
    seconds: int


@dataclass(frozen=True)
class SettleAgain:
    pick: int
    commit: bool


Op = Acquire | Commit | Release | Record | Reset | Advance | SettleAgain

nanos = st.one_of(
    st.just(0),
    st.integers(1, 1_000),
    st.integers(1, 4 * NANO),
    st.sampled_from([NANO, 5 * NANO, USD_LIMIT * NANO]),
)
tokens = st.one_of(st.just(0), st.integers(1, 400), st.just(TOKEN_LIMIT))
forms: st.SearchStrategy[Form] = st.sampled_from(["decimal", "str", "float"])
ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(Acquire, nanos, tokens, forms, st.booleans()),
    st.builds(Acquire, nanos, tokens, forms, st.booleans()),
    st.builds(
        Commit,
        st.integers(0, 50),
        st.none() | nanos,
        st.none() | st.integers(0, 600),
        forms,
    ),
    st.builds(Release, st.integers(0, 50)),
    st.builds(Record, nanos, tokens, forms),
    st.just(Reset()),
    st.builds(Advance, st.sampled_from([1, 3_600, 4 * 3_600, 86_400, 30 * 3_600])),
    st.builds(SettleAgain, st.integers(0, 50), st.booleans()),
)


@dataclass
class Held:
    lease: Lease
    usd: int  # nano-dollars
    tokens: int
    usd_money: Decimal  # the estimate as passed in


@dataclass
class Model:
    usd_used: int = 0
    usd_money: Decimal = Decimal(0)  # usd_used, as the exact sum of the inputs
    tokens_used: int = 0
    usd_allowance: int = 0  # overuse committed above estimates this period
    tokens_allowance: int = 0
    outstanding: list[Held] = field(default_factory=list)
    settled: list[Lease] = field(default_factory=list)
    day: int = int(START.timestamp()) // 86_400

    @property
    def usd_reserved(self) -> int:
        return sum(h.usd for h in self.outstanding)

    @property
    def tokens_reserved(self) -> int:
        return sum(h.tokens for h in self.outstanding)

    def certain_overrun(self, usd: int, tokens: int) -> bool:
        return (usd > 0 and self.usd_used + usd > USD_LIMIT * NANO) or (
            tokens > 0 and self.tokens_used + tokens > TOKEN_LIMIT
        )

    def fits(self, usd: int, tokens: int) -> bool:
        return not (
            (usd > 0 and self.usd_used + self.usd_reserved + usd > USD_LIMIT * NANO)
            or (
                tokens > 0
                and self.tokens_used + self.tokens_reserved + tokens > TOKEN_LIMIT
            )
        )

    def reset_usd(self) -> None:
        self.usd_used = 0
        self.usd_money = Decimal(0)
        self.usd_allowance = 0


def make_limiter(clock: FakeClock) -> Limiter:
    return Limiter(
        Cap(usd=USD_LIMIT, per="day"),
        Cap(tokens=TOKEN_LIMIT),
        Cap(usd=SOFT_USD_LIMIT, per="day", soft=True),
        clock=clock,
    )


async def step(limiter: Limiter, clock: FakeClock, model: Model, op: Op) -> None:
    if isinstance(op, Acquire):
        amount = money(op.usd, op.form)
        expect_error = model.certain_overrun(op.usd, op.tokens)
        expect_grant = not expect_error and model.fits(op.usd, op.tokens)
        lease: Lease | None = None
        try:
            if op.via_timeout:
                try:
                    lease = await limiter.acquire(op.tokens, usd=amount, timeout=0)
                except AcquireTimeout:
                    lease = None
            else:
                lease = await limiter.try_acquire(op.tokens, usd=amount)
        except BudgetExceeded:
            assert expect_error, op
            return
        assert not expect_error, op
        assert (lease is not None) == expect_grant, op
        if lease is not None:
            model.outstanding.append(Held(lease, op.usd, op.tokens, as_decimal(amount)))
    elif isinstance(op, Commit):
        if not model.outstanding:
            return
        held = model.outstanding.pop(op.pick % len(model.outstanding))
        actual_usd = held.usd if op.usd is None else op.usd
        actual_tokens = held.tokens if op.tokens is None else op.tokens
        actual: dict[str, Money | int] = {}
        usd_money = held.usd_money
        if op.usd is not None:
            value = money(op.usd, op.form)
            actual["usd"] = value
            usd_money = as_decimal(value)
        if op.tokens is not None:
            actual["tokens"] = op.tokens
        await held.lease.commit(**actual)
        model.usd_used += actual_usd
        model.usd_money += usd_money
        model.tokens_used += actual_tokens
        model.usd_allowance += max(0, actual_usd - held.usd)
        model.tokens_allowance += max(0, actual_tokens - held.tokens)
        model.settled.append(held.lease)
    elif isinstance(op, Release):
        if not model.outstanding:
            return
        held = model.outstanding.pop(op.pick % len(model.outstanding))
        await held.lease.release()
        model.settled.append(held.lease)
    elif isinstance(op, Record):
        value = money(op.usd, op.form)
        # a hard cap refuses a record that would not fit beside the reservations
        refused = not model.fits(op.usd, op.tokens)
        try:
            await limiter.record(op.tokens, usd=value)
        except BudgetExceeded:
            assert refused, op
            return
        assert not refused, op
        model.usd_used += op.usd
        model.usd_money += as_decimal(value)
        model.tokens_used += op.tokens
    elif isinstance(op, Reset):
        await limiter.reset()
        model.reset_usd()
        model.tokens_used = 0
        model.tokens_allowance = 0
    elif isinstance(op, Advance):
        clock.advance(op.seconds)
        day = math.floor(clock.time()) // 86_400
        if day != model.day:
            model.day = day
            model.reset_usd()
    elif isinstance(op, SettleAgain):
        if not model.settled:
            return
        lease = model.settled[op.pick % len(model.settled)]
        if op.commit:
            try:
                await lease.commit(tokens=1)
            except InvalidRequest:
                pass
            else:
                raise AssertionError("a settled lease was committed again")
        else:
            await lease.release()


async def check(limiter: Limiter, model: Model) -> None:
    hard_usd, hard_tokens, soft_usd = (await limiter.snapshot()).limits
    # accounting: used is what was committed, reserved what outstanding leases hold
    assert isinstance(hard_usd.used, Decimal)
    assert hard_usd.used == model.usd_money == Decimal(model.usd_used).scaleb(-9)
    assert hard_usd.reserved == Decimal(model.usd_reserved).scaleb(-9)
    assert hard_tokens.used == model.tokens_used
    assert hard_tokens.reserved == model.tokens_reserved
    assert hard_usd.remaining == max(
        Decimal(0), USD_LIMIT - hard_usd.used - hard_usd.reserved
    )
    assert hard_tokens.remaining == max(
        0, TOKEN_LIMIT - model.tokens_used - model.tokens_reserved
    )
    # a soft cap counts exactly like the hard one and never refused anything
    assert (soft_usd.used, soft_usd.reserved) == (hard_usd.used, hard_usd.reserved)
    # a hard cap is over its limit only by overuse committed above estimates
    assert model.usd_used + model.usd_reserved <= USD_LIMIT * NANO + model.usd_allowance
    assert (
        model.tokens_used + model.tokens_reserved
        <= TOKEN_LIMIT + model.tokens_allowance
    )


SETTINGS = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class TestCapsAgainstTheModel:
    @SETTINGS
    @given(sequence=st.lists(ops, max_size=40))
    async def test_accounting_matches_the_model_after_every_step(
        self, sequence: list[Op]
    ) -> None:
        clock = FakeClock(start=START)
        limiter = make_limiter(clock)
        model = Model()
        await check(limiter, model)
        for op in sequence:
            await step(limiter, clock, model, op)
            await check(limiter, model)

    @SETTINGS
    @given(sequence=st.lists(ops, max_size=40), commit=st.booleans())
    async def test_settling_every_lease_leaves_nothing_reserved(
        self, sequence: list[Op], commit: bool
    ) -> None:
        clock = FakeClock(start=START)
        limiter = make_limiter(clock)
        model = Model()
        for op in sequence:
            await step(limiter, clock, model, op)
        while model.outstanding:
            if commit:
                await step(limiter, clock, model, Commit(0, None, None, "decimal"))
            else:
                await step(limiter, clock, model, Release(0))
        await check(limiter, model)
        snap = await limiter.snapshot()
        assert all(s.reserved == 0 for s in snap.limits)
        await limiter.reset()
        snap = await limiter.snapshot()
        assert all(s.used == 0 and s.remaining == s.limit_amount for s in snap.limits)


amounts = st.one_of(
    st.decimals(
        min_value=0, max_value=1_000, places=9, allow_nan=False, allow_infinity=False
    ),
    st.decimals(
        min_value=0, max_value=1, places=12, allow_nan=False, allow_infinity=False
    ),
    st.floats(min_value=0, max_value=1_000, allow_nan=False, allow_infinity=False),
    st.integers(0, 1_000),
)


class TestExactMoney:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(values=st.lists(amounts, max_size=60))
    async def test_usd_sums_exactly_rounding_each_amount_up_to_a_nano_dollar(
        self, values: list[Decimal | float | int]
    ) -> None:
        limiter = Limiter(Cap(usd=1, soft=True), clock=FakeClock())
        expected = Decimal(0)
        for value in values:
            await limiter.record(usd=value)
            exact = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
            expected += Decimal(math.ceil(exact * NANO)).scaleb(-9)
        used = (await limiter.snapshot()).limits[0].used
        assert isinstance(used, Decimal)
        assert used == expected
