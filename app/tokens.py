"""Named, scoped API tokens, stored hashed.

``API_TOKENS`` is a JSON list of ``{"name": …, "scopes": […], "sha256": …}``: the token
itself is never configured, only its SHA-256 (tokens are 32 random bytes, so a plain digest
is enough; ``relaybot tokens create`` makes one and prints both). ``API_TOKEN``, the single
token of earlier versions, stays as the ``admin`` token. With neither set the API is open on
loopback, as the ``anonymous`` principal with every scope.

Scopes: ``read`` (GET threads), ``launch`` (start threads), ``respond`` (answer a question,
cancel one's own request), ``approve:<agent>`` or ``approve:*`` (decide that agent's
approvals: the token becomes one of its approvers), ``admin`` (every scope but approve).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.errors import ConfigError

SCOPES = ("read", "launch", "respond", "admin")
ADMIN_SCOPES = frozenset({"read", "launch", "respond", "admin"})


@dataclass(frozen=True)
class ApiToken:
    name: str
    scopes: frozenset[str]
    sha256: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ("admin" in self.scopes and not scope.startswith("approve"))

    def approves(self, agent: str) -> bool:
        return f"approve:{agent}" in self.scopes or "approve:*" in self.scopes


ANONYMOUS = ApiToken("anonymous", ADMIN_SCOPES | {"approve:*"}, "")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return "rb_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiTokens:
    """Every token the API accepts; ``open``: none configured, the API is anonymous."""

    tokens: tuple[ApiToken, ...] = ()

    @property
    def open(self) -> bool:
        return not self.tokens

    def find(self, given: str) -> ApiToken | None:
        """The token whose digest matches ``given``, compared in constant time."""
        if self.open:
            return ANONYMOUS
        found = None
        theirs = digest(given)
        for token in self.tokens:
            if hmac.compare_digest(theirs, token.sha256):
                found = token
        return found

    def approvers(self, agents: Iterable[str]) -> dict[str, list[str]]:
        """agent -> the names of the tokens that may decide its approvals."""
        return {
            agent: names
            for agent in agents
            if (names := [t.name for t in self.tokens if t.approves(agent)])
        }


def read_tokens(admin: str | None, listed: str) -> ApiTokens:
    """``API_TOKEN`` (the admin token, in clear) and ``API_TOKENS`` (JSON, hashed)."""
    tokens: list[ApiToken] = []
    if admin:
        tokens.append(ApiToken("admin", ADMIN_SCOPES, digest(admin)))
    if listed.strip():
        try:
            entries = json.loads(listed)
        except ValueError as exc:
            raise ConfigError("API_TOKENS", f"not JSON: {exc}") from None
        if not isinstance(entries, list):
            raise ConfigError("API_TOKENS", "must be a JSON list of tokens")
        tokens += [_entry(e) for e in entries]
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigError("API_TOKENS", f"token names must differ: {sorted(names)}")
    return ApiTokens(tuple(tokens))


def _entry(entry: object) -> ApiToken:
    if not isinstance(entry, Mapping):
        raise ConfigError("API_TOKENS", f"{entry!r} is not an object with name, scopes, sha256")
    name, scopes, hashed = entry.get("name"), entry.get("scopes"), entry.get("sha256")
    if not isinstance(name, str) or not name.strip() or name in ("admin", "anonymous"):
        raise ConfigError("API_TOKENS", f"{name!r} is not a token name")
    if not isinstance(hashed, str) or len(hashed) != 64 or not _hex(hashed):
        raise ConfigError("API_TOKENS", f"{name}: sha256 must be 64 hex digits")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ConfigError("API_TOKENS", f"{name}: scopes must be a list of strings")
    for scope in scopes:
        if scope not in SCOPES and not (scope.startswith("approve:") and len(scope) > 8):
            raise ConfigError("API_TOKENS", f"{name}: unknown scope {scope!r}")
    return ApiToken(name.strip(), frozenset(scopes), hashed.lower())


def _hex(value: str) -> bool:
    try:
        int(value, 16)
    except ValueError:
        return False
    return True
