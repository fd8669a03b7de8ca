"""The SQLAlchemy engine for Postgres or SQLite, set up the way the store relies on."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

POOL_SIZE = 16  # Postgres connections per process


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    kwargs.setdefault("json_serializer", _json)  # compact: events.data is stored as written
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock up front: a deferred transaction that reads and then
            # writes fails at once under WAL instead of waiting for the other writer.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A fixed pool: under a burst, requests queue for a connection instead of opening and
    # closing overflow connections (each a TCP, TLS-probe and auth handshake).
    return create_async_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30, **kwargs)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
