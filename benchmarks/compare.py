"""relaybot and LangGraph side by side on the same agent, in the same run (issue 7).

    python -m benchmarks.compare [--quick] [--modes fake,http] [--output FILE]

The agent: N ``noop`` tool steps, a ``deploy`` step that needs a person's approval (relaybot's
approval request; LangGraph's ``interrupt()``), the approval (``Command(resume=...)`` on
LangGraph's side), the deploy, done. Both on the local Postgres, each side in fresh databases
of its own (relaybot: its normal store; LangGraph: ``AsyncPostgresSaver``, default
durability). Two model set-ups: ``fake`` (an in-process zero-latency model on both sides)
and ``http`` (the same local OpenAI-compatible stand-in, in a process of its own, reached
through litellm and through langchain-openai). Needs ``pip install -e '.[bench]'``.

Prints markdown: per set-up, relaybot's figure, LangGraph's and the ratio for each metric;
the context sizes; where relaybot's step time goes, and a cProfile of it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg

from app.context import ContextRenderer, make_environment
from benchmarks import compare_relaybot as rb
from benchmarks import lg_agent as lg
from benchmarks.compare_common import (
    PG_ADMIN,
    TOKENIZER,
    ArrivalLog,
    EngineRun,
    LoadRun,
    Mode,
    median,
    percentile,
)

ROOT = Path(__file__).resolve().parent.parent
CONTEXT_STEPS = (10, 100)

# LangGraph's figures as the issue gives them (LangGraph 1.2, Postgres checkpointer, 2 cores).
ISSUE: dict[tuple[Mode, str], str] = {
    ("fake", "engine 10"): "5-6",
    ("fake", "engine 100"): "5-6",
    ("fake", "stored 10"): "108 KB",
    ("fake", "stored 100"): "1.74 MB",
    ("fake", "throughput"): "190-270",
    ("fake", "idle"): "5-9",
    ("fake", "loaded"): "700-1000",
    ("http", "engine 10"): "11.5",
    ("http", "engine 100"): "32",
    ("http", "stored 10"): "103 KB",
    ("http", "stored 100"): "1.95 MB",
    ("http", "throughput"): "72",
    ("http", "idle"): "14",
    ("http", "loaded"): "15000",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def stand_in(arrivals: Path, capture: Path) -> AsyncIterator[str]:
    """The HTTP stand-in in its own process; yields its OpenAI base URL."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "benchmarks.compare_llm_server"),
        *("--arrivals", str(arrivals), "--capture-dir", str(capture)),
        *("--capture-steps", ",".join(map(str, CONTEXT_STEPS))),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("port "):
            raise RuntimeError(f"the stand-in did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


# -- formatting -----------------------------------------------------------------------------


def num(x: float) -> str:
    if x != x:  # NaN
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def size(b: float) -> str:
    return f"{b / 1024:.1f} KB" if b < 1024 * 1024 else f"{b / 1024 / 1024:.2f} MB"


def ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "—"
    r = a / b
    return f"{r:.3f}" if r < 0.1 else f"{r:.2f}"


@dataclass
class Row:
    metric: str
    relaybot: float
    relaybot_text: str
    langgraph: float
    langgraph_text: str
    issue: str = ""
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        met = {None: "", True: "yes", False: "**no**"}[self.met]
        r = ratio(self.relaybot, self.langgraph)
        return [
            self.metric,
            self.relaybot_text,
            self.langgraph_text,
            r,
            self.issue,
            self.target,
            met,
        ]


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [list(head), ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def engine_rows(mode: Mode, runs: dict[tuple[str, int], EngineRun], sizes: list[int]) -> list[Row]:
    rows: list[Row] = []
    what = "the model's own time excluded" if mode == "fake" else "HTTP round trip included"
    for n in sizes:
        r, g = runs["relaybot", n], runs["langgraph", n]
        a, b = median(r.engine_ms), median(g.engine_ms)
        rows.append(
            Row(
                f"ms per agent step, {n}-step threads ({what}): median (p99 single step)",
                a, f"{num(a)} ({num(percentile(r.gaps_ms, 0.99))})",
                b, f"{num(b)} ({num(percentile(g.gaps_ms, 0.99))})",
                ISSUE.get((mode, f"engine {n}"), ""), "<= 1/3", a <= b / 3,
            )
        )  # fmt: skip
    for n in sizes:
        r, g = runs["relaybot", n], runs["langgraph", n]
        a, b = median(r.outside_client_ms), median(g.outside_client_ms)
        rows.append(
            Row(f"ms per step outside the model client call, {n}-step", a, num(a), b, num(b))
        )
    for n in sizes:
        r, g = runs["relaybot", n], runs["langgraph", n]
        a, b = median(r.cpu_ms), median(g.cpu_ms)
        what = "" if mode == "fake" else ", the client library's included"
        rows.append(
            Row(
                f"CPU ms per agent step in the benchmark process{what}, {n}-step",
                a,
                num(a),
                b,
                num(b),
            )
        )
    for n in sizes:
        r, g = runs["relaybot", n], runs["langgraph", n]
        a, b = r.table_bytes_per_thread, g.table_bytes_per_thread
        target, met = ("<= 1/20", a <= b / 20) if n == max(sizes) else ("", None)
        rows.append(
            Row(
                f"table bytes per finished {n}-step thread", a, size(a), b, size(b),
                ISSUE.get((mode, f"stored {n}"), ""), target, met,
            )
        )  # fmt: skip
    for n in sizes:
        r, g = runs["relaybot", n], runs["langgraph", n]
        if r.wal_own_bytes is not None and g.wal_own_bytes is not None:
            a, b = r.wal_own_bytes_per_thread, g.wal_own_bytes_per_thread
            ra, gb = (
                f"{size(x.wal_own_bytes_per_thread)} ({size(x.wal_bytes_per_thread)})"
                for x in (r, g)
            )
            what = "its own database's records (the cluster's LSN advance)"
        else:
            a, b = r.wal_bytes_per_thread, g.wal_bytes_per_thread
            ra, gb = size(a), size(b)
            what = "the cluster's LSN advance"
        metric = f"WAL bytes per finished {n}-step thread: {what}"
        rows.append(Row(metric, a, ra, b, gb))
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        grow = {
            side: runs[side, hi].table_bytes_per_thread / runs[side, lo].table_bytes_per_thread
            for side in ("relaybot", "langgraph")
        }
        a, b = grow["relaybot"], grow["langgraph"]
        rows.append(
            Row(f"table bytes, {hi}-step ÷ {lo}-step thread", a, f"{a:.1f}x", b, f"{b:.1f}x")
        )
    return rows


def load_rows(mode: Mode, loads: list[LoadRun], args: argparse.Namespace) -> list[Row]:
    lgr = next(x for x in loads if x.side == "langgraph")
    rows: list[Row] = []
    b = median(lgr.steps_per_s)
    for r in (x for x in loads if x.side == "relaybot"):
        a = median(r.steps_per_s)
        rows.append(
            Row(
                f"agent steps/s, {args.load_threads} threads x {args.load_steps} steps at once "
                f"(relaybot {r.label}; LangGraph {lgr.label}), median of {len(r.steps_per_s)}",
                a, f"{num(a)} ({'/'.join(num(x) for x in r.steps_per_s)})",
                b, f"{num(b)} ({'/'.join(num(x) for x in lgr.steps_per_s)})",
                ISSUE.get((mode, "throughput"), ""), ">= 3x", a >= 3 * b,
            )
        )  # fmt: skip
    for r in (x for x in loads if x.side == "relaybot"):
        a, b = median(r.idle_ms), median(lgr.idle_ms)
        rows.append(
            Row(
                f"resume ms, idle (relaybot {r.label}): p50 (p99)",
                a, f"{num(a)} ({num(percentile(r.idle_ms, 0.99))})",
                b, f"{num(b)} ({num(percentile(lgr.idle_ms, 0.99))})",
                ISSUE.get((mode, "idle"), ""),
            )
        )  # fmt: skip
    for r in (x for x in loads if x.side == "relaybot"):
        a, b = median(r.loaded_ms), median(lgr.loaded_ms)

        def cell(x: LoadRun) -> str:
            p50, p99 = median(x.loaded_ms), percentile(x.loaded_ms, 0.99)
            return f"{num(p50)} ({num(p99)}; n={len(x.loaded_ms)}/{x.loaded_sent})"

        rows.append(
            Row(
                f"resume ms, under the burst (relaybot {r.label}): p50 (p99; n in the burst)",
                a, cell(r), b, cell(lgr),
                ISSUE.get((mode, "loaded"), ""), "p50 < 50 ms", a < 50,
            )
        )  # fmt: skip
    return rows


HEAD = [
    "metric",
    "relaybot",
    "LangGraph",
    "relaybot ÷ LangGraph",
    "LangGraph (issue)",
    "target",
    "met",
]


def context_table(capture: Path) -> str:
    import litellm  # after app/, which keeps litellm from fetching its price map

    rows = []
    for step in CONTEXT_STEPS:
        counts = {}
        for side in ("relaybot", "langgraph"):
            path = capture / f"{side}-step{step}.json"
            if not path.exists():
                return f"(no request captured at step {step} for {side})"
            body = json.loads(path.read_text())
            plain = litellm.token_counter(model=TOKENIZER, messages=body["messages"])
            tools = litellm.token_counter(
                model=TOKENIZER, messages=body["messages"], tools=body.get("tools")
            )
            counts[side] = (int(plain), int(tools), len(body["messages"]), len(path.read_text()))
        r, g = counts["relaybot"], counts["langgraph"]
        rows.append(
            [
                str(step), f"{r[0]:,} ({r[2]} messages)", f"{g[0]:,} ({g[2]} messages)",
                ratio(r[0], g[0]), f"{r[1]:,} / {g[1]:,}", f"{size(r[3])} / {size(g[3])}",
            ]
        )  # fmt: skip
    head = [
        "model request",
        "relaybot tokens",
        "LangGraph tokens",
        "relaybot ÷ LangGraph",
        "with tool schemas (relaybot / LangGraph)",
        "request body (relaybot / LangGraph)",
    ]
    return table(head, rows)


# -- profile --------------------------------------------------------------------------------

BUCKETS: list[tuple[str, Callable[[str], bool]]] = [
    (
        "waiting on Postgres, socket I/O (epoll, send, recv)",
        lambda s: "epoll" in s or "_socket" in s,
    ),
    ("asyncpg", lambda s: "asyncpg" in s),
    ("SQLAlchemy (with its greenlet bridge)", lambda s: "/sqlalchemy/" in s or "greenlet" in s),
    ("jinja2 rendering (with the compiled templates)", lambda s: "jinja2" in s or ".j2" in s),
    (
        "token counting (litellm's token_counter, tiktoken)",
        lambda s: "token_count" in s or "tiktoken" in s or "CoreBPE" in s,
    ),
    ("litellm's completion call (request, response, logging)", lambda s: "litellm" in s),
    (
        "HTTP client (httpx, aiohttp, openai SDK)",
        lambda s: any(m in s for m in ("/httpx/", "/httpcore/", "/aiohttp/", "/openai/", "/h11/")),
    ),
    ("pydantic (validation, dumps)", lambda s: "pydantic" in s),
    ("relaybot's app/ code", lambda s: "/app/" in s),
    ("asyncio event loop", lambda s: "asyncio" in s or "selectors" in s),
    ("the benchmark (its fake model, timers)", lambda s: "/benchmarks/" in s),
]
OTHER = "other"


def bucket(key: tuple[str, int, str]) -> str | None:
    text = f"{key[0]} {key[2]}"
    return next((name for name, match in BUCKETS if match(text)), None)


def where(key: tuple[str, int, str]) -> str:
    path, line, func = key
    if path == "~":
        return func
    parts = Path(path).parts
    for anchor in ("site-packages", "main", "python3.11"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{'/'.join(parts)}:{line} {func}"


def profile_report(profiler: cProfile.Profile, title: str, full: bool = True) -> str:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    buckets: dict[str, float] = {}
    for key, (_, _, tottime, _, callers) in raw.items():
        if (name := bucket(key)) is not None:
            buckets[name] = buckets.get(name, 0.0) + tottime
            continue
        # Built-ins and the standard library (getattr, dataclasses.replace, json...): their
        # time goes to the buckets of their callers, in proportion.
        spread = sum(c[2] for c in callers.values())
        if not spread:
            buckets[OTHER] = buckets.get(OTHER, 0.0) + tottime
            continue
        for caller, c in callers.items():
            name = bucket(caller) or OTHER
            buckets[name] = buckets.get(name, 0.0) + tottime * c[2] / spread
    out = [f"{title}:\n"]
    rows = [
        [b, f"{t * 1000:.0f}", f"{t / total:.0%}"]
        for b, t in sorted(buckets.items(), key=lambda x: -x[1])
    ]
    out += [
        table(["where (own time; built-ins counted with their callers)", "ms", "share"], rows),
        "",
    ]
    top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:15]
    rows = [
        [f"`{where(k)}`", f"{v[1]:,}", f"{v[2] * 1000:.0f}", f"{v[3] * 1000:.0f}"] for k, v in top
    ]
    out += [table(["hottest functions (own time)", "calls", "own ms", "cumulative ms"], rows), ""]
    if not full:
        return "\n".join(out)
    # cProfile counts each resumption of a coroutine as a call: cumulative times of async
    # functions are not meaningful, so only relaybot's plain functions are listed here.
    asyncs = coroutine_code()
    ours = [(k, v) for k, v in raw.items() if "/app/" in k[0] and (k[0], k[1]) not in asyncs]
    ours.sort(key=lambda kv: -kv[1][3])
    rows = [
        [f"`{where(k)}`", f"{v[1]:,}", f"{v[3] * 1000:.0f}", f"{v[3] / total:.0%}"]
        for k, v in ours[:12]
    ]
    head = ["relaybot's plain functions (cumulative)", "calls", "cumulative ms", "of all"]
    out.append(table(head, rows))
    return "\n".join(out)


def coroutine_code() -> set[tuple[str, int]]:
    """(file, first line) of relaybot's async functions and methods."""
    found: set[tuple[str, int]] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("app."):
            continue
        for obj in list(vars(module).values()):
            members = list(vars(obj).values()) if inspect.isclass(obj) else [obj]
            for f in members:
                if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
                    found.add((f.__code__.co_filename, f.__code__.co_firstlineno))
    return found


# -- the run --------------------------------------------------------------------------------


async def environment() -> str:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    pkgs = ("langgraph", "langgraph-checkpoint-postgres", "langchain-core", "langchain-openai")
    versions = ", ".join(f"{p} {version(p)}" for p in (*pkgs, "litellm", "psycopg", "asyncpg"))
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"- {os.cpu_count()} cores ({platform.machine()}), load average {load} at the start\n"
        f"- Python {platform.python_version()}, Postgres {pg}\n- {versions}\n"
        f"- relaybot at {revision()}"
    )


def revision() -> str:
    """The commit measured, and whether relaybot's code differed from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "app", "agents", "templates"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"{head}" + (" with uncommitted changes in app/, agents/ or templates/" if dirty else "")


async def run(args: argparse.Namespace) -> str:
    started = time.perf_counter()
    out = ["# relaybot vs LangGraph (python -m benchmarks.compare)", "", await environment(), ""]
    chosen = args.modes.split(",")
    modes: list[Mode] = [m for m in ("fake", "http") if m in chosen]
    sizes = [n for n, count in ((10, args.threads_10), (100, args.threads_100)) if count]
    counts = {10: args.threads_10, 100: args.threads_100}
    agent = rb.comparebot()
    system = ContextRenderer(make_environment(), rb.MODEL, rb.TOKEN_BUDGET).system_prompt(agent)
    shares: dict[int, dict[str, float]] = {}
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as tmp:
        arrivals, capture = ArrivalLog(Path(tmp) / "arrivals"), Path(tmp) / "capture"
        capture.mkdir()
        async with stand_in(arrivals.path, capture) as base:
            for mode in modes:
                llm_base = base if mode == "http" else None
                runs: dict[tuple[str, int], EngineRun] = {}
                for n in sizes:
                    grab = mode == "http" and n == max(sizes)
                    log(f"{mode}: relaybot, {counts[n]} threads of {n} steps")
                    runs["relaybot", n] = await rb.engine_run(mode, n, counts[n], llm_base, grab)
                    log(f"{mode}: LangGraph, {counts[n]} threads of {n} steps")
                    runs["langgraph", n] = await lg.engine_run(
                        mode, n, counts[n], llm_base, system, grab
                    )
                    if mode == "fake":
                        shares[n] = runs["relaybot", n].shares
                loads: list[LoadRun] = []
                margs = argparse.Namespace(**vars(args))
                margs.repeats = args.repeats if mode == "fake" else args.http_repeats
                for w in (int(x) for x in args.workers.split(",")):
                    log(f"{mode}: relaybot load, {w} worker process(es)")
                    loads.append(await rb.load_run(mode, w, margs, llm_base, arrivals))
                if mode == "fake" and args.low_concurrency:
                    # The same with fewer threads in flight per worker: the latency side of
                    # WORKER_CONCURRENCY. One burst only, to keep the run short.
                    low = argparse.Namespace(**vars(margs))
                    low.concurrency, low.repeats = args.low_concurrency, 1
                    log(f"{mode}: relaybot load, 1 worker, concurrency {low.concurrency}")
                    loads.append(await rb.load_run(mode, 1, low, llm_base, arrivals))
                log(f"{mode}: LangGraph load")
                loads.append(await lg.load_run(mode, margs, llm_base, system, arrivals))
                title = {
                    "fake": "in-process zero-latency fake model on both sides",
                    "http": "HTTP round trip to the local OpenAI-compatible stand-in "
                    "(relaybot: litellm; LangGraph: langchain-openai)",
                }[mode]
                rows = engine_rows(mode, runs, sizes) + load_rows(mode, loads, args)
                drains = ", ".join(f"{x.side} {x.label} {x.load_drain_s:.1f} s" for x in loads)
                section = [
                    f"## Model: {title}",
                    "",
                    table(HEAD, [r.cells() for r in rows]),
                    "",
                    f"The loaded burst took: {drains}.",
                    "",
                ]
                log("\n" + "\n".join(section))
                out += section
            for mode in [] if args.no_profile else modes:
                log(f"{mode}: profiling relaybot's engine")
                profiler = cProfile.Profile()
                llm_base = base if mode == "http" else None
                await rb.engine_run(mode, 100, args.profile_threads, llm_base, profiler=profiler)
                model = {"fake": "fake model", "http": "litellm to the HTTP stand-in"}[mode]
                title = (
                    f"cProfile of relaybot's engine, {args.profile_threads} threads of 100 steps "
                    f"({model}, Postgres)"
                )
                profiles += [profile_report(profiler, title, full=mode == "fake"), ""]
        if "http" in modes and 100 in sizes:
            out += ["## Context: tokens sent to the model (`litellm.token_counter`, "
                    f"model `{TOKENIZER}`, the request bodies as the stand-in received them)", "",
                    context_table(capture), ""]  # fmt: skip
    if shares:
        cells = [[f"{n}-step", *(f"{v:.0%}" for v in s.values())] for n, s in shares.items()]
        head = ["relaybot, fake model", *next(iter(shares.values()))]
        out += [
            "## Where relaybot's engine time goes (share of wall time)",
            "",
            table(head, cells),
            "",
        ]
    if profiles:
        out += ["## Profile of relaybot's step", "", *profiles]
    out.append(f"Whole run: {time.perf_counter() - started:.0f} s.")
    return "\n".join(out)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller run (~3 minutes)")
    p.add_argument("--modes", default="fake,http", help="model set-ups: fake, http")
    p.add_argument("--threads-10", type=int, help="threads of 10 steps (default 20; quick 5)")
    p.add_argument("--threads-100", type=int, help="threads of 100 steps (default 5; quick 2)")
    p.add_argument("--load-threads", type=int, help="threads per burst (default 200; quick 50)")
    p.add_argument("--load-steps", type=int, default=10, help="tool steps per burst thread")
    p.add_argument("--repeats", type=int, help="bursts per throughput figure (3; quick 1)")
    p.add_argument("--http-repeats", type=int, help="the same over HTTP (2; quick 1)")
    p.add_argument(
        "--low-concurrency",
        type=int,
        default=2,
        help="also run 1 worker at this WORKER_CONCURRENCY, fake model (0: skip)",
    )
    p.add_argument("--probes", type=int, help="resumes per condition (20; quick 8)")
    p.add_argument("--spacing", type=float, default=0.05, help="seconds between resumes")
    p.add_argument("--workers", default="1,2", help="relaybot worker processes, comma-separated")
    p.add_argument("--concurrency", type=int, default=16, help="WORKER_CONCURRENCY")
    p.add_argument("--profile-threads", type=int, default=3, help="100-step threads profiled")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--output", help="also write the markdown here")
    args = p.parse_args(argv)
    defaults = {"threads_10": (20, 5), "threads_100": (5, 2), "load_threads": (200, 50),
                "repeats": (3, 1), "http_repeats": (2, 1), "probes": (20, 8)}  # fmt: skip
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main() -> None:
    args = parse()
    report = asyncio.run(run(args))
    print("\n" + report)
    if args.output:
        Path(args.output).write_text(report + "\n")


if __name__ == "__main__":
    main()
