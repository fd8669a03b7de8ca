"""Loading ``module:attribute`` references named in settings (EXTRA_AGENTS, LLM_FACTORY)."""

from __future__ import annotations

import importlib
from typing import Any

from app.errors import ConfigError


def load_object(variable: str, spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(variable, f"{spec!r} is not of the form module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(variable, f"cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(variable, f"{module_name} has no {attribute}") from None
