"""Slack acknowledgement latency: signed ``app_mention`` events to POST /slack/events of a real
`relaybot serve` subprocess, timed from send to response, with 1 and with 50 concurrent senders.

Three services, each on a fresh database: ``serve --no-worker`` (the webhook path alone:
verify the signature, dedupe the receipt, append, answer), the same with two processes
(``WEB_CONCURRENCY=2``), and plain ``serve`` (the single-machine default: the in-process worker
steps every new thread through the stand-in model meanwhile). The stand-ins for Slack's Web
API and the model run in a process of their own (``benchmarks.standins``); the load generator
is a minimal keep-alive HTTP client, one connection per sender.

    python -m benchmarks.slack_ack [--serial 300] [--burst 5000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import httpx
from slack_sdk.signature import SignatureVerifier

from benchmarks.workers import ROOT, Procs, free_port, fresh_database, percentile, table, until
from tests.fakes.slack_api import BOT_USER

SECRET = "bench-signing-secret"
SIGNER = SignatureVerifier(SECRET)
SEQ = itertools.count(1)
EPOCH = int(time.time())


def mention() -> bytes:
    """An app_mention with a new event_id in a new thread (its own ts), like Slack sends."""
    n = next(SEQ)
    ts = f"{EPOCH + n}.{n:06d}"
    event = {"type": "app_mention", "channel": "C1", "user": "UALICE", "ts": ts, "event_ts": ts}
    payload = {
        "token": "legacy",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:16].upper()}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
        "event": {**event, "text": f"<@{BOT_USER}> bench {n}"},
    }
    return json.dumps(payload).encode()


def signed_request(port: int) -> bytes:
    """One complete HTTP/1.1 request, signed like Slack signs it, ready to write."""
    body = mention()
    stamp = str(int(time.time()))
    signature = SIGNER.generate_signature(timestamp=stamp, body=body) or ""
    head = (
        f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Slack-Request-Timestamp: {stamp}\r\nX-Slack-Signature: {signature}\r\n\r\n"
    )
    return head.encode() + body


async def sender(
    port: int, requests: list[bytes], latencies: list[float], errors: list[str]
) -> None:
    """One keep-alive connection sending its requests one after another, as Slack's
    delivery workers do. A minimal client, so that the load generator takes little of the
    CPU that the service and Postgres share with it on this machine."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answer = await reader.readexactly(length) if length else b""
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"{status} {answer[:200]!r}")
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants (Linux /proc): with
    WEB_CONCURRENCY, the requests are served by uvicorn's child processes."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except FileNotFoundError:  # it ended meanwhile
        pass
    return total


async def phase(port: int, n: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """``n`` requests over ``concurrency`` connections; (latencies, errors, wall seconds)."""
    errors: list[str] = []
    latencies: list[float] = []
    requests = [signed_request(port) for _ in range(n)]  # signed before the clock starts
    shares = [requests[i::concurrency] for i in range(concurrency)]
    t0 = time.perf_counter()
    await asyncio.gather(*(sender(port, share, latencies, errors) for share in shares))
    return latencies, errors, time.perf_counter() - t0


async def settled(db: asyncpg.Connection) -> bool:
    running = await db.fetchval("SELECT count(*) FROM threads WHERE status = 'running'")
    pending = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'")
    return not running and not pending


async def variant(
    label: str, worker: bool, processes: int, args: argparse.Namespace, llm: str, slack: str
) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    port = free_port()
    async with fresh_database() as url, Procs() as procs:
        keep = ("LLM_", "DATABASE_URL", "SLACK_", "API_TOKEN", "HOST", "PORT", "LOG_LEVEL")
        env = {k: v for k, v in os.environ.items() if not k.startswith(keep)}
        env |= {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": url,
            "LLM_MODEL": "openai/test-model",
            "LLM_API_BASE": llm,
            "OPENAI_API_KEY": "x",
            "API_TOKEN": uuid.uuid4().hex,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack,
            "LOG_LEVEL": "WARNING",
            "SHUTDOWN_GRACE": "2",
            "WEB_CONCURRENCY": str(processes),
        }
        serve = ["serve", "--no-migrate"] + ([] if worker else ["--no-worker"])
        await procs.start(label, serve, env, ready="serving on")
        await procs.wait_ready()
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=64)
        base = f"http://127.0.0.1:{port}"
        db = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

                async def healthy() -> bool:
                    try:
                        return (await client.get("/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await until(healthy, 60, 0.1)
                _, warm_errors, _ = await phase(port, args.warmup, 1)
                if warm_errors:
                    raise RuntimeError(f"warm-up failed: {warm_errors[0]}")
                pid = procs.procs[0].proc.pid
                for senders, n in ((1, args.serial), (args.concurrency, args.burst)):
                    if worker:
                        await until(lambda: settled(db), 300, 0.1)
                    cpu0 = cpu_seconds(pid)
                    latencies, errors, wall = await phase(port, n, senders)
                    cpu = (cpu_seconds(pid) - cpu0) / n * 1000
                    ms = [f"{percentile(latencies, q) * 1000:.1f}" for q in (0.5, 0.99, 1)]
                    rows.append([label, str(senders), str(n), str(len(errors)), *ms])
                    rows[-1] += [f"{n / wall:.0f}", f"{cpu:.2f}"]
                    notes += [f"{label}, {senders} senders: {e}" for e in errors[:3]]
                    notes += [f"{label} said: {line}" for line in procs.procs[0].lines if errors]
                if worker:
                    t0 = time.perf_counter()
                    await until(lambda: settled(db), 300, 0.1)
                    drained = time.perf_counter() - t0
                    notes.append(f"{label}: burst threads all done {drained:.1f} s after it")
            stored = await db.fetchval("SELECT count(*) FROM threads")
            sent = args.warmup + args.serial + args.burst
            notes.append(f"{label}: {stored} threads stored for {sent} events sent")
        finally:
            await db.close()
    return rows, notes


async def main(args: argparse.Namespace) -> None:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"CPUs: {os.cpu_count()}, load average {load}, python {sys.version.split()[0]}\n")
    standins = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.standins", env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert standins.stdout is not None
    urls = json.loads(await asyncio.wait_for(standins.stdout.readline(), 60))
    rows: list[list[str]] = []
    notes: list[str] = []
    try:
        variants = [
            ("serve --no-worker", False, 1),
            ("serve --no-worker, WEB_CONCURRENCY=2", False, 2),
            ("serve (in-process worker)", True, 1),
        ]
        for label, worker, processes in variants:
            r, n = await variant(label, worker, processes, args, urls["llm"], urls["slack"])
            rows += r
            notes += n
    finally:
        standins.terminate()
        await standins.wait()
    print("## Slack ack latency: signed app_mention -> HTTP 200 from POST /slack/events\n")
    print(
        f"(each event a new thread; {args.warmup} warm-up requests first; target: p99 < 50 ms "
        f"at {args.concurrency} senders)\n"
    )
    head = "service|senders|n|errors|p50 ms|p99 ms|max ms|req/s|service CPU ms/req"
    print(table(head, rows), end="\n\n")
    print("\n".join(f"- {note}" for note in notes))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--serial", type=int, default=300, help="requests with 1 sender")
    p.add_argument("--burst", type=int, default=5000, help="requests with --concurrency senders")
    p.add_argument("--concurrency", type=int, default=50)
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(parse()))
    else:
        uvloop.run(main(parse()))
