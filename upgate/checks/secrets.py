"""Keep secrets out of summaries, logs, reports and process lists.

    >>> redact("postgresql://app:s3cret@db:5432/prod")
    'postgresql://app:***@db:5432/prod'
    >>> with libpq_credentials("postgresql://app:s3cret@db/prod") as (dsn, env):   # doctest: +SKIP
    ...     subprocess.run(["pg_dump", "--dbname", dsn, ...], env=env)           # no password in argv

`redact` understands URLs whose password was never URL-encoded (`postgresql://u:pa:ss@w/rd@host/db`:
everything up to the last `@` before the host), libpq `key=value` DSNs (`password=secret`,
`password='with spaces'`), HTTP headers (`Authorization: Bearer ...`, `X-Api-Key: ...`), env-style lines
(`SECRET=...`, `GITHUB_TOKEN=...`, `DB_PASSWORD=...`), query strings (`?token=...`) and the same names as
JSON or Python dict keys. It keeps JSON valid: only the value inside its quotes is replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"

# A name that holds a secret: ends in one of these words (`DB_PASSWORD`, `X-Api-Key`, `auth_token`), so
# `tokens`, `token_count` or `password_file` are left alone.
_NAME = (r"(?<![\w.-])[\w.-]*?(?:password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|"
         r"private[_-]?key|credentials?|authorization)(?![\w.-])")
_SCHEME = r"(?:(?:bearer|basic|token|digest|negotiate)[ \t]+)?"

# scheme://user:password@host: the password runs to the last "@" of the token (an unencoded one may hold
# ":", "@" and "/"); a backslash-escaped character (JSON) is part of it.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@\"'<>\\]*):(?P<pw>(?:\\.|[^\s\"'<>\\])+)@"
)
# "password": "..." and 'Authorization': 'Bearer ...' (JSON, Python reprs): the value inside its quotes.
_QUOTED_KEY = re.compile(
    rf"(?P<head>(?P<q1>[\"'])(?P<key>{_NAME})(?P=q1)[ \t]*:[ \t]*(?P<q2>[\"'])(?i:{_SCHEME}))"
    r"(?P<val>(?:\\.|(?!(?P=q2))[^\\\n])*)(?P=q2)",
    re.IGNORECASE,
)
# ?token=...&  (query strings)
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_NAME})=)(?P<val>[^&#\s\"']+)", re.IGNORECASE)
# password=...  password='...'  Authorization: Bearer ...  DB_PASSWORD=...  --password=...
_UNQUOTED_KEY = re.compile(
    rf"(?P<head>{_NAME}[ \t]*[:=][ \t]*{_SCHEME})"
    r"(?P<val>'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"|(?!\*\*\*)(?:\\.|[^\s\"'\\])+)",
    re.IGNORECASE,
)
# A bearer token on its own, e.g. in an error message that quotes a request.
_BEARER = re.compile(r"(?P<head>\bBearer[ \t]+)(?P<val>(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,})")


def redact(text: str) -> str:
    """Replace passwords and tokens in URLs, DSNs, headers, env lines and key/value text with ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUOTED_KEY.sub(lambda m: f"{m['head']}{MASK}{m['q2']}", text)
    text = _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _UNQUOTED_KEY.sub(_mask_unquoted, text)
    return _BEARER.sub(lambda m: f"{m['head']}{MASK}", text)


def _mask_unquoted(match: re.Match[str]) -> str:
    value = match["val"]
    if value[:1] in ("'", '"'):
        return f"{match['head']}{value[0]}{MASK}{value[0]}"
    return f"{match['head']}{MASK}"


@contextlib.contextmanager
def libpq_credentials(
    dsn: str, environ: Mapping[str, str] | None = None, passfile: bool = True
) -> Iterator[tuple[str, dict[str, str]]]:
    """(dsn without its password, environment) for running a libpq tool (pg_dump, pg_restore, psql).

    The password travels in a private passfile named by PGPASSFILE (mode 0600, deleted on exit), or with
    `passfile=False` in PGPASSWORD: never on the command line, where `ps` shows it to every user.
    The dsn comes back in key=value form with the password removed; `environ` defaults to os.environ.
    Raises ValueError (the URL redacted) for a dsn libpq cannot read.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"cannot read the database URL {redact(dsn)}: {redact(str(exc).strip())}") from None
    password = params.pop("password", None)
    env = dict(os.environ if environ is None else environ)
    stripped = make_conninfo("", **params)
    if not password:
        yield stripped, env
        return
    env.pop("PGPASSWORD", None)  # libpq prefers it over the passfile: ours must win
    if not passfile:
        env["PGPASSWORD"] = str(password)
        yield stripped, env
        return
    fd, path = tempfile.mkstemp(prefix="upgate-pgpass-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp made it 0600
            f.write(f"*:*:*:*:{_passfile_escape(str(password))}\n")
        env["PGPASSFILE"] = path
        yield stripped, env
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
