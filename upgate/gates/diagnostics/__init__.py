"""Diagnostics: what an operator would look at, gathered right after a gate or step failed."""
