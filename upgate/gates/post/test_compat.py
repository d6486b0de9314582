"""Post-gate: compatibility after the upgrade (or the rollback). Installed packages still meet the declared
constraints, `pip check` is clean, the PostgreSQL server is in the supported range, and the
application's config files validate. (The candidate requirements are judged before, in the pre gates.)"""

from upgate.gates.pre.test_compat import (  # noqa: F401  (upgate.fixtures and upgate.gates collected again in the post phase)
    compat,
    declared,
    environment_unchanged,
    pytestmark,
    python_env,
    test_app_config_files_valid,
    test_installed_packages_meet_constraints,
    test_pip_check_clean,
    test_postgres_version_supported,
)
