"""What both sides of ``benchmarks.compare`` share: the agent's script, databases, figures.

The same agent on both sides: ``noop`` N times (N is ``steps=N`` in the first message), then
``deploy`` (which needs a person's approval), then, once deployed, finish. The model's
decision is made from what the thread shows, so a fake model, a worker process and the HTTP
stand-in all follow one script.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STEPS = re.compile(r"steps=(\d+)")
PROBE = re.compile(r"PROBE-[0-9a-f]+")
CTX = "CTX-CAPTURE"  # in a thread's first message: the stand-in keeps its requests
TOKENIZER = "gpt-4o-mini"  # litellm.token_counter's model for both sides' context sizes
NOOP_RESULT = "ok"
DEPLOYED = "deployed"
NOOP_DOC = "Do nothing."
DEPLOY_DOC = "Deploy a git tag. A human must approve it first."

Mode = Literal["fake", "http"]
Step = Literal["noop", "deploy", "done"]


def task(steps: int, tag: str = "") -> str:
    """The first message of a thread: the same text on both sides."""
    text = f"Run the noop tool {steps} times, then deploy tag v1 (it needs approval). steps={steps}"
    return f"{text} {tag}" if tag else text


def wanted_steps(text: str) -> int:
    match = STEPS.search(text)
    return int(match.group(1)) if match else 0


def next_step(steps: int, noops: int, deployed: bool) -> Step:
    if deployed:
        return "done"
    return "noop" if noops < steps else "deploy"


def openai_counts(messages: Sequence[Mapping[str, Any]]) -> tuple[int, bool]:
    """Noop results and whether the deploy ran, in an OpenAI-format message list."""
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            names[str(call.get("id"))] = str(call.get("function", {}).get("name"))
    noops = deployed = 0
    for m in messages:
        if m.get("role") == "tool":
            name = names.get(str(m.get("tool_call_id")))
            noops += name == "noop"
            deployed += name == "deploy"
    return noops, deployed > 0


class ArrivalLog:
    """When a probe thread's post-approval model request arrived: ``KEY <time.monotonic()>``
    lines appended to a file, so that a worker process or the stand-in can write and the
    load generator read (CLOCK_MONOTONIC is one clock for every process on the machine)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, key: str) -> None:
        with self.path.open("a") as f:  # one short line per write: appends do not interleave
            f.write(f"{key} {time.monotonic()!r}\n")

    def read(self) -> dict[str, float]:
        seen: dict[str, float] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                key, _, at = line.partition(" ")
                seen.setdefault(key, float(at))
        return seen

    async def wait_for(self, keys: Sequence[str], within: float = 120) -> dict[str, float]:
        async with asyncio.timeout(within):
            while True:
                seen = self.read()
                if all(k in seen for k in keys):
                    return {k: seen[k] for k in keys}
                await asyncio.sleep(0.002)


def probe_key() -> str:
    return f"PROBE-{uuid.uuid4().hex[:12]}"


# -- databases ------------------------------------------------------------------------------


@asynccontextmanager
async def fresh_database(prefix: str) -> AsyncIterator[str]:
    """An empty database (a plain postgresql:// DSN), dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{PG_ADMIN.rpartition('/')[0]}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


TABLE_SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
"""


WALDUMP = Path("/usr/lib/postgresql/15/bin/pg_waldump")
WAL_DIR = Path(os.environ.get("BENCH_PG_WAL_DIR", "/var/lib/postgresql/15/main/pg_wal"))
WAL_RECORD = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+),")


@dataclass
class Footprint:
    """Table bytes (with indexes and TOAST) per table, and where the cluster's WAL was."""

    tables: dict[str, int]
    wal: int  # the WAL insert position, in bytes
    lsn: str
    db_oid: int

    @classmethod
    async def of(cls, dsn: str) -> Footprint:
        conn = await asyncpg.connect(dsn)
        try:
            tables = {r[0]: int(r[1]) for r in await conn.fetch(TABLE_SIZES)}
            row = await conn.fetchrow(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint,"
                " pg_current_wal_insert_lsn()::text,"
                " (SELECT oid FROM pg_database WHERE datname = current_database())::bigint"
            )
            assert row is not None
            return cls(tables, int(row[0]), str(row[1]), int(row[2]))
        finally:
            await conn.close()

    async def growth(self, dsn: str) -> tuple[dict[str, int], int, int | None]:
        """Bytes each table grew by since this footprint; WAL bytes the whole cluster wrote
        since; and of those, the bytes of this database's records (None if pg_waldump
        cannot read the WAL here)."""
        now = await Footprint.of(dsn)
        grown = {t: b - self.tables.get(t, 0) for t, b in now.tables.items()}
        ours = await asyncio.to_thread(wal_of_database, self.lsn, now.lsn, self.db_oid)
        return grown, now.wal - self.wal, ours


def wal_of_database(start: str, end: str, db_oid: int) -> int | None:
    """WAL bytes between two LSNs that belong to one database: the records touching its
    relations, and the commit records of their transactions (pg_waldump, run as a user that
    can read pg_wal). Other databases' work on the same cluster is left out."""
    if not (WALDUMP.exists() and os.access(WAL_DIR, os.R_OK)):
        return None
    done = subprocess.run(
        [str(WALDUMP), "-p", str(WAL_DIR), "-s", start, "-e", end],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and not done.stdout:
        return None
    mine = f"/{db_oid}/"
    records: list[tuple[int, str, bool]] = []
    xids: set[str] = set()
    for line in done.stdout.splitlines():
        if (m := WAL_RECORD.search(line)) is None:
            continue
        ours = f"rel 1663{mine}" in line or f"rel 1664{mine}" in line
        records.append((int(m.group(1)), m.group(2), ours))
        if ours and m.group(2) != "0":
            xids.add(m.group(2))
    # Records are MAXALIGNed (8 bytes) in the WAL.
    return sum(-(-n // 8) * 8 for n, xid, ours in records if ours or xid in xids)


# -- figures --------------------------------------------------------------------------------


def percentile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


@dataclass
class EngineRun:
    """Threads of ``steps`` tool steps, one after the other, each to its end: the first
    message, the tool steps, the approval request, the approval, the deploy, done."""

    side: str
    mode: Mode
    steps: int
    threads: int = 0
    engine_ms: list[float] = field(default_factory=list)  # per thread: (wall - model) / calls
    outside_client_ms: list[float] = field(default_factory=list)  # (wall - client call) / calls
    cpu_ms: list[float] = field(default_factory=list)  # per thread: (process CPU - model) / calls
    gaps_ms: list[float] = field(default_factory=list)  # between consecutive model requests
    tables: dict[str, int] = field(default_factory=dict)  # bytes grown, all threads
    wal_bytes: int = 0  # cluster-wide insert position difference
    wal_own_bytes: int | None = None  # of that, this database's records (pg_waldump)
    shares: dict[str, float] = field(default_factory=dict)  # relaybot: render, count, append

    def forget_warm_up(self) -> None:
        """Drop the per-thread figures gathered so far (the warm-up thread's)."""
        self.engine_ms, self.outside_client_ms, self.cpu_ms, self.gaps_ms = [], [], [], []

    @property
    def table_bytes_per_thread(self) -> float:
        return sum(self.tables.values()) / self.threads

    @property
    def wal_bytes_per_thread(self) -> float:
        return self.wal_bytes / self.threads

    @property
    def wal_own_bytes_per_thread(self) -> float:
        return math.nan if self.wal_own_bytes is None else self.wal_own_bytes / self.threads


@dataclass
class LoadRun:
    """Bursts of threads at once (to the approval request), and resume latencies."""

    side: str
    mode: Mode
    label: str
    steps_per_s: list[float] = field(default_factory=list)  # one per burst
    burst_s: list[float] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)  # answers sent while the load ran
    loaded_sent: int = 0  # answers sent in the loaded phase, in the load or not
    load_drain_s: float = 0.0
