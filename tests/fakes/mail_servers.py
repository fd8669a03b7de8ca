"""Real mail servers on loopback for the email-channel tests.

- ``Dovecot``: Debian's Dovecot (``dovecot-imapd``, installed by ``scripts/test``) run in the
  foreground as a child process with a throwaway configuration in a temporary directory:
  plain IMAP (no TLS) on 127.0.0.1 and a free port, users from a passwd-file with plain-text
  passwords, Maildir storage. It never touches ``/etc/dovecot`` or the system service.
- ``SmtpSink``: an aiosmtpd ``Controller`` (its own thread and loop) on 127.0.0.1 and a free
  port, optionally requiring AUTH PLAIN/LOGIN, recording every message it accepts.

Fixtures ``dovecot`` and ``smtp_sink`` are at the bottom; import them into ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import grp
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

import aioimaplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _imap_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# Dovecot (IMAP)
# --------------------------------------------------------------------------------------------


class DovecotError(RuntimeError):
    pass


class Dovecot:
    """A private Dovecot IMAP server.

    Users can be added before or after ``start()`` (see ``add_user``). A user's INBOX is
    created on first login; other mailboxes with ``create_mailbox``.

    As root, Dovecot refuses mail access as uid 0, so mail is stored as the ``dovecot`` system
    user (login processes run as ``dovenull``), both created by the Debian package. As any
    other user, every process runs as that user.
    """

    host = HOST

    def __init__(
        self,
        users: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        idle_check_interval: int = 1,
    ) -> None:
        self.idle_check_interval = idle_check_interval
        self.port = 0
        self.dir: Path | None = None
        self.users: dict[str, str] = {}
        for name, password in users.items() if isinstance(users, Mapping) else users:
            self.add_user(name, password)
        self.start_seconds = 0.0  # how long the last start() took
        self._proc: subprocess.Popen[bytes] | None = None

    # -- configuration ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        assert self.dir is not None, "Dovecot not started"
        return self.dir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "Dovecot not started"
        return self.dir / "dovecot.log"

    def log(self) -> str:
        """Dovecot's log so far (everything, info included), for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except (AssertionError, FileNotFoundError):
            return ""

    def maildir(self, user: str) -> Path:
        assert self.dir is not None, "Dovecot not started"
        return self.dir / "mail" / user

    def add_user(self, name: str, password: str) -> None:
        """Add a user (or change a password), before or after ``start()``.

        Each user has a passwd-file of their own (``users/<name>``): Dovecot re-reads a
        passwd-file at most once a second, so one shared file would hide a user added in the
        same second as the last login. A changed password of an existing user can still take up
        to a second to be seen.
        """
        if not re.fullmatch(r"[A-Za-z0-9._@+-]+", name) or name.startswith("."):
            raise ValueError(f"unsupported user name {name!r}")
        if any(c in password for c in "\n\r:"):
            raise ValueError("passwords may not contain ':' or newlines")
        self.users[name] = password
        if self.dir is not None:
            self._write_user(name)

    def _write_user(self, name: str) -> None:
        assert self.dir is not None
        path = self.dir / "users" / name
        tmp = path.with_name(f".{name}.tmp")
        # name:{PLAIN}password:uid:gid:gecos:home:shell:extra — only the password is used.
        tmp.write_text(f"{name}:{{PLAIN}}{self.users[name]}::::::\n")
        tmp.chmod(0o644)  # read by the auth process, which runs as the internal user
        if path.exists():  # Dovecot reloads on a changed mtime (whole seconds) or size
            old = path.stat().st_mtime
            os.utime(tmp, (old + 1, old + 1))
        tmp.replace(path)

    def _config(self) -> str:
        assert self.dir is not None
        d = self.dir
        if os.geteuid() == 0:
            # Dovecot will not run login processes nor touch mail as root.
            mail_user = "dovecot"
            users = (
                "default_login_user = dovenull\n"
                "default_internal_user = dovecot\n"
                "default_internal_group = dovecot\n"
            )
            chroot = ""
        else:
            me = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            mail_user = me
            users = (
                f"default_login_user = {me}\n"
                f"default_internal_user = {me}\n"
                f"default_internal_group = {group}\n"
            )
            chroot = "  chroot =\n"  # chroot needs root
        pw = pwd.getpwnam(mail_user)
        return f"""\
# Throwaway configuration written by tests/fakes/mail_servers.py
protocols = imap
listen = {HOST}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
{users}mail_uid = {pw.pw_uid}
mail_gid = {pw.pw_gid}
first_valid_uid = {pw.pw_uid}
first_valid_gid = 1
mail_location = maildir:{d}/mail/%u
# IDLE: inotify wakes IDLE at once; this is the fallback poll, and the keep-alive is rare.
mailbox_idle_check_interval = {self.idle_check_interval} secs
imap_idle_notify_interval = 2 mins
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users/%u
}}
userdb {{
  driver = static
  args = home={d}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
{chroot}}}
"""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Dovecot:
        if not os.access(DOVECOT, os.X_OK):
            raise DovecotError(f"{DOVECOT} is missing: run scripts/test (installs dovecot-imapd)")
        assert self._proc is None, "already started"
        began = time.monotonic()
        # A short path: Dovecot's unix sockets live under base_dir (108-byte limit).
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.dir.chmod(0o755)  # the internal and mail users must reach their files
        mail = self.dir / "mail"
        mail.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("dovecot")
            os.chown(mail, pw.pw_uid, pw.pw_gid)
        (self.dir / "users").mkdir()
        for name in self.users:
            self._write_user(name)
        last_error = ""
        for _ in range(5):  # the free port can be taken between our check and Dovecot's bind
            self.port = free_port()
            self.config_path.write_text(self._config())
            self._proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C in the terminal goes to pytest only
            )
            try:
                self._wait_ready(began + timeout)
            except DovecotError as e:
                last_error = str(e)
                self._terminate()
                if "Address already in use" in last_error:
                    continue
                break
            self.start_seconds = time.monotonic() - began
            return self
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        raise DovecotError(last_error)

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise DovecotError(
                    f"dovecot exited with {self._proc.returncode}: {err}{self.log()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    if s.recv(200).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot did not answer on port {self.port}: {self.log()}")
            time.sleep(0.005)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # The whole process group at once: a SIGTERM to the master alone takes 1-2 s while
            # it waits for its children to go. Even so the master sometimes sleeps for 1-5 s in
            # its shutdown; nothing here is worth keeping, so it is killed after a moment.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(0.3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.stderr:
            proc.stderr.close()

    def stop(self) -> None:
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Dovecot:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- administration -----------------------------------------------------------------------

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOVEADM, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def kick(self, user: str) -> None:
        """Drop every IMAP connection of ``user`` (the server says BYE and closes)."""
        result = self.doveadm("kick", user)
        # doveadm exits 68 (EX_NOUSER) when the user had no connection.
        if result.returncode not in (0, 68):
            raise DovecotError(f"doveadm kick failed: {result.stderr}{result.stdout}")

    def connections(self, user: str | None = None) -> int:
        """How many IMAP sessions are logged in (of ``user``, or of everybody)."""
        result = self.doveadm("who", "-1", *([user] if user else []))
        if result.returncode not in (0, 68):
            raise DovecotError(f"doveadm who failed: {result.stderr}{result.stdout}")
        return sum(1 for line in result.stdout.splitlines()[1:] if line.strip())

    # -- IMAP helpers -------------------------------------------------------------------------

    async def client(
        self,
        user: str,
        password: str,
        timeout: float = 10.0,  # noqa: ASYNC109  (aioimaplib's own per-command timeout)
    ) -> aioimaplib.IMAP4:
        """A logged-in aioimaplib client; ``logout()`` it when done."""
        imap = aioimaplib.IMAP4(host=self.host, port=self.port, timeout=timeout)
        await imap.wait_hello_from_server()
        response = await imap.login(user, password)
        if response.result != "OK":
            await imap.logout()
            raise DovecotError(f"LOGIN {user} failed: {response.lines}")
        return imap

    async def create_mailbox(self, user: str, password: str, mailbox: str) -> None:
        imap = await self.client(user, password)
        try:
            response = await imap.create(_imap_quote(mailbox))
            if response.result != "OK" and b"ALREADYEXISTS" not in b"".join(response.lines):
                raise DovecotError(f"CREATE {mailbox} failed: {response.lines}")
        finally:
            await imap.logout()

    async def append(
        self,
        user: str,
        password: str,
        raw: bytes,
        mailbox: str = "INBOX",
        flags: Iterable[str] | None = None,
    ) -> int | None:
        """APPEND a message over IMAP; returns its UID (from APPENDUID)."""
        imap = await self.client(user, password)
        try:
            response = await imap.append(
                raw,
                mailbox=_imap_quote(mailbox),
                flags=f"({' '.join(flags)})" if flags is not None else None,
            )
            if response.result != "OK":
                raise DovecotError(f"APPEND to {mailbox} failed: {response.lines}")
            m = re.search(rb"\[APPENDUID \d+ (\d+)\]", b" ".join(bytes(x) for x in response.lines))
            return int(m.group(1)) if m else None
        finally:
            await imap.logout()

    async def fetch_all(
        self, user: str, password: str, mailbox: str = "INBOX"
    ) -> list[tuple[int, set[str], bytes]]:
        """Every message of ``mailbox`` as (uid, flags, raw), by UID; ``\\Recent`` is left out."""
        imap = await self.client(user, password)
        try:
            # SELECT, not EXAMINE: aioimaplib allows UID FETCH only after SELECT. BODY.PEEK
            # leaves \\Seen alone.
            response = await imap.select(_imap_quote(mailbox))
            if response.result != "OK":
                raise DovecotError(f"SELECT {mailbox} failed: {response.lines}")
            response = await imap.uid("fetch", "1:*", "(UID FLAGS BODY.PEEK[])")
            if response.result != "OK":
                raise DovecotError(f"UID FETCH failed: {response.lines}")
            return _parse_fetch(response.lines)
        finally:
            await imap.logout()


_FETCH_HEAD = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


def _parse_fetch(lines: list[Any]) -> list[tuple[int, set[str], bytes]]:
    out: list[tuple[int, set[str], bytes]] = []
    i = 0
    while i < len(lines):
        line = bytes(lines[i])
        if _FETCH_HEAD.match(line) and line.endswith(b"}") and i + 1 < len(lines):
            raw = bytes(lines[i + 1])
            meta = line + (bytes(lines[i + 2]) if i + 2 < len(lines) else b"")
            uid = _UID.search(meta)
            flags = _FLAGS.search(meta)
            assert uid is not None, meta
            names = set(flags.group(1).decode().split()) if flags else set()
            out.append((int(uid.group(1)), names - {"\\Recent"}, raw))
            i += 3
        else:
            i += 1
    return sorted(out, key=lambda t: t[0])


# --------------------------------------------------------------------------------------------
# SMTP sink
# --------------------------------------------------------------------------------------------


class _DropLoginDataNotice(logging.Filter):
    # aiosmtpd itself sets the deprecated Session.login_data on every successful AUTH and logs
    # a warning about it (a log record, not a Python warning).
    def filter(self, record: logging.LogRecord) -> bool:
        return "Session.login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_DropLoginDataNotice())


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    login: str | None  # the AUTH user, if the client authenticated

    @property
    def envelope(self) -> tuple[str, list[str], bytes]:
        return (self.mail_from, self.rcpt_tos, self.raw)


@dataclass
class _Waiter:
    count: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass
class _Handler:
    sink: SmtpSink

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # AUTH is enforced here rather than with aiosmtpd's auth_required=True, which warns
        # (UserWarning) when TLS is not required as well.
        if self.sink.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self.sink._received(session, envelope)


class SmtpSink:
    """An SMTP server that accepts (or, on demand, refuses) and records every message."""

    host = HOST

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.username = username
        self.password = password
        self.messages: list[ReceivedMail] = []
        # Replies to give to the next DATA commands instead of accepting, e.g.
        # "451 4.3.0 try again later" or "550 5.1.1 no such user"; refused mail is not recorded.
        self.responses: deque[str] = deque()
        self.auth_failures = 0
        self.port = 0
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._controller: Controller | None = None

    @property
    def received(self) -> list[tuple[str, list[str], bytes]]:
        return [m.envelope for m in self.messages]

    def start(self) -> SmtpSink:
        assert self._controller is None, "already started"
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        last: Exception | None = None
        for _ in range(5):  # the free port can be taken between our check and the bind
            self.port = free_port()
            controller = Controller(
                _Handler(self),
                hostname=HOST,
                port=self.port,
                server_hostname="smtp-sink.test",
                ready_timeout=10,
                **kwargs,
            )
            try:
                controller.start()
            except OSError as e:
                last = e
                continue
            self._controller = controller
            return self
        raise RuntimeError(f"SmtpSink could not start: {last}")

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> SmtpSink:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode(errors="replace") == self.username
            and auth_data.password.decode(errors="replace") == self.password
        )
        if not ok:
            self.auth_failures += 1
        # handled=False: aiosmtpd answers a failure itself (535); True would leave it unanswered.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    # Runs in the controller's thread.
    def _received(self, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.responses:
                return self.responses.popleft()
            raw = bytes(envelope.original_content or b"")
            message = BytesParser(policy=email.policy.default).parsebytes(raw)
            assert isinstance(message, EmailMessage)
            login = None
            if session.authenticated and isinstance(session.auth_data, LoginPassword):
                login = session.auth_data.login.decode(errors="replace")
            self.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    raw=raw,
                    message=message,
                    login=login,
                )
            )
            count = len(self.messages)
            ready = [w for w in self._waiters if w.count <= count]
            self._waiters = [w for w in self._waiters if w.count > count]
        for w in ready:
            w.loop.call_soon_threadsafe(_resolve, w.future)
        return "250 2.0.0 OK queued"

    async def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[ReceivedMail]:
        """Wait until at least ``count`` messages have arrived in total; returns them all."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self.messages) >= count:
                return list(self.messages)
            waiter = _Waiter(count, loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            raise AssertionError(
                f"expected {count} message(s) within {timeout}s, got {len(self.messages)}"
            ) from None
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return list(self.messages)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def dovecot() -> AsyncIterator[Dovecot]:
    """A fresh Dovecot per test, with the user ``bot`` / ``secret`` (add more with add_user)."""
    server = Dovecot({"bot": "secret"})
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    """An SMTP sink that requires AUTH as ``bot`` / ``secret``."""
    sink = SmtpSink(username="bot", password="secret")
    await asyncio.to_thread(sink.start)
    try:
        yield sink
    finally:
        await asyncio.to_thread(sink.stop)
