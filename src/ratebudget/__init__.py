"""ratebudget: keep LLM workloads inside their rate limits and spend budgets.

A fair, cancellable token bucket for asyncio and trio (through anyio) with
absolute caps in tokens, requests or exact USD on top::

    limiter = Limiter(Rate(tokens=90_000, per="minute"), Cap(usd="25", per="day"))
    async with limiter.acquire(2_000, usd="0.012", timeout=30) as lease:
        reply = await call_llm(prompt)
        await lease.commit(tokens=reply.usage.total_tokens, usd=cost_of(reply))
"""

from __future__ import annotations

from ._budgets import Budgets as Budgets
from ._budgets import load as load
from ._clock import Clock as Clock
from ._clock import Sleeper as Sleeper
from ._clock import SystemClock as SystemClock
from ._exceptions import AcquireTimeout as AcquireTimeout
from ._exceptions import BudgetExceeded as BudgetExceeded
from ._exceptions import InvalidRequest as InvalidRequest
from ._exceptions import RateBudgetError as RateBudgetError
from ._exceptions import StoreUnavailable as StoreUnavailable
from ._exceptions import UnmeteredCall as UnmeteredCall
from ._forecast import Forecast as Forecast
from ._keys import Keys as Keys
from ._ledger import Ledger as Ledger
from ._ledger import LedgerEntry as LedgerEntry
from ._ledger import LedgerEvent as LedgerEvent
from ._limiter import Lease as Lease
from ._limiter import Limiter as Limiter
from ._limits import Cap as Cap
from ._limits import Rate as Rate
from ._report import Report as Report
from ._report import ReportRow as ReportRow
from ._runaway import Runaway as Runaway
from ._scope import Scope as Scope
from ._scope import current_scope as current_scope
from ._scope import scope as scope
from ._snapshot import Alert as Alert
from ._snapshot import LimitSnapshot as LimitSnapshot
from ._snapshot import Snapshot as Snapshot
from ._sync import SyncLease as SyncLease
from ._sync import SyncLimiter as SyncLimiter

__version__ = "0.1.0.dev0"

__all__ = (
    "AcquireTimeout",
    "Alert",
    "BudgetExceeded",
    "Budgets",
    "Cap",
    "Clock",
    "Forecast",
    "InvalidRequest",
    "Keys",
    "Lease",
    "Ledger",
    "LedgerEntry",
    "LedgerEvent",
    "LimitSnapshot",
    "Limiter",
    "Rate",
    "RateBudgetError",
    "Report",
    "ReportRow",
    "Runaway",
    "Scope",
    "Sleeper",
    "Snapshot",
    "StoreUnavailable",
    "SyncLease",
    "SyncLimiter",
    "SystemClock",
    "UnmeteredCall",
    "__version__",
    "current_scope",
    "load",
    "scope",
)
