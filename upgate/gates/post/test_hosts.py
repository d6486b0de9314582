"""Post-gate: after the upgrade, every `[[hosts]]` entry is still as expected, through testinfra.

The same checklist as gates/pre/test_hosts.py, collected again here so that it runs in the post (and rollback) phase.
"""

from upgate.gates.pre.test_hosts import *  # noqa: F403
