"""The Django side of the harness: the notebook project's releases migrate with `manage.py migrate`, the
ORM writes its data, gunicorn (2 workers) serves it; the reversible migration goes down, the other cannot."""

from __future__ import annotations

import subprocess

import pytest

from upgate.fixtures.realapps import django_app
from upgate.fixtures.realapps.observe import (
    catalog_objects,
    changed_tables,
    digest_tables,
    get_json,
    port_owners,
)
from upgate.fixtures.realapps.targets import RealAppTarget

pytestmark = pytest.mark.realapps


@pytest.mark.parametrize("realapp", ["django-migrate-good"], indirect=True)
def test_v1_served_by_two_workers_and_the_migrations_go_down_or_refuse(realapp: RealAppTarget, venv) -> None:
    url = realapp.database_url
    assert url
    python = venv("django") / "bin" / "python"
    # v1: the ORM wrote users, a group with permissions, sessions and notes; gunicorn serves with 2 workers.
    rows = digest_tables(url)
    assert {t: rows[t].rows for t in ("notes_note", "auth_user", "django_session", "auth_user_groups")} == {
        "notes_note": 400, "auth_user": 6, "django_session": 5, "auth_user_groups": 3}
    assert get_json(realapp.base_url + "/version")[1]["version"] == "v1"
    owners = port_owners(realapp.port, realapp.pidfile)
    assert len(owners.tree) == 3 and owners.listeners <= owners.tree and not owners.foreign, owners.describe()
    status, notes = get_json(realapp.base_url + "/api/notes")
    assert status == 200 and notes["count"] == 400 and set(notes["notes"][0]) == {"id", "author", "title", "created"}

    # A v2 release is not ready on the v1 schema: /ready names the pending migrations.
    releases = realapp.folder / "releases"
    v2 = releases / "v2"
    pending = subprocess.run(
        [str(python), str(v2 / "manage.py"), "migrate", "--plan"], cwd=v2, capture_output=True, text=True,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "notes.0002_note_word_count" in pending and "notes.0003_fill_word_count" in pending

    # Reversible (v2): up, then Django's own down, returns every row and the catalog exactly.
    catalog = catalog_objects(url)
    django_app.manage(python, v2, "migrate", "--noinput", database_url=url)
    assert "column notes_note.word_count integer YES" in catalog_objects(url)
    assert get_json(realapp.base_url + "/ready")[0] == 200  # v1 code runs on the v2 schema (added column)
    django_app.manage(python, v2, "migrate", "notes", "0001", "--noinput", database_url=url)
    assert changed_tables(rows, digest_tables(url)) == {} and catalog_objects(url) == catalog

    # Irreversible (v2-irreversible): the merge deletes the 20 duplicate notes, and Django refuses to go down.
    bad = django_app.make_release("v2-irreversible", releases)
    django_app.manage(python, bad, "migrate", "--noinput", database_url=url)
    assert digest_tables(url)["notes_note"].rows == 380
    with pytest.raises(subprocess.CalledProcessError) as down:
        django_app.manage(python, bad, "migrate", "notes", "0001", "--noinput", database_url=url)
    assert "IrreversibleError" in down.value.stderr


def test_release_is_the_base_with_its_layers(tmp_path) -> None:
    v1 = django_app.make_release("v1", tmp_path)
    bad = django_app.make_release("v2-reversible-bad", tmp_path)
    assert (v1 / "VERSION").read_text() == "v1\n"
    assert not (v1 / "notes" / "migrations" / "0002_note_word_count.py").exists()
    assert sorted(p.name for p in (bad / "notes" / "migrations").glob("0*.py")) == [
        "0001_initial.py", "0002_note_word_count.py"]
    assert '"heading": note.title' in (bad / "notes" / "views.py").read_text()
    with pytest.raises(KeyError, match="no Django release 'v9'"):
        django_app.make_release("v9", tmp_path)
