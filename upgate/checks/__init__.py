"""Pure check functions: inputs in, a structured result out. No pytest, no config, no globals."""

from upgate.checks.result import CheckResult

__all__ = ["CheckResult"]
