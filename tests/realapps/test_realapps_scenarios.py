"""The proof on applications nobody here wrote (issue 8): each scenario runs `upgate run` on its plan as a
user does, then checks the outcome itself: row count and md5 of every table, the catalog, the sequences,
which version answers /version, which processes listen on the port and whether the old ones are gone.

Until the steps core lands (upgate/steps/base.py, `[migrate] kind = "command"`), the plans cannot even be
loaded: each test is a strict xfail naming what it needs, and turns into a plain test when the core is in.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.realapps.support import (
    assert_restored_exactly,
    assert_serving_only,
    observe,
    steps_core_landed,
    upgrade,
)
from upgate.fixtures.realapps.observe import (
    catalog_objects,
    changed_tables,
    digest_tables,
    get_json,
    port_owners,
    sequence_values,
    serving_versions,
)
from upgate.fixtures.realapps.targets import RealAppTarget

pytestmark = [pytest.mark.realapps, pytest.mark.e2e]

CORE = steps_core_landed()


def needs_core(feature: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(not CORE, strict=True, reason=f"needs the steps core of issue 8: {feature}")


MIGRATE_COMMAND = "[migrate] kind = 'command' (the plan does not load today)"


# --- optuna 2.10.1 -> 5.0.0 -----------------------------------------------------------------------------


@needs_core(MIGRATE_COMMAND)
@pytest.mark.parametrize("realapp", ["optuna-upgrade-good"], indirect=True)
def test_optuna_upgrade_good(realapp: RealAppTarget, tmp_path) -> None:
    before = observe(realapp)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 0, output
    assert realapp.database_url
    after = digest_tables(realapp.database_url)
    assert {t: d.rows for t, d in after.items()} == {t: d.rows for t, d in before.rows.items()}
    assert get_json(realapp.base_url + "/studies") == (200, {"studies": realapp.written["studies"]})
    assert get_json(realapp.base_url + "/version")[1]["schema"] == "v3.2.0.a"
    assert_serving_only(realapp, {"5.0.0"}, before)


@needs_core(MIGRATE_COMMAND + "; the restore when there is no down")
@pytest.mark.parametrize("realapp", ["optuna-upgrade-data-loss", "optuna-upgrade-broken-start"], indirect=True)
def test_optuna_upgrade_bad_is_restored_and_old_version_serves(realapp: RealAppTarget, tmp_path) -> None:
    before = observe(realapp)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 20, output
    if realapp.scenario.endswith("data-loss"):
        assert "trials" in output and "lost" in output  # integrity named the lost trials
    assert_restored_exactly(realapp, before)
    assert get_json(realapp.base_url + "/studies") == (200, {"studies": realapp.written["studies"]})
    assert_serving_only(realapp, {"2.10.1"}, before)  # 2.10.1 started again: the old processes are gone


# --- Django (notes app + contrib apps) under gunicorn ---------------------------------------------------

NOTE_V1 = "SELECT md5(string_agg(ROW(id, author_id, title, body, created)::text, '' ORDER BY id)) FROM notes_note"


def notes_v1_digest(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(NOTE_V1).fetchone()
    assert row is not None
    return str(row[0])


@needs_core(MIGRATE_COMMAND)
@pytest.mark.parametrize("realapp", ["django-migrate-good"], indirect=True)
def test_django_migrate_good(realapp: RealAppTarget, tmp_path) -> None:
    url = realapp.database_url
    assert url
    before, notes = observe(realapp), notes_v1_digest(url)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 0, output
    after = digest_tables(url)
    assert after["django_migrations"].rows == before.rows["django_migrations"].rows + 2
    assert {t: d.rows for t, d in after.items() if t != "django_migrations"} == {
        t: d.rows for t, d in before.rows.items() if t != "django_migrations"}
    assert notes_v1_digest(url) == notes  # every note's v1 columns kept; word_count filled beside them
    assert "column notes_note.word_count integer YES" in catalog_objects(url)
    assert_serving_only(realapp, {"v2"}, before)
    assert len(port_owners(realapp.port, realapp.pidfile).tree) == 3  # arbiter + 2 workers


@needs_core(MIGRATE_COMMAND + " without a down: the restore")
@pytest.mark.parametrize("realapp", ["django-migrate-irreversible-bad"], indirect=True)
def test_django_irreversible_migration_is_undone_by_the_restore(realapp: RealAppTarget, tmp_path) -> None:
    before = observe(realapp)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 20, output
    assert "notes_note" in output and "lost" in output
    assert_restored_exactly(realapp, before)  # sequences too: a restore, not a down
    assert_serving_only(realapp, {"v1"}, before)


@needs_core(MIGRATE_COMMAND + " with down = manage.py migrate notes 0001")
@pytest.mark.parametrize("realapp", ["django-migrate-reversible-bad"], indirect=True)
def test_django_reversible_migration_is_undone_by_its_down(realapp: RealAppTarget, tmp_path) -> None:
    url = realapp.database_url
    assert url
    before = observe(realapp)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 20, output
    assert "title" in output  # the contract gate named the removed field
    assert changed_tables(before.rows, digest_tables(url)) == {}
    assert catalog_objects(url) == before.catalog
    # Undone by Django's own down, not by the restore: the down leaves django_migrations' id sequence advanced.
    assert sequence_values(url)["django_migrations_id_seq"] == before.sequences["django_migrations_id_seq"] + 1
    assert_serving_only(realapp, {"v1"}, before)


# --- gunicorn (arbiter + 2 workers), kind = "process" ---------------------------------------------------


@needs_core("the app /metrics gate skipped when [monitoring] is absent")
@pytest.mark.parametrize("realapp", ["gunicorn-deploy-good"], indirect=True)
def test_gunicorn_deploy_good_leaves_no_old_worker(realapp: RealAppTarget, tmp_path) -> None:
    before = observe(realapp)
    code, output = upgrade(realapp, realapp.config, tmp_path)
    assert code == 0, output
    assert_serving_only(realapp, {"v2"}, before)
    assert len(port_owners(realapp.port, realapp.pidfile).tree) == 3


@needs_core("process-tree stop, port free, readiness from the new process; /metrics skip")
@pytest.mark.parametrize("realapp", ["gunicorn-deploy-leftover-worker"], indirect=True)
def test_gunicorn_leftover_worker_is_caught(realapp: RealAppTarget, tmp_path) -> None:
    code, output = upgrade(realapp, realapp.config, tmp_path)
    old_answers = "v1-escaping" in serving_versions(realapp.base_url, "build", samples=20)
    assert not (code == 0 and old_answers), "UPGRADED while the old version still answers on the port"
    assert code == 20, output
    assert serving_versions(realapp.base_url, "build", samples=20) == {"v1-escaping"}
