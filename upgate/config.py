"""The one place that reads `upgate.toml` and environment variables into a typed model.

    >>> cfg = load_config("upgate.toml")          # doctest: +SKIP
    >>> cfg.database.url                          # DATABASE_URL wins over the file

Unknown keys and wrong types raise `ConfigError` naming the file, the line and the key.
Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from upgate.errors import ConfigError

if TYPE_CHECKING:
    from upgate.checks.perf import LatencyPolicy

DEFAULT_NAME = "upgate.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(Section):
    name: str
    from_version: str | None = None
    to_version: str | None = None


class DatabaseConfig(Section):
    url: str | None = None
    # Folder holding pg_dump / pg_restore / psql matching the server's major version.
    # Empty: the pgserver wheel's binaries when installed, else PATH.
    bin_dir: Path | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)


class AppConfig(Section):
    base_url: str
    health_path: str = "/health"
    # Unset: the health path (an app without a separate readiness endpoint).
    ready_path: str = "/health"
    metrics_path: str = "/metrics"
    timeout_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _ready_defaults_to_health(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ready_path" not in data and "health_path" in data:
            return {**data, "ready_path": data["health_path"]}
        return data

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class MigrateConfig(Section):
    """How the database is migrated: SQL files, the application's own command, or Alembic.

    A migration without a down (a SQL file without its .down.sql, a command without `down`) is
    allowed: the plan says its rollback is the restore of the verified backup.
    """

    kind: Literal["sql", "command", "alembic"] = "sql"
    # sql: folder of `NNN_name.up.sql` files, each with an optional `NNN_name.down.sql`.
    directory: Path | None = None
    # command: the application's own tool, as argv: `up` migrates, `down` (optional) undoes it.
    # "{database_url}" in argv and env is replaced by the database it runs against (the rehearsal
    # clone, then the live database); prefer env: argv is visible in the process list.
    up: list[str] = []
    down: list[str] = []
    env: dict[str, str] = {}
    workdir: Path | None = None
    timeout_s: float = Field(default=3600.0, gt=0)
    # alembic: `alembic -c <alembic_ini> upgrade head`; down is a downgrade to the revision recorded before.
    alembic_ini: Path | None = None
    alembic: list[str] = ["alembic"]
    # Every kind: lock_timeout for the migration's sessions (SET LOCAL for sql, PGOPTIONS for tools) and
    # a bounded retry when it is hit (a tool's output naming "lock timeout" or SQLSTATE 55P03).
    lock_timeout_ms: int = Field(default=1000, gt=0, le=1000)
    retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # Destructive schema changes the plan accepts, by name: "table" or "table.column".
    allow_destructive: list[str] = []
    # Tables whose rows the rehearsal copies into its clone (up to migration_safety.sample_rows each);
    # empty: the tables the SQL names (sql), every table (command, alembic).
    sample_tables: list[str] = []

    @model_validator(mode="after")
    def _complete(self) -> MigrateConfig:
        if self.kind == "sql" and self.directory is None:
            raise ValueError("migrate.kind = 'sql' needs migrate.directory (the folder of NNN_name.up.sql files)")
        if self.kind == "command" and not self.up:
            raise ValueError("migrate.kind = 'command' needs migrate.up (the migration command, as a list of "
                             "arguments)")
        if self.kind == "alembic" and self.alembic_ini is None:
            raise ValueError("migrate.kind = 'alembic' needs migrate.alembic_ini (the project's alembic.ini)")
        return self


class DeployConfig(Section):
    kind: Literal["process", "command", "docker", "compose", "kubernetes"] = "process"
    # process: the pidfile of the running service, the command that starts the new version
    # and the command that starts the previous one again (used by rollback).
    # command: optional; the served process, watched so that a crash fails the deploy at once.
    pidfile: Path | None = None
    start: list[str] = []
    previous: list[str] = []
    workdir: Path | None = None
    env: dict[str, str] = {}
    ready_timeout_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)
    # command: shell commands run as they are; stop_command (optional) stops the new version before
    # the database is undone, rollback_command then starts the previous one.
    deploy_command: str | None = None
    rollback_command: str | None = None
    stop_command: str | None = None
    # The port the app's processes listen on; empty: the port of [app] base_url.
    port: int | None = Field(default=None, gt=0, le=65535)
    # Readiness must come from the new process: the listener on the port must belong to it. False where a
    # proxy that outlives deploys holds the port (then prove the version with version_url).
    check_listener: bool = True
    # A URL whose body names the running version, and the versions to expect after deploy and rollback:
    # the proof of who answers where the listener's owner cannot be read.
    version_url: str | None = None
    expect_version: str | None = None
    previous_version: str | None = None
    # docker, compose, kubernetes: the candidate image (a tag or an image id).
    image: str | None = None
    # docker: the live container's name; compose: the compose service; kubernetes: the pod template's
    # container (empty: the first one).
    container: str | None = None
    # docker, compose: the port inside the container that the live one publishes (empty: its only one),
    # and the host port the candidate's preview publishes (0: a free one).
    container_port: int | None = Field(default=None, gt=0, le=65535)
    preview_port: int = Field(default=0, ge=0, le=65535)
    preview_host: str = "127.0.0.1"
    # compose: the project's files, its name (empty: the first file's folder name) and the CLI
    # (empty: `docker compose` when the plugin answers, else `docker-compose`).
    compose_files: list[Path] = []
    project: str | None = None
    compose_command: list[str] = []
    # kubernetes: "rolling" patches the Deployment; "blue-green" starts a green Deployment beside it
    # ([kubernetes] says which Deployment, Service and preview Service).
    strategy: Literal["rolling", "blue-green"] = "rolling"

    @model_validator(mode="after")
    def _complete(self) -> DeployConfig:
        if self.kind == "process":
            missing = [k for k in ("pidfile", "start", "previous") if not getattr(self, k)]
            if missing:
                raise ValueError(f"deploy.kind = 'process' needs {', '.join('deploy.' + m for m in missing)}")
        if self.kind == "command" and not (self.deploy_command and self.rollback_command):
            raise ValueError("deploy.kind = 'command' needs deploy.deploy_command and deploy.rollback_command")
        if self.kind in ("docker", "compose", "kubernetes") and not self.image:
            raise ValueError(f"deploy.kind = '{self.kind}' needs deploy.image (the candidate image)")
        if self.kind == "docker" and not self.container:
            raise ValueError("deploy.kind = 'docker' needs deploy.container (the live container's name)")
        if self.kind == "compose" and not (self.compose_files and self.container):
            raise ValueError("deploy.kind = 'compose' needs deploy.compose_files and deploy.container (the "
                             "compose service to upgrade)")
        return self


class NodeUpgradeConfig(Section):
    """Upgrade one Kubernetes node: cordon, drain through the Eviction API, run `command`, uncordon, Ready."""

    node: str
    # The node's upgrade, as argv run here (e.g. ["ssh", "node-1", "sudo apt-get upgrade -y"]).
    command: list[str]
    env: dict[str, str] = {}
    # Pods of DaemonSets stay (their controller would put them back), as `kubectl drain --ignore-daemonsets`.
    ignore_daemonsets: bool = True
    drain_timeout_s: float = Field(default=120.0, gt=0)
    # Before anything is cordoned: how long an eviction refused by a PodDisruptionBudget may stay refused
    # (dry-run) before the run is blocked, naming the pods.
    precheck_timeout_s: float = Field(default=10.0, ge=0)
    command_timeout_s: float = Field(default=1800.0, gt=0)
    ready_timeout_s: float = Field(default=300.0, gt=0)


class KubernetesConfig(Section):
    """Where the cluster is and what `[deploy] kind = "kubernetes"` and `[node_upgrade]` act on."""

    # Empty: KUBECONFIG / ~/.kube/config (or the in-cluster service account).
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = "default"
    # rolling: the Deployment patched; blue-green: the one the live Service selects now (blue) is found
    # by the Service's selector, this names it when there is no Service selector to go by.
    deployment: str | None = None
    service: str | None = None
    # blue-green: the Service that selects the candidate before promotion, and the URL it answers on here.
    preview_service: str | None = None
    preview_url: str | None = None
    # blue-green: the pod label whose value tells blue from green (the guide's `version: blue`).
    color_label: str = "version"
    # blue-green: seconds blue keeps running after the post-promotion gates pass, then it is scaled to 0.
    scale_down_delay_s: float = Field(default=0.0, ge=0)
    # Longest wait for a rollout when the Deployment sets no progressDeadlineSeconds of its own.
    rollout_timeout_s: float = Field(default=300.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)


class BackupConfig(Section):
    # Empty: `backup/` inside the run folder.
    directory: Path | None = None
    # 0: uncompressed (as pg_basebackup): the fastest dump and restore; the pre-gate sizes the room for it.
    # 1-9: gzip level, smaller (6x on bench/backup.py's data) but 1.5-2x slower on two cores.
    compression: int = Field(default=0, ge=0, le=9)
    verify: Literal["full", "list", "none"] = "full"
    # pg_dump -j / pg_restore -j workers (and checksum threads); 0: one per core.
    jobs: int = Field(default=0, ge=0)


class ThresholdsConfig(Section):
    max_downtime_s: float = Field(default=300.0, gt=0)
    max_rollback_s: float = Field(default=300.0, gt=0)


class IntegrityConfig(Section):
    # "all" or a list of table names (schema-qualified or in the search path).
    tables: Literal["all"] | list[str] = "all"
    # Left out of tables = "all" (glob patterns on the table name, any case): migration tools' bookkeeping,
    # which every migration rewrites. Setting `exclude` replaces this list; `extend_exclude` adds to it.
    exclude: list[str] = [
        "alembic_version",  # Alembic
        "django_migrations",  # Django
        "flyway_schema_history",  # Flyway
        "schema_migrations", "ar_internal_metadata",  # Rails, golang-migrate, dbmate
        "knex_migrations", "knex_migrations_lock",  # Knex
        "__EFMigrationsHistory",  # Entity Framework
        "goose_db_version",  # goose
        "databasechangelog", "databasechangeloglock",  # Liquibase
        "_prisma_migrations",  # Prisma
        "__diesel_schema_migrations",  # Diesel
        "_sqlx_migrations",  # sqlx
        "SequelizeMeta",  # Sequelize
        "mikro_orm_migrations",  # MikroORM
        "doctrine_migration_versions",  # Doctrine
        "phinxlog",  # Phinx
        "_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock",  # yoyo
    ]
    extend_exclude: list[str] = []
    # Key columns per table; a table not listed uses its primary key, and one without is compared as
    # a multiset of whole rows.
    keys: dict[str, list[str]] = {}
    # Columns the migration is expected to change, per table: left out of the fingerprint.
    may_change: dict[str, list[str]] = {}
    allow_added_rows: bool = True
    report_first: int = Field(default=20, gt=0)
    workers: int = Field(default=2, ge=1, le=16)

    def excluded(self) -> list[str]:
        """The patterns tables = "all" leaves out: exclude, then extend_exclude."""
        return [*self.exclude, *self.extend_exclude]


class LiveConfig(Section):
    """Live write traffic during the upgrade: how each row change is attributed (docs/live-traffic.md)."""

    # auto: logical decoding where the server allows it (wal_level = logical, a role that may create a
    # replication slot), else xmin, the plan saying which and why; decode / xmin: that one, or BLOCKED naming
    # what is missing; off: nothing captured: every change is judged as the upgrade's (nobody writes).
    attribution: Literal["auto", "decode", "xmin", "off"] = "auto"
    # application_name of the upgrade's own sessions (upgate's SQL migrations; PGAPPNAME for command tools).
    upgrade_applications: list[str] = ["upgate-migrate"]
    # Installing and removing the statement triggers waits at most this long for a table lock, then retries.
    lock_timeout_ms: int = Field(default=1000, gt=0, le=10_000)
    retries: int = Field(default=10, ge=0)


class RollbackConfig(Section):
    # A full restore that cannot bring back every write live traffic committed since the baseline stops
    # before restoring (NEEDS_ATTENTION, the writes listed); true accepts losing them.
    discard_live_writes: bool = False
    # When the verification after down migrations fails on data integrity alone: put back only the damaged
    # rows (upgate/core/repair.py) before falling back to the restore. false: straight to the restore.
    repair: bool = True


class ProbeConfig(Section):
    interval_ms: int = Field(default=100, ge=10)
    timeout_ms: int = Field(default=1000, ge=10)
    # Empty: the app's ready URL.
    urls: list[str] = []


class MonitoringConfig(Section):
    # Redis that the service depends on (REDIS_URL): answers PING, reports memory and clients.
    redis_url: str | None = None
    # Prometheus server (MONITORING_URL): /-/ready answers and `prometheus_query` evaluates.
    prometheus_url: str | None = None
    prometheus_query: str = "up"
    # Metric names (family or sample names) the app's /metrics must expose.
    required_metrics: list[str] = []
    timeout_s: float = Field(default=2.0, gt=0)


class HostFileExpectation(Section):
    path: str
    mode: str | None = None  # octal, e.g. "0644"
    owner: str | None = None


class HostMountExpectation(Section):
    path: str
    min_free_gb: float = Field(default=0.0, ge=0)


class HostPackageExpectation(Section):
    name: str
    version: str | None = None  # exact, or a glob such as "16.*"


class HostConfig(Section):
    # testinfra host spec: local://, ssh://user@host, docker://container, kubectl://pod?namespace=ns
    spec: str = "local://"
    name: str | None = None
    sudo: bool = False
    services: list[str] = []  # system services that must be running
    processes: list[str] = []  # substrings of a running process's command line
    ports: list[int | str] = []  # 8080 or "tcp://127.0.0.1:8080": listening
    mounts: list[HostMountExpectation] = []
    files: list[HostFileExpectation] = []
    packages: list[HostPackageExpectation] = []
    min_free_memory_mb: float | None = Field(default=None, ge=0)

    @property
    def label(self) -> str:
        return self.name or self.spec


class ResourcesConfig(Section):
    # Free space where the backup goes >= estimated dump size x this factor.
    backup_safety_factor: float = Field(default=2.0, ge=1)
    # Dump size / database size when no earlier run measured it.
    default_dump_ratio: float = Field(default=1.0, gt=0)
    min_free_memory_mb: float = Field(default=256.0, ge=0)
    # Unset: CPU use is reported, not gated.
    max_cpu_percent: float | None = Field(default=None, gt=0, le=100)
    max_db_latency_ms: float = Field(default=250.0, gt=0)
    max_app_latency_ms: float = Field(default=1000.0, gt=0)
    latency_samples: int = Field(default=5, ge=1, le=100)
    # Rows read and copied to measure this target's throughput for the time estimate.
    sample_rows: int = Field(default=20_000, ge=100)


class DiagnosticsConfig(Section):
    # Run gates/diagnostics after any failed phase (evidence only; never changes the verdict).
    enabled: bool = True
    long_transaction_s: float = Field(default=30.0, ge=0)
    log_lines: int = Field(default=40, ge=1)
    # Extra service logs to tail, besides the run's logs/ folder.
    log_files: list[Path] = []


class ModelThresholds(Section):
    """How far a new model may drift from the baseline's answers (post gates; rollback needs identity)."""

    min_exact_match: float = Field(default=0.75, ge=0, le=1)  # share of identical greedy continuations
    max_mean_kl: float = Field(default=0.1, ge=0)  # nats per token, KL(baseline || new)
    min_cosine: float = Field(default=0.98, ge=-1, le=1)  # embedding task
    max_perplexity_ratio: float = Field(default=1.25, gt=0)  # on reference_text
    max_latency_ratio: float | None = Field(default=3.0, gt=0)  # median per prompt; unset: reported only
    max_prompt_latency_s: float | None = Field(default=None, gt=0)  # smoke gate, slowest prompt
    min_label_agreement: float = Field(default=0.9, ge=0, le=1)  # classification: share of unchanged labels


class ModelConfig(Section):
    """One `[[models]]` entry: a local checkpoint and/or an HTTP endpoint serving it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: Path | None = None  # a save_pretrained folder (or a symlink to one)
    endpoint: str | None = None  # base URL; env <NAME>_URL overrides (mistral-7b -> MISTRAL_7B_URL)
    health_path: str = "/health"
    generate_path: str = "/generate"
    task: Literal["causal-lm", "embedding", "classification"] = "causal-lm"
    prompts: Path | None = None  # one prompt per line, or a JSON list; default: a short built-in set
    reference_text: Path | None = None  # perplexity is measured on it (causal-lm)
    max_new_tokens: int = Field(default=16, ge=1, le=512)
    timeout_s: float = Field(default=30.0, gt=0)
    thresholds: ModelThresholds = ModelThresholds()

    @model_validator(mode="after")
    def _somewhere(self) -> ModelConfig:
        if self.path is None and self.endpoint is None:
            raise ValueError(f"models entry '{self.name}' needs a path, an endpoint, or both")
        return self


def model_env_var(name: str) -> str:
    """The environment variable overriding a model's endpoint: mistral-7b -> MISTRAL_7B_URL."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() + "_URL"


class ModelUpgradeConfig(Section):
    """Switch a model directory atomically: `live` (what readers load) becomes a copy of `candidate`."""

    model: str  # the [[models]] entry gated before and after the switch
    live: Path  # a symlink (swapped with one rename) or a directory (swapped with renameat2 EXCHANGE)
    candidate: Path  # the new release's folder; copied next to `live`, never moved
    backup_dir: Path | None = None  # default: backup/models in the run folder
    verify_backup: bool = True  # re-hash the backup copy against its manifest
    # "link": reflink, else hard link where the filesystem allows (else a copy); "copy": always a full copy.
    # A hard-linked backup shares the files' bytes: a later in-place write into the old release changes it too
    # (the manifest then refuses it); choose "copy" where old releases are edited in place.
    backup_mode: Literal["link", "copy"] = "link"
    # Model backups of this many most recent runs are kept; older runs' model backups are removed at backup time.
    keep_backups: int = Field(default=3, ge=1)


class PackagesConfig(Section):
    """`[packages]`: upgrade a Python environment's packages as one step, undone offline.

    Before anything changes, the installed set (`pip list --format=freeze`) is recorded and every
    distribution saved as a wheel in the run folder; undo reinstalls exactly that set with
    `--no-index` from those wheels (no network) and removes what the candidate added.
    """

    # The interpreter of the environment to upgrade (a venv's bin/python); relative to this file.
    python: Path
    # The candidate: requirements files (`pip install -r` each) and/or pip arguments ("optuna==5.0.0", "-U").
    requirements: list[Path] = []
    install: list[str] = []
    # The application's own tests, as argv: must pass before (pre gate), after (post gate) and after a rollback.
    test: list[str] = []
    test_workdir: Path | None = None
    test_timeout_s: float = Field(default=600.0, gt=0)
    pip_timeout_s: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _candidate(self) -> PackagesConfig:
        if not self.requirements and not self.install:
            raise ValueError("packages needs the candidate: packages.requirements (files) or packages.install "
                             "(pip arguments)")
        return self


class ConfigFileMigration(Section):
    """One `[[config.files]]` entry: a JSON/TOML/YAML file migrated by an `upgate config migrate` rules file."""

    path: Path
    rules: Path
    format: Literal["auto", "json", "toml", "yaml"] = "auto"


class EnvFileChange(Section):
    """One `[[config.env]]` entry: KEY=value lines of an env file set, renamed or deleted."""

    path: Path
    set: dict[str, str] = {}
    rename: dict[str, str] = {}  # old name -> new name (the value kept)
    delete: list[str] = []

    @model_validator(mode="after")
    def _something(self) -> EnvFileChange:
        if not (self.set or self.rename or self.delete):
            raise ValueError(f"config.env entry {self.path}: nothing to change (set, rename or delete)")
        return self


class ConfigStepConfig(Section):
    """`[config]`: the application's config files changed as one step, backed up and undone to the exact bytes."""

    files: list[ConfigFileMigration] = []
    env: list[EnvFileChange] = []

    @model_validator(mode="after")
    def _something(self) -> ConfigStepConfig:
        if not (self.files or self.env):
            raise ValueError("config needs [[config.files]] (a file and its rules) or [[config.env]] (an env file's "
                             "changes)")
        return self

    def paths(self) -> list[Path]:
        return [f.path for f in self.files] + [e.path for e in self.env]


class GatesConfig(Section):
    # Folder holding pre/ and post/; empty: the gates shipped with upgate.
    directory: Path | None = None
    # The user's own pytest files or folders, run with the shipped gates (docs/writing-gates.md): a folder's
    # pre/ and post/ run in those phases, anything else in post, unless marked @pytest.mark.upgate_phase(...).
    extra: list[Path] = []
    extra_pytest_args: list[str] = []

    @field_validator("extra")
    @classmethod
    def _extra_exists(cls, paths: list[Path]) -> list[Path]:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"no such file or folder: {', '.join(missing)} (paths are relative to the config file)")
        return paths


class PerformanceConfig(Section):
    """The Locust load the perf gates offer before (baseline) and after (candidate) the upgrade."""

    # Empty: loadtests/reference.py shipped with upgate; user_classes empty: every concrete User in it.
    locustfile: Path | None = None
    user_classes: list[str] = []
    host: str | None = None  # default: [app] base_url
    # The old version kept running beside the new one (e.g. a blue-green's live side): the post-gate then loads
    # both at once and compares them pairwise. A deploy step's `targets.json` in the run folder wins over it.
    baseline_url: str | None = None
    users: int = Field(default=10, ge=1)
    spawn_rate: float = Field(default=10.0, gt=0)
    rate_per_user: float = Field(default=10.0, ge=0)  # req/s per user (constant_throughput); 0: the file's wait
    warmup_s: float = Field(default=2.0, ge=0)
    duration_s: float = Field(default=10.0, gt=0)
    # Each run is cut into this many windows: their spread is the run-to-run noise a regression must exceed.
    windows: int = Field(default=10, ge=2, le=100)
    # Master/worker mode: worker processes on this machine, plus hosts whose workers connect to the master.
    workers: int = Field(default=0, ge=0, le=64)
    remote_workers: list[str] = []
    worker_command: str = ""  # shell template per remote host: {host} {master_host} {master_port} {locustfile} {target}
    master_bind_host: str = "127.0.0.1"
    master_host: str = "127.0.0.1"  # the address remote workers reach the master on
    master_port: int = Field(default=0, ge=0, le=65535)  # 0: a free port
    worker_timeout_s: float = Field(default=30.0, gt=0)
    generator_cpus: list[int] = []  # CPU affinity of the generator (and its workers); empty: any CPU
    pidfile: Path | None = None  # the target's process for resource impact; default: [deploy] pidfile
    # Comparison with the baseline run.
    alpha: float = Field(default=0.01, gt=0, lt=1)
    max_latency_regression: float = Field(default=0.25, ge=0)  # typical latency more than 1.25x slower ...
    min_latency_delta_ms: float = Field(default=0.5, ge=0)  # ... and by more than this, at the intervals' low end
    # A pass must rule out this slowdown at the interval's high end (default: 2 x max_latency_regression, 1.5x);
    # when it cannot, the verdict is "too noisy to judge".
    rule_out_regression: float | None = Field(default=None, gt=0)
    when_too_noisy: Literal["warn", "fail"] = "warn"  # warn: the gate is skipped with the figures; fail: it fails
    baseline_retries: int = Field(default=1, ge=0, le=5)  # re-measure a baseline whose windows disagree
    max_p95_regression: float | None = Field(default=None, ge=0)  # opt-in: judge the p95 change by its bound too
    min_samples: int = Field(default=20, ge=3)
    confirm_runs: int = Field(default=1, ge=0, le=5)  # more candidate runs while the answer is not a pass
    max_throughput_drop: float = Field(default=0.3, ge=0, le=1)
    max_cpu_regression: float = Field(default=1.0, ge=0)
    max_memory_growth: float = Field(default=0.5, ge=0)
    # Absolute limits on the candidate run (None: not limited); the guide's response-time limit is 2 s.
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_ms: float | None = Field(default=2000.0, gt=0)
    max_p99_ms: float | None = Field(default=None, gt=0)
    min_rps: float | None = Field(default=None, gt=0)
    max_target_cpu_percent: float | None = Field(default=None, gt=0)
    max_system_memory_percent: float | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _rule_out_above_threshold(self) -> PerformanceConfig:
        if self.rule_out_regression is not None and self.rule_out_regression <= self.max_latency_regression:
            raise ValueError(f"performance.rule_out_regression ({self.rule_out_regression:g}) must be above "
                             f"performance.max_latency_regression ({self.max_latency_regression:g}): a pass rules out "
                             "a slowdown larger than the one that fails")
        return self

    @field_validator("baseline_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("expected the http(s) URL of the old version")
        return v

    def latency_policy(self) -> LatencyPolicy:
        """The comparison settings as the checks take them."""
        from upgate.checks.perf import LatencyPolicy

        return LatencyPolicy(alpha=self.alpha, max_regression=self.max_latency_regression,
                             min_delta_ms=self.min_latency_delta_ms, rule_out=self.rule_out_regression,
                             min_samples=self.min_samples, windows=self.windows,
                             max_p95_regression=self.max_p95_regression)


class AppConfigFileSpec(Section):
    """One configuration file of the application, validated by the compat gates."""

    path: Path
    format: Literal["auto", "json", "toml"] = "auto"
    # Dotted keys ("database.url", "ai_models[].timeout") that must be present.
    required: list[str] = []
    # Dotted key -> string | integer | number | boolean | array | object | null.
    types: dict[str, str] = {}
    # Dotted key -> what to use instead: reported as warnings.
    deprecated: dict[str, str] = {}
    # A `upgate config migrate` rules file whose [validate] table adds to the three above.
    rules: Path | None = None


class CompatConfig(Section):
    # Interpreter whose installed packages are checked; empty: the one running upgate.
    python: Path | None = None
    # Declared constraints: requirements files and/or a table {name = "specifier"}.
    requirements: list[Path] = []
    constraints: dict[str, str] = {}
    # The upgrade's candidate requirements, checked against the constraints and what is installed.
    candidate: list[Path] = []
    pip_check: bool = True
    # Supported PostgreSQL server versions, a PEP 440 specifier such as ">=14,<17".
    postgres: str | None = None
    app_config: list[AppConfigFileSpec] = []


class ContractConfig(Section):
    # GET paths on the app whose JSON responses are the contract, e.g. "/logs?limit=5".
    endpoints: list[str] = []
    # Recorded and compared as well when the app serves it; "" not to look.
    openapi_path: str = "/openapi.json"
    timeout_s: float = Field(default=5.0, gt=0)


class MigrationSafetyConfig(Section):
    squawk: bool = True
    # squawk rules that fail the gate; every other finding is a warning.
    squawk_fail: list[str] = ["ban-drop-database", "ban-truncate-cascade",
                              "ban-concurrent-index-creation-in-transaction"]
    # Dropped before mapping: upgate itself runs every file under lock_timeout.
    squawk_ignore: list[str] = ["require-lock-timeout", "require-statement-timeout"]
    # Longest estimated ACCESS EXCLUSIVE hold of one statement at the live table size.
    lock_budget_s: float = Field(default=5.0, gt=0)
    # Rows per touched table copied into the rehearsal clone to time each statement.
    sample_rows: int = Field(default=20_000, ge=100)


class ReportingConfig(Section):
    """What a run leaves behind for QA and operations (upgate/report.py, metrics.py, audit.py)."""

    # Prometheus Pushgateway base URL (e.g. "http://pushgateway:9091"); empty: metrics only as a textfile.
    pushgateway_url: str | None = None
    pushgateway_job: str = "upgate"
    push_timeout_s: float = Field(default=5.0, gt=0)
    # node_exporter textfile-collector folder: `upgate.prom` is written there atomically after each run.
    textfile_dir: Path | None = None
    # Append-only audit log shared by every run; empty: `audit.jsonl` in the reports folder.
    audit_log: Path | None = None
    # Build the Allure HTML report at the end of `upgate run` too (needs Node); `upgate report` always can.
    html: bool = False
    # The guide's target for `upgate history`.
    target_success_rate: float = Field(default=0.95, ge=0, le=1)
    # Free space the run folder's disk must have before the first change (journal, gate logs, records).
    min_free_mb: int = Field(default=64, ge=0)


class Config(Section):
    target: TargetConfig
    database: DatabaseConfig = DatabaseConfig()
    app: AppConfig | None = None
    migrate: MigrateConfig | None = None
    deploy: DeployConfig | None = None
    backup: BackupConfig = BackupConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    integrity: IntegrityConfig = IntegrityConfig()
    live: LiveConfig = LiveConfig()
    rollback: RollbackConfig = RollbackConfig()
    probe: ProbeConfig = ProbeConfig()
    gates: GatesConfig = GatesConfig()
    performance: PerformanceConfig | None = None
    reporting: ReportingConfig = ReportingConfig()
    monitoring: MonitoringConfig | None = None
    hosts: list[HostConfig] = []
    resources: ResourcesConfig = ResourcesConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    compat: CompatConfig | None = None
    contract: ContractConfig | None = None
    migration_safety: MigrationSafetyConfig = MigrationSafetyConfig()
    models: list[ModelConfig] = []
    model_upgrade: ModelUpgradeConfig | None = None
    packages: PackagesConfig | None = None
    # `[config]` in the file (the application's config files as an upgrade step).
    config_files: ConfigStepConfig | None = Field(default=None, alias="config")
    kubernetes: KubernetesConfig | None = None
    node_upgrade: NodeUpgradeConfig | None = None

    # Where it came from; not a key of the file.
    source: Path = Field(default=Path(DEFAULT_NAME), exclude=True)

    @field_validator("source", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Path:
        return Path(v)

    def probe_urls(self) -> list[str]:
        if self.probe.urls:
            return list(self.probe.urls)
        if self.app:
            return [self.app.url(self.app.ready_path)]
        return []

    def gated_components(self) -> dict[str, bool]:
        """Which components this config gates; the others are not gated (docs/gates.md)."""
        return {
            "database": self.database.url is not None,
            "app": self.app is not None,
            "migrate": self.migrate is not None,
            "deploy": self.deploy is not None,
            "models": bool(self.models),
            "model_upgrade": self.model_upgrade is not None,
            "monitoring": self.monitoring is not None,
            "hosts": bool(self.hosts),
            "performance": self.performance is not None,
            "compat": self.compat is not None,
            "contract": self.contract is not None,
            "packages": self.packages is not None,
            "config_files": self.config_files is not None,
            "kubernetes": self.kubernetes is not None,
        }

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    @model_validator(mode="after")
    def _model_upgrade_names_a_model(self) -> Config:
        if self.model_upgrade and self.model(self.model_upgrade.model) is None:
            known = ", ".join(m.name for m in self.models) or "none"
            raise ValueError(f"model_upgrade.model '{self.model_upgrade.model}' is not a [[models]] name "
                             f"(configured: {known})")
        return self

    @model_validator(mode="after")
    def _kubernetes_for_kubernetes(self) -> Config:
        uses = [k for k, on in (("deploy.kind = 'kubernetes'", self.deploy is not None and self.deploy.kind ==
                                 "kubernetes"), ("[node_upgrade]", self.node_upgrade is not None)) if on]
        if uses and self.kubernetes is None:
            raise ValueError(f"{uses[0]} needs a [kubernetes] section (namespace, deployment, service)")
        if self.deploy is not None and self.deploy.kind == "kubernetes" and self.kubernetes is not None:
            k8s = self.kubernetes
            if self.deploy.strategy == "rolling" and not k8s.deployment:
                raise ValueError("deploy.strategy = 'rolling' needs kubernetes.deployment")
            if self.deploy.strategy == "blue-green":
                missing = [k for k in ("service", "preview_service", "preview_url") if not getattr(k8s, k)]
                if missing:
                    raise ValueError("deploy.strategy = 'blue-green' needs "
                                     + ", ".join(f"kubernetes.{m}" for m in missing))
        return self


# Environment variables that override keys of the file: operators already use these names.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "UPGATE_APP_URL": ("app", "base_url"),
    "REDIS_URL": ("monitoring", "redis_url"),
    "MONITORING_URL": ("monitoring", "prometheus_url"),
    "PUSHGATEWAY_URL": ("reporting", "pushgateway_url"),
}

_PATH_KEYS: dict[str, tuple[str, ...]] = {
    "database": ("bin_dir",),
    "migrate": ("directory", "workdir", "alembic_ini"),
    "deploy": ("pidfile", "workdir", "compose_files"),
    "kubernetes": ("kubeconfig",),
    "backup": ("directory",),
    "gates": ("directory", "extra"),
    "performance": ("locustfile", "pidfile"),
    "reporting": ("textfile_dir", "audit_log"),
    "compat": ("python", "requirements", "candidate", "app_config[].path", "app_config[].rules"),
    "packages": ("python", "requirements", "test_workdir"),
    "config": ("files[].path", "files[].rules", "env[].path"),
}


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, then UPGATE_CONFIG, then ./upgate.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("UPGATE_CONFIG"):
        return Path(os.environ["UPGATE_CONFIG"])
    return Path.cwd() / DEFAULT_NAME


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment, resolve paths and validate; raise ConfigError naming the key."""
    file = find_config_path(path)
    env = os.environ if environ is None else environ
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found (give --config FILE or set UPGATE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "save the config as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None

    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            sect = data.setdefault(section, {})
            if isinstance(sect, dict):
                sect[key] = env[var]

    base = file.resolve().parent
    for section, keys in _PATH_KEYS.items():
        sect = data.get(section)
        if isinstance(sect, dict):
            for key in keys:
                _resolve_path_key(sect, key, base)
    _resolve_models(data, base, env)

    try:
        return Config.model_validate({**data, "source": file.resolve()})
    except ValidationError as exc:
        raise ConfigError(_describe(file, text, exc)) from None


def _resolve_models(data: dict[str, Any], base: Path, env: Any) -> None:
    """[[models]]: per-model endpoint overrides (MISTRAL_7B_URL) and relative paths; [model_upgrade] paths."""
    for entry in data.get("models") or []:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("name"), str) and env.get(model_env_var(entry["name"])):
            entry["endpoint"] = env[model_env_var(entry["name"])]
        for key in ("path", "prompts", "reference_text"):
            _resolve_path_key(entry, key, base)
    upgrade = data.get("model_upgrade")
    if isinstance(upgrade, dict):
        for key in ("live", "candidate", "backup_dir"):
            # Not resolved: `live` may be a symlink that the upgrade swaps.
            if isinstance(upgrade.get(key), str) and upgrade[key]:
                upgrade[key] = os.path.abspath(base / Path(upgrade[key]).expanduser())


def _resolve_path_key(sect: dict[str, Any], key: str, base: Path) -> None:
    """Resolve `key` of a section against the file's folder: a string, a list of them, or "list[].key"."""
    if "[]." in key:
        name, sub = key.split("[].", 1)
        for entry in sect.get(name) or []:
            if isinstance(entry, dict):
                _resolve_path_key(entry, sub, base)
        return
    value = sect.get(key)
    if isinstance(value, str) and value:
        sect[key] = str(base / Path(value).expanduser())
    elif isinstance(value, list):
        sect[key] = [str(base / Path(v).expanduser()) if isinstance(v, str) and v else v for v in value]


def _describe(file: Path, text: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = locate_key(text, loc)
        where = f"{file}:{line}" if line else str(file)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key '{key}'"
        elif kind == "missing":
            msg = f"missing required key '{key}'"
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
            msg = f"key '{key}': {err['msg']}{shown}"
        lines.append(f"{where}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def locate_key(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number (1-based) of a key path like ('migrate', 'directory') in TOML text."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    current: str | None = None
    section_line: int | None = None
    for number, raw in enumerate(lines, start=1):
        m = header.match(raw)
        if m:
            current = m.group(1)
            if current == names[0]:
                section_line = number
                if len(names) == 1:
                    return number
            continue
        if len(names) >= 2 and current == names[0]:
            if re.match(rf"^\s*{re.escape(names[1])}\s*=", raw):
                return number
        if current is None and re.match(rf"^\s*{re.escape(names[0])}\s*=", raw):
            return number
    return section_line
