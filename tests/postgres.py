"""A PostgreSQL database for tests: ``RATEBUDGET_POSTGRES_URL`` or the local
server (127.0.0.1:5432, trust auth, database ``test``), each test in a
schema of its own, dropped after it.

Without a server (or without psycopg) the calling test skips, or fails
when ``RATEBUDGET_REQUIRE_POSTGRES=1`` (as CI sets).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _skip(reason: str) -> None:
    if os.environ.get("RATEBUDGET_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason + " and RATEBUDGET_REQUIRE_POSTGRES=1")
    pytest.skip(reason)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A ledger URL naming a fresh schema; the schema is dropped after."""
    url = os.environ.get("RATEBUDGET_POSTGRES_URL", DEFAULT_URL)
    try:
        import psycopg
    except ImportError:
        _skip("psycopg is not installed (extra 'postgres')")
    try:
        admin = psycopg.connect(url, connect_timeout=3, autocommit=True)
    except psycopg.Error as e:
        _skip(f"no PostgreSQL at {url} ({e})")
    schema = f"rb_test_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{url}?schema={schema}"
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
