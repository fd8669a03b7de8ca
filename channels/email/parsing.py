"""Parsing off the event loop.

Reading a large mail is CPU work: the feedparser takes about a second for 20 MB (and
decoding Postmark's JSON is one long call). On the event
loop that second stalls every request (Slack wants its ack within 3 s). In a thread of the
same process it would still hold the GIL for long stretches of C (decoding a 20 MB body is
one call), so by default the parse runs in a small pool of worker processes
(``EMAIL_PARSE_PROCESSES``, started on the first mail): the loop only hands the bytes over
and gets back the few fields it needs, and the parsed tree's memory is the worker's.
``EMAIL_PARSE_PROCESSES=0`` parses in a thread instead (no extra process; the loop is then
only as free as the GIL lets it be: see ``benchmarks/mail_parse.py``).

At most one parse per process runs at once, so the time limit counts the parse and not the
queue; a worker that goes over it, or dies (out of memory, say), is replaced, and the mail is
refused (``MailRejected``): reading it again would do the same.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from channels.email.parse import InboundMail, MailRejected, parse
from channels.email.postmark import parse_postmark

log = logging.getLogger(__name__)

PARSE_SECONDS = 60.0  # a 40 MB mail takes about 2 s


class Parser:
    def __init__(self, *, processes: int, max_text_chars: int) -> None:
        self.processes = processes
        self.max_text_chars = max_text_chars
        self._pool: Executor | None = None
        self._slots = asyncio.Semaphore(max(processes, 1))

    async def parse(self, raw: bytes, *, postmark: bool = False) -> InboundMail:
        """The mail ``raw`` holds (``postmark``: Postmark's JSON describing it); MailRejected
        if it cannot be read (in time)."""
        read = parse_postmark if postmark else parse
        work = functools.partial(read, raw, max_text_chars=self.max_text_chars)
        async with self._slots:
            try:
                return await self._run(work)
            except BrokenProcessPool:
                pass  # a worker died: on this mail, or on another one while this one waited
            try:
                return await self._run(work)
            except BrokenProcessPool:
                raise MailRejected("the process reading it died") from None

    async def _run(self, work: functools.partial[InboundMail]) -> InboundMail:
        pool = self._executor()
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(pool, work), PARSE_SECONDS
            )
        except TimeoutError:
            self._replace(pool)
            raise MailRejected(f"reading it took over {PARSE_SECONDS:.0f} s") from None
        except BrokenProcessPool:
            self._replace(pool)
            raise

    def _executor(self) -> Executor:
        if self._pool is None:
            if self.processes:
                # spawn: a fresh interpreter, never a fork of this threaded process.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
            else:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="email-parse")
        return self._pool

    def _replace(self, pool: Executor) -> None:
        if self._pool is not pool:
            return
        self._pool = None
        if isinstance(pool, ProcessPoolExecutor):
            # The pool cannot stop a running task; its processes can be ended. (Python 3.14
            # adds ProcessPoolExecutor.kill_workers for this.)
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        log.warning("email: the parse pool was replaced")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
