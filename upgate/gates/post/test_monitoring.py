"""Post-gate: after the upgrade, monitoring and the components the service leans on still answer.

The same checklist as gates/pre/test_monitoring.py, collected again here so that it runs in the post (and rollback) phase.
"""

from upgate.gates.pre.test_monitoring import *  # noqa: F403
