"""Fixtures: real gateways on port 0, real next hops, SQLite and PostgreSQL.

Store and queue tests take the `db_url` fixture, which runs them once on a
fresh SQLite file and once on a fresh PostgreSQL database at
BEEPMAIL_TEST_POSTGRES_URL (skipped, and said so, when that is not set).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support import Site, make_site

PG_ENV = "BEEPMAIL_TEST_POSTGRES_URL"


def _pg_database() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL not tested: {PG_ENV} is not set")
    name = f"beepmail_test_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            # Tests that run a second gateway give it "<name>_peer".
            for db in (name, f"{name}_peer"):
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": db})
                connection.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'beepmail.db'}"
    else:
        yield from _pg_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'beepmail.db'}"


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Site:
    """A site for ministry.gov.example on either store, with one officer."""
    return make_site(tmp_path / "site", db_url)


@pytest.fixture
def sqlite_site(tmp_path: Path, sqlite_url: str) -> Site:
    return make_site(tmp_path / "site", sqlite_url)
