"""The optuna side of the harness: data written through optuna 2.10.1, served over HTTP, upgraded by
`optuna storage upgrade` to 5.0.0, read back by 5.0.0; each version refuses the other's schema."""

from __future__ import annotations

import json
import subprocess

import pytest

from upgate.fixtures.realapps.observe import (
    catalog_objects,
    changed_tables,
    digest_tables,
    get_json,
    port_owners,
    serving_versions,
)
from upgate.fixtures.realapps.targets import OPTUNA_APP, RealAppTarget

pytestmark = pytest.mark.realapps


def _run(python, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(OPTUNA_APP), *args], capture_output=True, text=True, timeout=300,
                          check=check)


@pytest.mark.slow  # the long tier (make test-slow): make test runs optuna's scenarios on this harness (tests/realapps/test_realapps_scenarios.py)
@pytest.mark.parametrize("realapp", ["optuna-upgrade-good"], indirect=True)
def test_old_version_writes_serves_and_the_upgrade_keeps_every_trial(realapp: RealAppTarget, venv) -> None:
    url = realapp.database_url
    assert url
    old, new = venv("optuna-2") / "bin", venv("optuna-5") / "bin"
    studies = realapp.written["studies"]
    # What optuna 2.10.1 wrote: three studies (one multi-objective), every distribution kind, pruned and failed.
    assert [s["n_trials"] for s in studies] == [40, 40, 40]
    states = {t["state"] for s in studies for t in s["trials"]}
    assert {"COMPLETE", "PRUNED", "FAIL"} <= states
    assert studies[-1]["directions"] == ["MINIMIZE", "MAXIMIZE"]
    # ... served by 2.10.1 alone, and /studies shows exactly that.
    assert serving_versions(realapp.base_url, "optuna") == {"2.10.1"}
    assert get_json(realapp.base_url + "/studies") == (200, {"studies": studies})
    owners = port_owners(realapp.port, realapp.pidfile)
    assert owners.listeners == {owners.leader} and not owners.foreign, owners.describe()

    # 5.0.0 refuses the 2.x schema until `optuna storage upgrade` ran; refusing, it has already created its
    # two new enum types (RDBStorage runs create_all before the version check): a failed start leaves objects.
    rows_before, catalog_before = digest_tables(url), catalog_objects(url)
    refused = _run(new / "python", "read", "--storage", url, check=False)
    assert refused.returncode != 0 and "optuna storage upgrade" in refused.stderr
    assert catalog_objects(url) - catalog_before == {"type trialvaluetype e", "type trialintermediatevaluetype e"}
    assert digest_tables(url) == rows_before
    subprocess.run([str(new / "optuna"), "storage", "upgrade", "--storage", url], check=True, capture_output=True,
                   timeout=300)

    # Every row kept (counts), read identically by 5.0.0; 2.10.1 now refuses the new schema.
    rows_after = digest_tables(url)
    assert {t: d.rows for t, d in rows_after.items()} == {t: d.rows for t, d in rows_before.items()}
    assert json.loads(_run(new / "python", "read", "--storage", url).stdout)["studies"] == studies
    refused_old = _run(old / "python", "read", "--storage", url, check=False)
    assert refused_old.returncode != 0 and "no longer compatible" in refused_old.stderr
    # What the upgrade changed: the rows it rewrote, and the schema (columns, nullability, index, enum types).
    assert set(changed_tables(rows_before, rows_after)) == {
        "alembic_version", "version_info", "trial_params", "trial_values", "trial_intermediate_values"}
    added = catalog_objects(url) - catalog_before
    assert {"column trial_values.value_type USER-DEFINED NO", "column trial_intermediate_values.intermediate_value_type"
            " USER-DEFINED NO", "type trialvaluetype e", "type trialintermediatevaluetype e"} <= added
    assert any(a.startswith("index trials_study_id_key") for a in added)

    # The buggy data step of optuna-upgrade-data-loss deletes the failed and pruned trials.
    failed_or_pruned = sum(t["state"] in ("FAIL", "PRUNED") for s in studies for t in s["trials"])
    assert json.loads(_run(new / "python", "purge", "--storage", url).stdout) == {"purged_trials": failed_or_pruned}
    assert digest_tables(url)["trials"].rows == 120 - failed_or_pruned
