"""upgate's gates: pytest suites run before (pre/) and after (post/) an upgrade, and after a failure (diagnostics/)."""
