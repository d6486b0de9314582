"""Gate families: the part of `upgate.toml` a gate needs. Gates of an unconfigured family are not tests.

    @pytest.mark.upgate_component("monitoring.redis")       # runs only when [monitoring] redis_url is set
    def test_redis_answers(redis_url, config, evidence): ...

A gate's family is declared one way, for shipped and user gates alike: its closest `upgate_component`
marker (function, else class, else the module's `pytestmark`) names every family it needs. When one of
them is not configured the gate is deselected at collection: not run, not counted, absent from JUnit
and Allure; the family is listed once as "not gated" with what to configure (terminal summary,
`gates-<phase>.json`, `summary.json`, Allure environment). The first name is the gate's Allure story.
A configured gate that cannot run still fails, and a gate skipped for a reason found at run time
still says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from upgate.config import Config

MARKER = "upgate_component"


@dataclass(frozen=True)
class Family:
    name: str
    configure: str  # what to set in upgate.toml (or the environment) to gate it
    configured: Callable[[Config], bool]


def _compat(c: Config, test: Callable[..., bool]) -> bool:
    return c.compat is not None and test(c.compat)


def _hosts_with(what: str) -> Callable[[Config], bool]:
    return lambda c: any(getattr(h, what) not in (None, []) for h in c.hosts)


def _families() -> dict[str, Family]:
    found = [
        Family("database", "[database] url or DATABASE_URL", lambda c: c.database.url is not None),
        Family("app", "[app] base_url or UPGATE_APP_URL", lambda c: c.app is not None),
        Family("migrate", "[migrate]", lambda c: c.migrate is not None),
        Family("migrate.lint", "[migrate] kind = \"sql\" with migration_safety.squawk = true",
               lambda c: c.migrate is not None and c.migrate.kind == "sql" and c.migration_safety.squawk),
        Family("deploy", "[deploy]", lambda c: c.deploy is not None),
        Family("resources", "always gated", lambda c: True),
        Family("diagnostics", "[diagnostics] enabled", lambda c: c.diagnostics.enabled),
        Family("contract", "[contract] endpoints", lambda c: c.contract is not None),
        Family("compat", "[compat]", lambda c: c.compat is not None),
        Family("compat.constraints", "compat.requirements or compat.constraints",
               lambda c: _compat(c, lambda x: bool(x.requirements or x.constraints))),
        Family("compat.candidate", "compat.candidate", lambda c: _compat(c, lambda x: bool(x.candidate))),
        Family("compat.pip_check", "compat.python, requirements, constraints or candidate (and pip_check = true)",
               lambda c: _compat(c, lambda x: x.pip_check and bool(x.python or x.requirements or x.constraints
                                                                    or x.candidate))),
        Family("compat.postgres", "compat.postgres", lambda c: _compat(c, lambda x: bool(x.postgres))),
        Family("compat.app_config", "[[compat.app_config]]", lambda c: _compat(c, lambda x: bool(x.app_config))),
        Family("monitoring", "[monitoring] or REDIS_URL / MONITORING_URL", lambda c: c.monitoring is not None),
        Family("monitoring.redis", "[monitoring] redis_url or REDIS_URL",
               lambda c: c.monitoring is not None and bool(c.monitoring.redis_url)),
        Family("monitoring.prometheus", "[monitoring] prometheus_url or MONITORING_URL",
               lambda c: c.monitoring is not None and bool(c.monitoring.prometheus_url)),
        Family("monitoring.metrics", "[monitoring] required_metrics",
               lambda c: c.monitoring is not None and bool(c.monitoring.required_metrics)),
        Family("hosts", "[[hosts]]", lambda c: bool(c.hosts)),
        Family("performance", "[performance]", lambda c: c.performance is not None),
        Family("performance.process", "[performance] pidfile or [deploy] pidfile",
               lambda c: c.performance is not None and bool(c.performance.pidfile or (c.deploy and c.deploy.pidfile))),
        Family("models", "[[models]] with a path and/or an endpoint", lambda c: bool(c.models)),
        Family("models.local", "[[models]] path", lambda c: any(m.path is not None for m in c.models)),
        Family("models.endpoint", "[[models]] endpoint (or its <NAME>_URL variable)",
               lambda c: any(m.endpoint is not None for m in c.models)),
        Family("models.reference_text", "[[models]] reference_text",
               lambda c: any(m.reference_text is not None for m in c.models)),
        Family("model_upgrade", "[model_upgrade]", lambda c: c.model_upgrade is not None),
        Family("packages", "[packages]", lambda c: c.packages is not None),
        Family("config", "[config] (the app's config files as an upgrade step)", lambda c: c.config_files is not None),
        Family("containers", "[deploy] kind = \"docker\" or \"compose\"",
               lambda c: c.deploy is not None and c.deploy.kind in ("docker", "compose")),
        Family("kubernetes", "[kubernetes]", lambda c: c.kubernetes is not None),
    ]
    for what in ("services", "processes", "ports", "mounts", "files", "packages", "min_free_memory_mb"):
        found.append(Family(f"hosts.{what}", f"[[hosts]] {what}", _hosts_with(what)))
    return {f.name: f for f in found}


FAMILIES: dict[str, Family] = _families()


class UnknownFamily(ValueError):
    pass


def check_names(names: Iterable[str], where: str) -> None:
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise UnknownFamily(f"{where}: unknown gate famil{'ies' if len(unknown) > 1 else 'y'} "
                            f"{', '.join(map(repr, unknown))} in @pytest.mark.{MARKER}(...); known: "
                            f"{', '.join(sorted(FAMILIES))}")


def unconfigured(names: Iterable[str], config: Config) -> list[str]:
    """The families among `names` that `config` does not configure; a sub-family gives way to its parent
    ("compat" rather than "compat.postgres" when there is no [compat] at all)."""
    out: list[str] = []
    for name in names:
        family = FAMILIES[name]
        if family.configured(config):
            continue
        parent = name.rsplit(".", 1)[0]
        shown = parent if parent != name and parent in FAMILIES and not FAMILIES[parent].configured(config) else name
        if shown not in out:
            out.append(shown)
    return out
