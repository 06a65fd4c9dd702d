"""``ratebudget.alerts.Webhook`` against a local HTTP receiver, and
``Alert.id``: stable, the same in every process for the same crossing.

The receiver is the standard library's HTTP server in a thread, on a free
loopback port; it answers each POST with the next status of its script.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ratebudget import Alert, Cap, InvalidRequest, Limiter
from ratebudget.alerts import Webhook, WebhookFailed


class Receiver:
    """Records every POST; answers with ``script`` (then 200s)."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.hold = threading.Event()  # cleared: each POST waits for it
        self.hold.set()
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.headers.append(dict(self.headers))
                receiver.arrived.set()
                receiver.hold.wait(10)
                status, extra = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/SECRET"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def quick(url: str, **kw: Any) -> Webhook:
    return Webhook(url, backoff=0.01, max_backoff=0.05, timeout=5, **kw)


async def crossing(limiter: Limiter) -> None:
    """Record enough to cross the 50% threshold of the cap, then flush."""
    await limiter.record(tokens=60)
    await limiter.flush_alerts()


async def test_an_alert_is_posted_as_json(receiver: Receiver) -> None:
    got: list[Alert] = []
    limiter = Limiter(
        Cap(tokens=100, per="day", alert_at=(0.5,)),
        name="acme",
        on_alert=[quick(receiver.url), got.append],
    )
    await crossing(limiter)
    (alert,) = got
    (body,) = receiver.bodies
    assert body == {
        "id": alert.id,
        "kind": "threshold",
        "scope": "acme",
        "axis": "tokens",
        "threshold": 0.5,
        "used": 60,
        "limit": 100,
        "period": alert.period,
        "resets_at": alert.resets_at.isoformat() if alert.resets_at else None,
        "cap": repr(alert.cap),
        "text": str(alert),
    }
    assert receiver.headers[0]["Content-Type"] == "application/json"


async def test_slack_format_and_usd_exact(receiver: Receiver) -> None:
    limiter = Limiter(
        Cap(usd="0.30", alert_at=(0.1,)),
        on_alert=[quick(receiver.url, format="slack"), quick(receiver.url)],
    )
    await limiter.record(usd="0.100000001")
    await limiter.flush_alerts()
    slack, plain = receiver.bodies
    assert set(slack) == {"text"}
    assert "0.100000001" in slack["text"]
    assert (plain["used"], plain["limit"]) == ("0.100000001", "0.3")


async def test_failures_are_retried_until_taken(receiver: Receiver) -> None:
    receiver.script = [(503, {}), (429, {"Retry-After": "0"}), (500, {})]
    limiter = Limiter(
        Cap(tokens=100, alert_at=(0.5,)), on_alert=quick(receiver.url, attempts=4)
    )
    await crossing(limiter)
    assert len(receiver.bodies) == 4  # three failures, then taken
    assert len({b["id"] for b in receiver.bodies}) == 1  # one alert, one id


async def test_a_final_status_is_not_retried_and_the_secret_not_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(400, {})]
    limiter = Limiter(
        Cap(tokens=100, alert_at=(0.5, 0.6)), on_alert=quick(receiver.url)
    )
    with caplog.at_level(logging.INFO, logger="ratebudget"):
        await crossing(limiter)  # crosses both: the second alert still goes
    assert len(receiver.bodies) == 2
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], WebhookFailed)
    assert "status 400" in str(failed[0].exc_info[1])
    assert "SECRET" not in caplog.text
    assert "hooks" not in caplog.text


async def test_giving_up_after_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    with Receiver() as gone:  # a port nobody listens on any more
        url = gone.url
    limiter = Limiter(Cap(tokens=100, alert_at=(0.5,)), on_alert=quick(url, attempts=3))
    with caplog.at_level(logging.INFO, logger="ratebudget"):
        await crossing(limiter)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    (failed,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "no answer; 3 attempts" in str(failed.exc_info and failed.exc_info[1])


async def test_a_slow_webhook_never_delays_the_caller(receiver: Receiver) -> None:
    receiver.hold.clear()  # the receiver answers only when told to
    limiter = Limiter(Cap(tokens=100, alert_at=(0.5,)), on_alert=quick(receiver.url))
    await limiter.record(tokens=60)  # returns while the POST hangs
    await limiter.record(tokens=1)
    assert (await limiter.snapshot())[0].used == 61
    receiver.hold.set()
    await limiter.flush_alerts()
    assert len(receiver.bodies) == 1


def test_the_blocking_facade_posts_too(receiver: Receiver) -> None:
    limiter = Limiter(Cap(tokens=100, alert_at=(0.5,)), on_alert=quick(receiver.url))
    limiter.sync.record(tokens=70)
    assert limiter.sync.flush_alerts(timeout=10)
    assert [b["used"] for b in receiver.bodies] == [70]


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (("ftp://host/x",), {}, "http"),
        (("https:///nohost",), {}, "host"),
        ((42,), {}, "URL"),
        (("https://h/x",), {"format": "xml"}, "format"),
        (("https://h/x",), {"attempts": 0}, "attempts"),
        (("https://h/x",), {"attempts": 2.5}, "attempts"),
        (("https://h/x",), {"timeout": 0}, "timeout"),
        (("https://h/x",), {"backoff": -1}, "backoff"),
        (("https://h/x",), {"max_backoff": float("nan")}, "max_backoff"),
        (("https://h/x",), {"headers": {"X": 1}}, "headers"),
    ],
)
def test_bad_arguments(args: tuple[Any, ...], kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        Webhook(*args, **kw)


def test_the_url_is_redacted_in_its_repr() -> None:
    hook = Webhook("https://user:pw@hooks.slack.com/services/T0/B0/SECRET?x=1")
    assert repr(hook) == "Webhook('https://hooks.slack.com/***', format='json')"


def test_on_alert_must_be_callables() -> None:
    with pytest.raises(InvalidRequest, match="not callable"):
        Limiter(Cap(tokens=1), on_alert=[print, "nope"])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="not callable"):
        Limiter(Cap(tokens=1), on_alert=42)  # type: ignore[arg-type]


# -- Alert.id ----------------------------------------------------------------------

_ALERT_ID = """
import anyio
from ratebudget import Cap, Limiter

got = []
limiter = Limiter(
    Cap(usd="10", per="month", tz="Europe/Paris", alert_at=(0.5,)),
    name="acme/search",
    on_alert=got.append,
)

async def main():
    await limiter.record(usd="6")
    await limiter.flush_alerts()
    print(got[0].id, got[0].period)

anyio.run(main)
"""


def test_alert_id_is_the_same_in_every_process() -> None:
    """Two interpreters (different hash seeds) name one crossing alike."""
    ids = {
        subprocess.run(
            [sys.executable, "-c", _ALERT_ID],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(ids) == 1


async def test_alert_id_names_scope_cap_threshold_and_period() -> None:
    got: list[Alert] = []
    a = Limiter(Cap(tokens=100, alert_at=(0.5, 0.9)), name="a", on_alert=got.append)
    b = Limiter(Cap(tokens=200, alert_at=(0.5,)), name="b", on_alert=got.append)
    raised = Limiter(Cap(tokens=300, alert_at=(0.5,)), name="a", on_alert=got.append)
    soft = Limiter(Cap(tokens=100, soft=True, alert_at=(0.5,)), on_alert=got.append)
    for limiter, n in ((a, 95), (b, 150), (raised, 200), (soft, 60)):
        await limiter.record(tokens=n)
        await limiter.flush_alerts()
    a50, a90, b50, raised50, soft50 = got
    assert (a50.threshold, a90.threshold) == (0.5, 0.9)
    ids = {x.id for x in got}
    assert len(ids) == 4  # only the raised cap's crossing repeats one
    assert raised50.id == a50.id  # the same cap of scope "a", only raised
    assert b50.id != a50.id != soft50.id
    assert a50.scope == "a"
    assert soft50.scope is None
    assert str(a50).startswith("a: Cap(")
    assert a50.id.startswith("alert_")


def test_usd_amount_in_payload_is_exact() -> None:
    hook = Webhook("https://h/x")
    alert = Alert(
        cap=Cap(usd="1"),
        threshold=0.8,
        used=Decimal("0.800000001"),
        period=None,
        resets_at=None,
    )
    assert hook.payload(alert)["used"] == "0.800000001"
    assert hook.payload(alert)["resets_at"] is None
