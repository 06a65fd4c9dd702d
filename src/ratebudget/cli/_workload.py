"""The demo's workload: its parameters and the seeded plan of simulated calls."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

_MILLION = Decimal(1_000_000)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of ``ratebudget demo``.

    Times are in *simulated* seconds: the limiter's minute lasts
    ``60 / speed`` seconds of its clock, and every simulated latency, arrival
    gap and timeout is divided by ``speed`` the same way.  Prices are USD per
    million tokens.  ``cap_usd=None`` sizes the cap at ``cap_fraction`` of the
    planned calls' real cost, so the cap refuses some calls near the end.
    """

    calls: int = 300
    seed: int = 8
    speed: float = 40.0
    tpm: int = 60_000
    tpm_burst: int = 10_000
    rpm: int = 100
    rpm_burst: int = 10
    cap_usd: Decimal | None = None
    cap_fraction: Decimal = Decimal("0.9")
    input_price: Decimal = Decimal(3)
    output_price: Decimal = Decimal(15)
    timeout: float = 900.0

    def __post_init__(self) -> None:
        for name in ("calls", "tpm", "tpm_burst", "rpm", "rpm_burst"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed must be a positive number, got {self.speed}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a positive number, got {self.timeout}")
        if self.cap_usd is not None and not self.cap_usd > 0:
            raise ValueError(f"cap_usd must be positive, got {self.cap_usd}")
        if not Decimal(0) < self.cap_fraction:
            raise ValueError(f"cap_fraction must be positive, got {self.cap_fraction}")
        if self.tpm_burst < LARGEST_ESTIMATE:
            raise ValueError(
                f"tpm_burst must hold the largest estimate ({LARGEST_ESTIMATE:,} "
                f"tokens), got {self.tpm_burst:,}"
            )

    @property
    def minute(self) -> float:
        """Length of the simulated minute in seconds of the limiter's clock."""
        return 60.0 / self.speed

    def cost(self, prompt_tokens: int, output_tokens: int) -> Decimal:
        """Exact USD cost of a call."""
        return (
            prompt_tokens * self.input_price + output_tokens * self.output_price
        ) / _MILLION


@dataclass(frozen=True)
class _Kind:
    prompt: tuple[int, int]
    max_output_tokens: int


_CHAT = _Kind(prompt=(40, 400), max_output_tokens=128)
_DOCUMENT = _Kind(prompt=(1_500, 5_000), max_output_tokens=800)
_WAVE_GAP = (8.0, 45.0)
LARGEST_ESTIMATE = _DOCUMENT.prompt[1] + _DOCUMENT.max_output_tokens
"""The largest token estimate the workload asks for (the TPM burst must hold it)."""


@dataclass(frozen=True)
class PlannedCall:
    """One simulated LLM call; ``arrival`` and ``latency`` in simulated seconds.

    The estimate is ``prompt_tokens + max_output_tokens``; the real usage is
    ``prompt_tokens + output_tokens``, never more.
    """

    index: int
    arrival: float
    prompt_tokens: int
    max_output_tokens: int
    output_tokens: int
    latency: float


def plan_calls(config: DemoConfig) -> tuple[PlannedCall, ...]:
    """The seeded workload: waves of short chats or of long documents.

    Waves of 5-40 calls land within a second, 8-45 simulated seconds
    apart; a quarter of the waves carry documents, so the load swings between
    request-bound (chats) and token-bound (documents).  Sorted by arrival.
    """
    rng = random.Random(config.seed)
    calls: list[PlannedCall] = []
    start = 0.0
    while len(calls) < config.calls:
        size = min(rng.randint(5, 40), config.calls - len(calls))
        kind = _DOCUMENT if rng.random() < 0.25 else _CHAT
        for _ in range(size):
            prompt = rng.randint(*kind.prompt)
            output = rng.randint(kind.max_output_tokens // 8, kind.max_output_tokens)
            latency = rng.uniform(0.3, 1.0) + output / rng.uniform(60.0, 120.0)
            arrival = start + rng.uniform(0.0, 1.0)
            calls.append(
                PlannedCall(
                    len(calls), arrival, prompt, kind.max_output_tokens, output, latency
                )
            )
        start += rng.uniform(*_WAVE_GAP)
    calls.sort(key=lambda call: (call.arrival, call.index))
    return tuple(calls)


def default_cap(config: DemoConfig, plan: Sequence[PlannedCall]) -> Decimal:
    """The cap: ``cap_usd``, or ``cap_fraction`` of the plan's cost, in cents."""
    if config.cap_usd is not None:
        return config.cap_usd
    total = sum(
        (config.cost(call.prompt_tokens, call.output_tokens) for call in plan),
        Decimal(0),
    )
    return max(_CENT, (total * config.cap_fraction).quantize(_CENT, ROUND_DOWN))
