"""Post-gate: every configured component answers after the upgrade (or after the rollback).

The same checklist as gates/pre/test_health.py, collected again here so that it runs in the post (and rollback) phase.
"""

from upgate.gates.pre.test_health import *  # noqa: F403
