"""Run the alembic migrations programmatically (``relaybot migrate``, and ``serve`` at start).

The core's revisions live in ``migrations/versions``; an agent or channel with tables of its
own registers a schema (``relaybot.schemas`` entry point: ``metadata`` and a ``versions``
folder) whose revisions form a branch of their own. ``upgrade`` brings every branch up.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData


def schemas() -> list[Any]:
    from app.plugins import SCHEMAS, plugins

    return [schema for _, schema in plugins(SCHEMAS)]


def all_metadata() -> list[MetaData]:
    """The core's tables and every plugin's: what the migrated schema must equal."""
    from app.store.tables import metadata

    return [metadata, *(s.metadata for s in schemas())]


def merged_metadata() -> MetaData:
    """All of ``all_metadata`` in one MetaData (to compare with a database as a whole)."""
    merged = MetaData()
    for metadata in all_metadata():
        for table in metadata.tables.values():
            table.to_metadata(merged)
    return merged


def alembic_config(url: str) -> Config:
    cfg = Config()
    core = Path(str(files("migrations")))
    cfg.set_main_option("script_location", str(core))
    locations = [str(core / "versions"), *(str(s.versions) for s in schemas())]
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(locations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (every branch's head). Call outside a running loop."""
    command.upgrade(alembic_config(url), revision)
