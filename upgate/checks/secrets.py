"""Keep secrets out of summaries, logs and reports.

    >>> redact("postgresql://app:s3cret@db:5432/prod")
    'postgresql://app:***@db:5432/prod'
"""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_KV_PASSWORD = re.compile(r"(?P<key>\b(?:password|passwd|pwd|token|secret|api_key)\s*=\s*)(?P<val>'[^']*'|\S+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|token|secret|api_key)=)(?P<val>[^&\s]+)", re.I)


def redact(text: str) -> str:
    """Replace passwords and tokens in URLs, DSNs and key=value strings with ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['key']}***", text)
