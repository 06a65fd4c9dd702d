"""The public surface: __all__, the exception tree, py.typed."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import types
import zipfile
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

import ratebudget
from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    InvalidRequest,
    RateBudgetError,
    StoreUnavailable,
)

DOCUMENTED = {
    "AcquireTimeout",
    "Alert",
    "BudgetExceeded",
    "Budgets",
    "Cap",
    "InvalidRequest",
    "Keys",
    "Lease",
    "LimitSnapshot",
    "Limiter",
    "Rate",
    "RateBudgetError",
    "Snapshot",
    "StoreUnavailable",
}
"""Every name the API spec promises from the top package."""


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user would see in ``dir(module)``: not private, not a submodule."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(module, name))
        and name != "annotations"  # from __future__ import annotations
    }


class TestAll:
    def test_every_documented_name_is_exported(self) -> None:
        assert DOCUMENTED <= set(ratebudget.__all__)

    def test_every_name_in_all_exists(self) -> None:
        for name in ratebudget.__all__:
            assert hasattr(ratebudget, name), name

    def test_every_public_name_is_in_all(self) -> None:
        assert public_names(ratebudget) <= set(ratebudget.__all__)

    def test_all_has_no_duplicates(self) -> None:
        assert len(ratebudget.__all__) == len(set(ratebudget.__all__))

    def test_star_import_gives_exactly_all(self) -> None:
        namespace: dict[str, object] = {}
        exec("from ratebudget import *", namespace)
        namespace.pop("__builtins__")
        assert set(namespace) == set(ratebudget.__all__)

    @pytest.mark.parametrize("name", sorted(DOCUMENTED))
    def test_public_classes_are_importable_from_the_top_package(
        self, name: str
    ) -> None:
        obj = getattr(importlib.import_module("ratebudget"), name)
        assert inspect.isclass(obj)
        assert obj.__module__.startswith("ratebudget")

    def test_testing_is_a_public_submodule_with_fakeclock(self) -> None:
        testing = importlib.import_module("ratebudget.testing")
        assert "FakeClock" in testing.__all__
        own = {
            name
            for name in public_names(testing)
            if f"{getattr(getattr(testing, name), '__module__', '')}.".startswith(
                f"{testing.__name__}."
            )
        }
        assert own == set(testing.__all__)

    def test_version_is_a_string(self) -> None:
        assert isinstance(ratebudget.__version__, str)


class TestExceptionTree:
    @pytest.mark.parametrize(
        "exc", [BudgetExceeded, AcquireTimeout, InvalidRequest, StoreUnavailable]
    )
    def test_every_error_is_a_ratebudget_error(self, exc: type[Exception]) -> None:
        assert issubclass(exc, RateBudgetError)
        assert issubclass(RateBudgetError, Exception)

    def test_acquire_timeout_is_a_timeout_error(self) -> None:
        assert issubclass(AcquireTimeout, TimeoutError)
        with pytest.raises(TimeoutError):
            raise AcquireTimeout("too slow", retry_after=1.5)

    def test_invalid_request_is_a_value_error(self) -> None:
        assert issubclass(InvalidRequest, ValueError)
        with pytest.raises(ValueError, match="bad"):
            raise InvalidRequest("bad")

    def test_budget_exceeded_and_store_unavailable_are_not_builtin_kinds(self) -> None:
        for exc in (BudgetExceeded, StoreUnavailable):
            assert not issubclass(exc, (ValueError, TimeoutError))

    def test_budget_exceeded_carries_its_details(self) -> None:
        resets = datetime(2026, 1, 2, tzinfo=timezone.utc)
        exc = BudgetExceeded(
            "over",
            axis="usd",
            limit=Decimal(10),
            used=Decimal(9),
            requested=Decimal(2),
            reserved=Decimal("0.5"),
            resets_at=resets,
        )
        assert (
            exc.axis,
            exc.limit,
            exc.used,
            exc.requested,
            exc.reserved,
            exc.resets_at,
        ) == (
            "usd",
            Decimal(10),
            Decimal(9),
            Decimal(2),
            Decimal("0.5"),
            resets,
        )
        assert str(exc) == "over"

    def test_budget_exceeded_defaults(self) -> None:
        exc = BudgetExceeded("over", axis="tokens", limit=1, used=1, requested=1)
        assert exc.reserved == 0
        assert exc.resets_at is None

    def test_acquire_timeout_retry_after(self) -> None:
        assert AcquireTimeout("x").retry_after is None
        assert AcquireTimeout("x", retry_after=2.5).retry_after == 2.5

    def test_store_unavailable_chains_the_driver_error(self) -> None:
        cause = ConnectionError("refused")

        def connect() -> None:
            try:
                raise cause
            except ConnectionError as exc:
                raise StoreUnavailable("redis down") from exc

        with pytest.raises(StoreUnavailable) as info:
            connect()
        assert info.value.__cause__ is cause


class TestPackaging:
    def test_py_typed_marker_is_shipped(self) -> None:
        marker = importlib.resources.files("ratebudget") / "py.typed"
        assert marker.is_file()

    def test_the_built_wheel_contains_py_typed(self, tmp_path: Path) -> None:
        wheel = pytest.importorskip("hatchling.builders.wheel")
        root = Path(ratebudget.__file__).resolve().parents[2]
        if not (root / "pyproject.toml").is_file():
            pytest.skip("not running from a source checkout")
        builder = wheel.WheelBuilder(str(root))
        (built,) = builder.build(directory=str(tmp_path), versions=["standard"])
        names = zipfile.ZipFile(built).namelist()
        assert "ratebudget/py.typed" in names
        assert "ratebudget/__init__.py" in names
        for asset in ("index.html", "dashboard.js", "dashboard.css"):  # no CDN
            assert f"ratebudget/dashboard/static/{asset}" in names

    def test_version_matches_the_installed_metadata(self) -> None:
        from importlib.metadata import version

        assert version("ratebudget") == ratebudget.__version__

    def test_no_asyncio_only_imports_in_the_core(self) -> None:
        root = Path(str(importlib.resources.files("ratebudget")))
        core = sorted(
            path
            for path in root.rglob("*.py")
            if path.relative_to(root).parts[0] not in ("cli", "integrations")
        )
        assert root / "testing" / "_clock.py" in core
        assert root / "stores" / "memory.py" in core
        for path in core:
            name = str(path.relative_to(root))
            source = path.read_text(encoding="utf-8")
            # one probe is allowed: it returns None outside asyncio, and the
            # code then takes its anyio path (the trio runs of the suite)
            lines = [
                line.strip()
                for line in source.splitlines()
                if "asyncio" in line and "import" in line
            ]
            for line in lines:
                assert line in (
                    "from asyncio import _get_running_loop as _running_loop",
                    "from asyncio import Future",  # under TYPE_CHECKING
                    "from asyncio import AbstractEventLoop, TimerHandle",  # ditto
                ), (name, line)
