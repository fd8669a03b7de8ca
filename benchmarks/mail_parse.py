"""The event loop while big mail is parsed: ``GET /healthz`` timed every 5 ms on one keep-alive
connection while 20 MB messages are POSTed, one after another, to ``/email/inbound`` of a real
``relaybot serve --no-worker`` subprocess (the web service: webhooks and Slack acks share its
loop). Target: /healthz p99 under 50 ms meanwhile.

Three mails: a 20 MB plain-text body (a forwarded log: the text kept is cut at
``EMAIL_MAX_TEXT_CHARS``), the same as an HTML table (converted only up to four times that),
and a short text with a 20 MB attachment (27 MB as sent: listed, never decoded). Two ways to
parse: ``EMAIL_PARSE_PROCESSES=1`` (the default: a worker process) and ``=0`` (a thread of the
service). Each variant on a fresh database; a small mail first starts the pool. Service CPU
counts the service and its children (the parse worker).

    python -m benchmarks.mail_parse [--mails 3] [--mb 20] [--processes 1,0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from email.message import EmailMessage

import httpx

from benchmarks.slack_ack import cpu_seconds
from benchmarks.workers import ROOT, Procs, free_port, fresh_database, percentile, table, until

TOKEN = "bench-inbound-token-0123456789"
LINE = "2026-11-26 10:00:00 INFO worker step done in 12 ms thread=0b7c… seq=41\n"


def mail(kind: str, megabytes: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ana <ana@example.net>"
    msg["To"] = "bot@relay.test"
    msg["Subject"] = f"{kind}, {megabytes} MB"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.net>"
    size = megabytes * 1_000_000
    if kind == "text body":
        msg.set_content(LINE * (size // len(LINE)), cte="8bit")
    elif kind == "html body":
        row = f"<tr><td>{LINE.strip()}</td></tr>\n"
        html = f"<html><body><table>{row * (size // len(row))}</table></body></html>"
        msg.set_content(html, subtype="html", cte="8bit")
    elif kind == "attachment":
        msg.set_content("The logs are attached: please deploy the backend again.")
        logs = os.urandom(size)
        msg.add_attachment(logs, maintype="application", subtype="gzip", filename="logs.gz")
    else:
        msg.set_content("please deploy the backend")
    return bytes(msg)


async def probe(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    """GET /healthz every 5 ms, each timed from send to its last byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)
    finally:
        writer.close()


async def variant(processes: int, args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    port = free_port()
    label = "process" if processes else "thread"
    async with fresh_database() as url, Procs() as procs:
        keep = ("LLM_", "DATABASE_URL", "EMAIL_", "SMTP_", "IMAP_", "API_TOKEN", "HOST", "PORT")
        env = {k: v for k, v in os.environ.items() if not k.startswith(keep)}
        env |= {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": url,
            "LLM_MODEL": "openai/test-model",
            "API_TOKEN": uuid.uuid4().hex,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
            "SECRET_KEY": "b" * 32,
            "EMAIL_FROM": "bot@relay.test",
            "SMTP_HOST": "127.0.0.1",
            "EMAIL_INBOUND_TOKEN": TOKEN,
            "EMAIL_PARSE_PROCESSES": str(processes),
            "SHUTDOWN_GRACE": "2",
        }
        await procs.start(label, ["serve", "--no-migrate", "--no-worker"], env, "serving on")
        await procs.wait_ready()
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "message/rfc822"}
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as client:

            async def healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(healthy, 60, 0.1)
            t0 = time.perf_counter()
            first = await client.post("/email/inbound", content=mail("small", 0))
            notes.append(f"{label}: first (small) mail {time.perf_counter() - t0:.2f} s "
                         f"(starts the pool): {first.status_code}")  # fmt: skip
            idle: list[float] = []
            stop = asyncio.Event()
            prober = asyncio.create_task(probe(port, stop, idle))
            await asyncio.sleep(2)
            stop.set()
            await prober
            rows.append([label, "none (idle)", "0", "-", *_ms(idle), "-"])
            pid = procs.procs[0].proc.pid
            for kind in ("text body", "html body", "attachment"):
                raws = [mail(kind, args.mb) for _ in range(args.mails)]
                latencies: list[float] = []
                posts: list[float] = []
                stop = asyncio.Event()
                prober = asyncio.create_task(probe(port, stop, latencies))
                cpu0 = cpu_seconds(pid)
                for raw in raws:
                    t0 = time.perf_counter()
                    answer = await client.post("/email/inbound", content=raw)
                    posts.append(time.perf_counter() - t0)
                    if answer.status_code != 200 or answer.json().get("action") != "started":
                        notes.append(f"{label}, {kind}: {answer.status_code} {answer.text[:200]}")
                cpu = (cpu_seconds(pid) - cpu0) / len(raws)
                stop.set()
                await prober
                size = f"{len(raws[0]) / 1e6:.0f} MB"
                post = f"{sum(posts) / len(posts):.2f}"
                rows.append([label, f"{kind} ({size})", str(len(raws)), post, *_ms(latencies)])
                rows[-1].append(f"{cpu:.2f}")
    return rows, notes


def _ms(latencies: list[float]) -> list[str]:
    cells = [f"{percentile(latencies, q) * 1000:.1f}" for q in (0.5, 0.99, 1.0)]
    return [str(len(latencies)), *cells]


async def main(args: argparse.Namespace) -> None:
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"CPUs: {os.cpu_count()}, load average {load}, python {sys.version.split()[0]}\n")
    rows: list[list[str]] = []
    notes: list[str] = []
    for processes in args.processes:
        r, n = await variant(processes, args)
        rows += r
        notes += n
    print("## /healthz latency while big mail is POSTed to /email/inbound and parsed\n")
    print("(one mail at a time; /healthz every 5 ms meanwhile; target: p99 < 50 ms)\n")
    head = "parse in|mail|mails|s per POST|healthz n|p50 ms|p99 ms|max ms|service CPU s/mail"
    print(table(head, rows), end="\n\n")
    print("\n".join(f"- {note}" for note in notes))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--mails", type=int, default=3, help="big mails of each kind")
    p.add_argument("--mb", type=int, default=20, help="megabytes of body or attachment")
    p.add_argument(
        "--processes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 0],
        help="EMAIL_PARSE_PROCESSES values to compare",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
