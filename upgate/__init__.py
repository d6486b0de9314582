"""upgate: gate an upgrade with pytest suites, prove the result, roll back when it fails."""

__version__ = "0.1.0"
