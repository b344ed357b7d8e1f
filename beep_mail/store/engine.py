"""Engine set-up, migrations, and the seam where database errors are translated.

SQLite runs in WAL mode with synchronous=FULL, so that a commit that answers
250 survives a power cut; every transaction starts with BEGIN IMMEDIATE, which
takes the write lock at once instead of failing half-way. PostgreSQL is used as
it comes. Callers on the event loop reach the database through `Database.run`,
which runs blocking work on threads: one thread for SQLite (one writer is all
it has), a small pool for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

log = logging.getLogger("beepmail.store")

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """The store cannot do this now; the mail is not accepted (a 4xx reply)."""

    status = "4.3.0"


class StoreBusy(StoreError):
    """Locked or unreachable: try again shortly."""


class StoreFull(StoreError):
    """No space left for the database."""

    status = "4.3.1"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(max_size_mb: int) -> Callable[[Any, Any], None]:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module, so that BEGIN
        # IMMEDIATE below is what starts every transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        if max_size_mb:
            page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
            pages = max_size_mb * 1024 * 1024 // page_size
            cursor.execute(f"PRAGMA max_page_count={int(pages)}")
        cursor.close()

    return connect


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _private_file(path: Path) -> None:
    """Create the database file readable by its owner only.

    SQLite gives its -wal and -shm files the mode of the database file, so
    this covers all three.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def make_engine(url: str, max_size_mb: int = 0) -> Engine:
    """An engine for this URL, with SQLite's directory created and pragmas set."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            _private_file(Path(path))
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 5.0}
        )
        event.listen(engine, "connect", _sqlite_pragmas(max_size_mb))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def translate(error: SQLAlchemyError) -> StoreError:
    """One translation of driver errors into what the protocol layer knows."""
    text_ = str(getattr(error, "orig", error)).lower()
    pgcode = getattr(getattr(error, "orig", None), "sqlstate", None)
    if "disk is full" in text_ or "no space" in text_ or pgcode == "53100":
        return StoreFull("no space left for the database")
    if isinstance(error, (OperationalError, DBAPIError)):
        return StoreBusy(f"database unavailable: {type(error.orig).__name__}")
    return StoreError(f"database error: {type(error).__name__}")


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as error:
        raise translate(error) from error


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """The engine plus the threads that run blocking calls for the event loop."""

    def __init__(self, url: str, max_size_mb: int = 0) -> None:
        self.url = url
        self.engine = make_engine(url, max_size_mb)
        workers = 1 if is_sqlite(self.engine) else 8
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="db")

    @property
    def sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def migrate(self) -> None:
        with translated():
            upgrade(self.engine)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(engine, *args) off the event loop, errors translated."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with translated():
            return fn(self.engine, *args)

    def ping(self) -> None:
        with translated(), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
