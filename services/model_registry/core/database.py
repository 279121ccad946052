"""Engines and schema migrations: SQLite by default, PostgreSQL by URL.

``migrate(engine)`` runs Alembic's ``upgrade head`` with a Config built in code, so it works from an
installed package with no alembic.ini on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """An engine for ``url``; ``schema`` (PostgreSQL) sets the search path, e.g. one schema per test run."""
    kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif schema:
        kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.close()


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on ``engine`` (its connection, so a schema search path applies).

    On PostgreSQL, replicas starting together take turns (a transaction-scoped advisory lock per
    schema): the first upgrades, the others then find the schema at head.
    """
    _alembic(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """``alembic downgrade <revision>`` on ``engine``."""
    _alembic(engine, command.downgrade, revision)


def _alembic(engine: Engine, fn: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters tables by copy-and-rename (batch mode); dropping the old table would
            # trip the foreign keys of rows pointing at it. The pragma only works outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.puyu-migrate'))")
                    )
                cfg.attributes["connection"] = conn
                fn(cfg, revision)
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
