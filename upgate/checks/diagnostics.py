"""What an operator looks at when a gate fails: sessions, locks, connection headroom, logs, port owners.

    >>> with psycopg.connect(url) as conn:                                  # doctest: +SKIP
    ...     lock_waits(conn).summary
    'lock waits: 1 session waiting (pid 4242 waits 3.1 s for AccessExclusiveLock on episodic_logs, blocked by 4240)'
    >>> port_owners([8080]).evidence["ports"]["8080"][0]["name"]            # doctest: +SKIP
    'python3'

Each function reads one source and returns what it found; `ok` is False when it found something an
operator should act on (a long transaction, a session waiting on a lock, little connection headroom).
The guide's troubleshooting section, as functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

_QUERY_CHARS = 200


def long_transactions(conn: psycopg.Connection, min_seconds: float = 30.0) -> CheckResult:
    """Sessions (other than this one) whose transaction has been open for at least `min_seconds`.

    upgate's own baseline-snapshot holder (application_name upgate-live, upgate/core/live.py) is left out.
    """
    rows = conn.execute(
        """SELECT pid, usename, application_name, state, wait_event_type, wait_event,
                  extract(epoch FROM now() - xact_start)::float8 AS xact_s, left(query, %s)
             FROM pg_stat_activity
            WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND application_name <> 'upgate-live'
              AND now() - xact_start >= make_interval(secs => %s)
            ORDER BY xact_start""",
        (_QUERY_CHARS, min_seconds),
    ).fetchall()
    sessions = [
        {"pid": r[0], "user": r[1], "application": r[2], "state": r[3], "wait_event_type": r[4], "wait_event": r[5],
         "transaction_s": round(float(r[6]), 1), "query": redact(" ".join(str(r[7] or "").split()))}
        for r in rows
    ]
    evidence = {"min_seconds": min_seconds, "sessions": sessions}
    if not sessions:
        return CheckResult(True, f"long transactions: none open for {min_seconds:g} s or more", evidence)
    shown = ", ".join(f"pid {s['pid']} ({s['state']}, {s['transaction_s']:.0f} s: {s['query'][:60]})"
                      for s in sessions[:3])
    return CheckResult(False, f"long transactions: {len(sessions)} open for {min_seconds:g} s or more: {shown}",
                       evidence)


def lock_waits(conn: psycopg.Connection) -> CheckResult:
    """Sessions waiting for a lock, with what they wait for and which pids block them."""
    rows = conn.execute(
        """SELECT a.pid, l.mode, l.locktype, l.relation::regclass::text,
                  extract(epoch FROM now() - a.state_change)::float8, pg_blocking_pids(a.pid), left(a.query, %s)
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE NOT l.granted
            ORDER BY a.state_change""",
        (_QUERY_CHARS,),
    ).fetchall()
    waits = [
        {"pid": r[0], "mode": r[1], "locktype": r[2], "relation": r[3], "waiting_s": round(float(r[4] or 0), 1),
         "blocked_by": list(r[5] or []), "query": redact(" ".join(str(r[6] or "").split()))}
        for r in rows
    ]
    evidence = {"waits": waits}
    if not waits:
        return CheckResult(True, "lock waits: no session is waiting for a lock", evidence)
    shown = ", ".join(f"pid {w['pid']} waits {w['waiting_s']:.1f} s for {w['mode']} on {w['relation'] or w['locktype']}"
                      f", blocked by {', '.join(map(str, w['blocked_by'])) or '?'}" for w in waits[:3])
    return CheckResult(False, f"lock waits: {len(waits)} session(s) waiting ({shown})", evidence)


def connection_headroom(conn: psycopg.Connection, min_free_fraction: float = 0.1) -> CheckResult:
    """Connections in use against max_connections less the superuser reserve, by state."""
    limits = conn.execute(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
    ).fetchone()
    assert limits is not None
    max_connections, reserved = int(limits[0]), int(limits[1])
    rows = conn.execute(
        "SELECT coalesce(state, backend_type), count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' GROUP BY 1").fetchall()
    by_state: dict[str, int] = {str(state): int(n) for state, n in rows}
    used = sum(by_state.values())
    usable = max(max_connections - reserved, 1)
    free = usable - used
    evidence = {"max_connections": max_connections, "superuser_reserved": reserved, "in_use": used,
                "free": free, "by_state": by_state}
    summary = f"connections: {used} of {usable} usable in use ({free} free; max_connections {max_connections})"
    if free < usable * min_free_fraction:
        return CheckResult(False, summary + f": under {min_free_fraction:.0%} headroom", evidence)
    return CheckResult(True, summary, evidence)


def tail_logs(paths: Sequence[Path], lines: int = 40) -> CheckResult:
    """The last `lines` lines of each log file (secrets redacted); a missing file is noted, not an error."""
    tails: dict[str, list[str]] = {}
    missing = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 256 * lines))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            missing.append(str(path))
            continue
        tails[str(path)] = [redact(line) for line in text.splitlines()[-lines:]]
    evidence = {"tails": tails, "missing": missing}
    if not tails:
        return CheckResult(True, f"logs: no log file to read ({len(missing)} missing)", evidence)
    last = {Path(p).name: (t[-1][:100] if t else "(empty)") for p, t in tails.items()}
    shown = "; ".join(f"{name}: {line}" for name, line in list(last.items())[:3])
    return CheckResult(True, f"logs: last {lines} lines of {len(tails)} file(s); {shown}", evidence)


def port_owners(ports: Sequence[int]) -> CheckResult:
    """Which local process listens on each port (psutil); a port nobody listens on is reported as such."""
    import psutil

    owners: dict[str, list[dict[str, Any]]] = {str(p): [] for p in ports}
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError) as exc:
        return CheckResult(False, f"port owners: cannot list sockets ({exc})", {"ports": list(ports)})
    for c in connections:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port not in ports:
            continue
        owner: dict[str, Any] = {"pid": c.pid, "address": f"{c.laddr.ip}:{c.laddr.port}"}
        if c.pid:
            try:
                proc = psutil.Process(c.pid)
                owner.update(name=proc.name(), cmdline=redact(" ".join(proc.cmdline()))[:300])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        owners[str(c.laddr.port)].append(owner)
    free = [p for p, o in owners.items() if not o]
    shown = ", ".join(f"{p}: {o[0].get('name', '?')} (pid {o[0]['pid']})" if o else f"{p}: nobody" for p, o in owners.items())
    return CheckResult(True, f"port owners: {shown}", {"ports": owners, "nobody_listening": free})


def failed_gates(results_files: Sequence[Path]) -> CheckResult:
    """The failed and errored gates recorded in `gates-<phase>.json` files: the context of this diagnosis."""
    failures = []
    for path in results_files:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for gate in data.get("gates", []):
            if gate.get("outcome") in ("failed", "error"):
                failures.append({"phase": data.get("phase"), "gate": gate.get("nodeid"), "message": gate.get("message")})
    if not failures:
        return CheckResult(True, "failed gates: none recorded in this run", {"failures": []})
    shown = "; ".join(f"{f['phase']}: {str(f['gate']).split('::')[-1]}" for f in failures[:5])
    return CheckResult(True, f"failed gates: {len(failures)} ({shown})", {"failures": failures})
