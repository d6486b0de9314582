"""The reference service's load without writes: for plans whose integrity gate forbids added rows.

    [performance]
    locustfile = "loadtests/reference_readonly.py"
"""

from __future__ import annotations

from reference import LogsReader  # Locust puts the locustfile's folder on sys.path


class ReferenceReader(LogsReader):
    """Health and reads only: 1 health : 4 list : 4 get-by-id."""
