"""upgate.toml -> one typed model; bad input is an error naming the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.config import load_config, locate_key
from upgate.errors import ConfigError

GOOD = """
[target]
name = "svc"

[database]
url = "postgresql://app:s3cret@db/prod"

[app]
base_url = "http://127.0.0.1:8080"

[migrate]
directory = "migrations"
allow_destructive = ["episodic_logs.metadata"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "upgate.toml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_paths_resolved(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), environ={})
    assert cfg.target.name == "svc"
    assert cfg.migrate is not None and cfg.migrate.directory == tmp_path.resolve() / "migrations"
    # No ready endpoint named: readiness is the health path.
    assert cfg.app is not None and cfg.app.url(cfg.app.ready_path) == "http://127.0.0.1:8080/health"
    assert cfg.probe_urls() == ["http://127.0.0.1:8080/health"]


@pytest.mark.parametrize(("app", "ready"), [('health_path = "/healthz"', "/healthz"),
                                            ('health_path = "/healthz"\nready_path = "/ready"', "/ready"),
                                            ('ready_path = "/ready"', "/ready")])
def test_ready_path_defaults_to_the_health_path(tmp_path, app, ready):
    cfg = load_config(write(tmp_path, f'[target]\nname = "svc"\n[app]\nbase_url = "http://h:1"\n{app}\n'), environ={})
    assert cfg.app is not None and cfg.app.ready_path == ready


def test_database_url_from_environment_wins(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), environ={"DATABASE_URL": "postgresql://other/db"})
    assert cfg.database.url == "postgresql://other/db"


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, GOOD + "\n[thresholds]\nmax_downtime = 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert f"{path}:16" in text and "unknown key 'thresholds.max_downtime'" in text


def test_wrong_type_names_the_key_and_what_was_given(tmp_path):
    path = write(tmp_path, GOOD.replace('allow_destructive = ["episodic_logs.metadata"]', "lock_timeout_ms = 'fast'"))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "migrate.lock_timeout_ms" in str(err.value) and "'fast'" in str(err.value)


def test_lock_timeout_over_one_second_is_refused(tmp_path):
    path = write(tmp_path, GOOD.replace('allow_destructive = ["episodic_logs.metadata"]', "lock_timeout_ms = 5000"))
    with pytest.raises(ConfigError, match="lock_timeout_ms"):
        load_config(path, environ={})


def test_missing_target_section(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'target'"):
        load_config(write(tmp_path, "[database]\nurl = 'x'\n"), environ={})


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[target\nname="), environ={})


def test_process_deploy_needs_its_commands(tmp_path):
    path = write(tmp_path, GOOD + '\n[deploy]\nkind = "process"\n')
    with pytest.raises(ConfigError, match="deploy.pidfile"):
        load_config(path, environ={})


def test_locate_key_finds_section_and_key_lines():
    text = "[target]\nname='x'\n\n[migrate]\n# c\ndirectory = 'm'\n"
    assert locate_key(text, ("migrate", "directory")) == 6
    assert locate_key(text, ("migrate", "absent")) == 4
    assert locate_key(text, ("target",)) == 1


@pytest.mark.parametrize(("section", "message"), [
    ('kind = "sql"', "migrate.kind = 'sql' needs migrate.directory"),
    ('kind = "command"', "migrate.kind = 'command' needs migrate.up"),
    ('kind = "alembic"', "migrate.kind = 'alembic' needs migrate.alembic_ini"),
])
def test_each_migrate_kind_names_what_it_needs(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f'[target]\nname = "svc"\n[migrate]\n{section}\n'), environ={})


def test_command_migration_paths_resolve_and_down_is_optional(tmp_path):
    cfg = load_config(write(tmp_path, '[target]\nname = "svc"\n[migrate]\nkind = "command"\n'
                                      'up = ["python", "manage.py", "migrate"]\nworkdir = "app"\n'
                                      'env = { DATABASE_URL = "{database_url}" }\n'), environ={})
    assert cfg.migrate is not None and cfg.migrate.down == [] and cfg.migrate.workdir == tmp_path.resolve() / "app"
    assert cfg.migrate.env == {"DATABASE_URL": "{database_url}"}
