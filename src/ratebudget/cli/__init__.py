"""The ``ratebudget`` command line.

``ratebudget demo`` runs a bursty fan-out of simulated LLM calls (no network)
through a :class:`~ratebudget.Limiter` with a TPM rate, an RPM rate and a hard
USD cap, shows live progress, and ends with a table of what actually happened:
rates achieved against their bounds, the largest burst, spend against the cap,
refusals and wait times.  The demo's engine is :func:`run_demo`, which returns
a :class:`DemoReport`; the command only renders it.

``ratebudget status --store URL [NAME]`` shows every limiter registered on a
persistent store (or limiter ``NAME``): one table per limiter, a row per
limit with its usage, reservations, what is left, a bar, and when a calendar
cap resets; ``--json`` prints the same for scripts. Its data comes from
:func:`status`.

``rich`` (the ``cli`` extra) is used when installed, and imported lazily; the
commands fall back to plain text without it.

The modules, a concept each (import from here, not from them)::

    _main.py           the argument parser and main(): a module per command
    _demo.py           `ratebudget demo`: options, running, live progress
    _workload.py       DemoConfig and the seeded plan of calls
    _simulate.py       run_demo(): the plan through a real Limiter
    _stats.py          peak_in_window(), percentile(), RateReport
    _demo_render.py    the demo's table (plain or rich), plain progress
    _http_demo.py      `ratebudget demo --http`: the openai SDK on loopback
    _status.py         `ratebudget status`: options, exit codes
    _status_reader.py  status(): the limiters a store knows, and their state
    _status_render.py  the status tables (plain or rich)
"""

from __future__ import annotations

from ._demo_render import render_plain as render_plain
from ._demo_render import render_rich as render_rich
from ._main import build_parser as build_parser
from ._main import main as main
from ._simulate import DemoProgress as DemoProgress
from ._simulate import DemoReport as DemoReport
from ._simulate import ProgressCallback as ProgressCallback
from ._simulate import run_demo as run_demo
from ._stats import RateReport as RateReport
from ._stats import peak_in_window as peak_in_window
from ._stats import percentile as percentile
from ._status_reader import LimiterStatus as LimiterStatus
from ._status_reader import LimitStatus as LimitStatus
from ._status_reader import status as status
from ._status_render import render_status_plain as render_status_plain
from ._status_render import render_status_rich as render_status_rich
from ._workload import LARGEST_ESTIMATE as LARGEST_ESTIMATE
from ._workload import DemoConfig as DemoConfig
from ._workload import PlannedCall as PlannedCall
from ._workload import default_cap as default_cap
from ._workload import plan_calls as plan_calls

__all__ = (
    "DemoConfig",
    "DemoProgress",
    "DemoReport",
    "LimitStatus",
    "LimiterStatus",
    "PlannedCall",
    "RateReport",
    "main",
    "plan_calls",
    "render_status_plain",
    "render_status_rich",
    "run_demo",
    "status",
)
