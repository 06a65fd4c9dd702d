"""A pytest plugin: a spend cap for a test session's LLM calls.

Off unless asked for. ``pytest --llm-max-usd 2`` runs every test inside a
``ratebudget.scope`` of one session limiter, labelled ``test`` (its id): the calls the metering
transport and ``limiter.meter()`` make are charged to one session limiter
with a hard ``Cap(usd=2)`` (a call that would cross it raises
``BudgetExceeded`` before it is sent) and labelled with the test's id, in
a ledger (``--llm-ledger URL``, else a file of the session's own). At the
end it prints the cost of each test and fails the session when the total
is over. ``--llm-baseline FILE`` (JSON: test id to USD) names the tests
that cost more than the file says, and writes the file if it is missing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Generator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
import pytest

from .. import Cap, Ledger, Limiter, scope
from .._report import Report

__all__ = ()

_KEY = pytest.StashKey["_Session"]()
_LABEL = "test"


class _Session:
    def __init__(self, most: Decimal, ledger: Ledger, baseline: Path | None) -> None:
        self.most = most
        self.ledger = ledger
        self.limiter = Limiter(Cap(usd=most), name="pytest", ledger=ledger)
        self.baseline = baseline
        self.report: Report | None = None

    def read(self) -> Report:
        self.ledger.flush_sync()
        report = anyio.run(_by_test, self.ledger)
        self.report = report
        return report


async def _by_test(ledger: Ledger) -> Report:
    return await ledger.report(by=(_LABEL,))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ratebudget", "LLM spend (ratebudget)")
    group.addoption(
        "--llm-max-usd",
        metavar="USD",
        default=None,
        help="charge the session's metered LLM calls to a hard USD cap; "
        "print each test's cost; fail the session when over",
    )
    group.addoption(
        "--llm-ledger",
        metavar="URL",
        default=None,
        help="the ledger of the session's calls (default: a file of its own)",
    )
    group.addoption(
        "--llm-baseline",
        metavar="FILE",
        default=None,
        help="JSON of each test's cost: name the tests that cost more "
        "(the file is written if missing)",
    )


def pytest_configure(config: pytest.Config) -> None:
    text = config.getoption("--llm-max-usd")
    if text is None:
        return
    try:
        most = Decimal(text)
    except InvalidOperation:
        most = Decimal("NaN")
    if not most.is_finite() or most < 0:
        raise pytest.UsageError(f"--llm-max-usd {text!r}: expected an amount of USD")
    url = config.getoption("--llm-ledger")
    if url is None:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='ratebudget-')) / 'llm.db'}"
    baseline = config.getoption("--llm-baseline")
    config.stash[_KEY] = _Session(
        most, Ledger(url), None if baseline is None else Path(baseline)
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    session = item.config.stash.get(_KEY, None)
    if session is None:
        return (yield)
    with scope(session.limiter, **{_LABEL: item.nodeid[:256]}):
        return (yield)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_KEY, None)
    if state is None:
        return
    report = state.read()
    spent = report.total.usd or Decimal(0)
    if spent > state.most and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    if state is None:
        return
    report = state.report or state.read()
    tr = terminalreporter
    tr.section("LLM spend (ratebudget)")
    for row in report.rows:
        test = row.group[_LABEL] or "(outside a test)"
        usd = "unpriced" if row.usd is None else f"${row.usd}"
        tr.write_line(f"{usd:>14}  {row.requests:>5} calls  {test}")
    spent = report.total.usd or Decimal(0)
    over = spent > state.most
    tr.write_line(
        f"total ${spent} in {report.total.requests} calls: "
        + (f"OVER the ${state.most} cap" if over else f"within ${state.most}")
        + (f"; {report.total.unpriced} unpriced" if report.total.unpriced else "")
        + f" (ledger {state.ledger.url})",
        red=over,
        green=not over,
    )
    if state.baseline is not None:
        _baseline(tr, report, state.baseline)


def _baseline(tr: Any, report: Report, path: Path) -> None:
    costs = {
        str(row.group[_LABEL]): str(row.usd or 0)
        for row in report.rows
        if row.group[_LABEL] is not None
    }
    if not path.exists():
        path.write_text(json.dumps(costs, indent=2, sort_keys=True) + "\n")
        tr.write_line(f"baseline written: {path}")
        return
    before = json.loads(path.read_text())
    dearer = [
        (test, Decimal(before.get(test, "0")), Decimal(usd))
        for test, usd in sorted(costs.items())
        if Decimal(usd) > Decimal(before.get(test, "0"))
    ]
    if not dearer:
        tr.write_line(f"no test costs more than in {path}")
    for test, was, now in dearer:
        tr.write_line(
            f"costs more than its baseline: {test}: ${was} -> ${now}", yellow=True
        )
