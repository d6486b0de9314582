"""Application config files: validation (required, types, deprecated as warnings) and
`upgate config migrate` (rules, timestamped backup, validation, restore on failure) run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from upgate.checks.appconfig import ConfigSpec, Rule, apply_rules, load_config_file, validate_config
from upgate.cli import main
from upgate.steps.config_migrate import migrate_config_file

# The guide's example: connection_string becomes url, every model gets a timeout, legacy_timeout moves.
RULES = """
[[rule]]
kind = "rename"
from = "database.connection_string"
to = "database.url"

[[rule]]
kind = "default"
key = "ai_models[].timeout"
value = 30

[[rule]]
kind = "move"
from = "legacy_timeout"
to = "database.timeout_s"

[validate]
required = ["database.url", "ai_models", "monitoring"]
types = { "database" = "object", "database.url" = "string", "ai_models[].timeout" = "integer" }
deprecated = { "old_database_url" = "use database.url" }
"""
OLD = {"database": {"connection_string": "postgresql://db/app"}, "ai_models": [{"name": "a"}, {"name": "b", "timeout": 5}],
       "monitoring": {"enabled": True}, "legacy_timeout": 10, "old_database_url": "x"}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "service.json"
    config.write_text(json.dumps(OLD, indent=2))
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return config, rules


def test_validation_names_missing_and_mistyped_keys_and_warns_deprecated():
    spec = ConfigSpec(required=["database", "ai_models", "monitoring"], types={"database": "object"},
                      deprecated={"old_database_url": "use database.url"})
    result = validate_config({"database": "postgresql://x", "ai_models": [], "old_database_url": "y"}, spec, "app.json")
    assert not result.ok
    assert result.evidence["errors"] == ["missing required key monitoring",
                                         'database must be object, got string ("postgresql://x")']
    assert result.warnings == ("app.json: deprecated key old_database_url: use database.url",)


def test_rules_apply_in_order_through_lists():
    migrated, changes = apply_rules(OLD, [Rule("rename", "database.connection_string", "database.url"),
                                          Rule("default", "ai_models[].timeout", value=30),
                                          Rule("rename", "ai_models[].name", "ai_models[].model"),
                                          Rule("remove", "old_database_url")])
    assert migrated["database"] == {"url": "postgresql://db/app"}
    assert migrated["ai_models"] == [{"model": "a", "timeout": 30}, {"model": "b", "timeout": 5}]
    assert "old_database_url" not in migrated and OLD["old_database_url"] == "x"  # the input is not changed
    assert changes[:2] == ["renamed database.connection_string -> database.url", "set ai_models[0].timeout = 30 (default)"]


def test_migrate_writes_a_backup_first_and_validates(files):
    config, rules = files
    outcome = migrate_config_file(config, rules)
    assert outcome.ok and outcome.written and not outcome.restored
    assert outcome.backup is not None and outcome.backup.name.startswith("service.json.")
    assert json.loads(outcome.backup.read_text()) == OLD
    data = load_config_file(config)
    assert data["database"] == {"url": "postgresql://db/app", "timeout_s": 10}
    assert outcome.warnings == ["service.json: deprecated key old_database_url: use database.url"]


def test_migrate_restores_the_backup_when_the_result_does_not_validate(files):
    config, rules = files
    # A rule that removes a key [validate] requires: the written result fails, the backup goes back.
    rules.write_text(RULES + '\n[[rule]]\nkind = "remove"\nkey = "monitoring"\n')
    before = config.read_bytes()
    outcome = migrate_config_file(config, rules)
    assert not outcome.ok and outcome.restored
    assert config.read_bytes() == before
    assert outcome.backup is not None and outcome.backup.read_bytes() == before
    assert "missing required key monitoring" in outcome.validation.summary


def test_toml_config_is_migrated_as_toml(tmp_path):
    config = tmp_path / "service.toml"
    config.write_text('legacy_timeout = 3\n[database]\nconnection_string = "postgresql://db/app"\n')
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nkind = "move"\nfrom = "legacy_timeout"\nto = "database.timeout_s"\n'
                     '[validate]\nrequired = ["database.timeout_s"]\n')
    assert migrate_config_file(config, rules).ok
    assert load_config_file(config) == {"database": {"connection_string": "postgresql://db/app", "timeout_s": 3}}


def test_cli_migrate_dry_run_then_for_real(files, capsys):
    config, rules = files
    assert main(["config", "migrate", str(config), "--rules", str(rules), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "renamed database.connection_string -> database.url" in out and "dry run, nothing written" in out
    assert json.loads(config.read_text()) == OLD
    assert main(["config", "migrate", str(config), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "backup: " in out and f"migrated {config}" in out
    assert main(["config", "validate", str(config), "--rules", str(rules)]) == 0


def test_cli_bad_rules_is_a_usage_error(files):
    config, rules = files
    rules.write_text('[[rule]]\nkind = "rewrite"\n')
    proc = subprocess.run([sys.executable, "-m", "upgate.cli", "config", "migrate", str(config), "--rules", str(rules)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "rule 1 (rewrite): kind must be rename, move, default or remove" in proc.stderr
