"""Post-gate: the container checklist of gates/pre/test_containers.py after the upgrade (the candidate
image must serve), in the preview phase (the candidate container), and after a rollback (the previous
image id must serve again)."""

from upgate.gates.pre.test_containers import *  # noqa: F403
