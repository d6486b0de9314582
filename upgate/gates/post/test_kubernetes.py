"""Post-gate: the same Kubernetes checklist as gates/pre/test_kubernetes.py, after the upgrade (or rollback),
and in the preview phase against what the preview Service selects."""

from upgate.gates.pre.test_kubernetes import *  # noqa: F403
