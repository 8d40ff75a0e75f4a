"""S3 settings: the `~/.lambda_s3.env` file, the process environment over it, and the client.

The file holds KEY=VALUE lines (`export KEY=VALUE`, quotes and `#` comments allowed). `RLTUI_S3_ENV`
names another file. A key set in the process environment wins over the same key in the file; a
credential given nowhere falls back to boto3's own chain (~/.aws, instance roles, ...).

Secrets (the secret key, the session token, and the access key id for good measure) are kept out
of every message: `S3Settings.redact` masks them in any text before it is printed.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from rltui.errors import UsageError

ENV_FILE_VAR = "RLTUI_S3_ENV"
DEFAULT_ENV_FILE = "~/.lambda_s3.env"
BUCKET_VAR = "RLTUI_S3_BUCKET"
PREFIX_VAR = "RLTUI_S3_PREFIX"
CHECKSUMS_VAR = "RLTUI_S3_CHECKSUMS"
CONCURRENCY_VAR = "RLTUI_S3_MAX_CONCURRENCY"
PART_SIZE_VAR = "RLTUI_S3_PART_SIZE_MB"
ADDRESSING_VAR = "RLTUI_S3_ADDRESSING_STYLE"
REQUEST_CHECKSUM_VAR = "AWS_REQUEST_CHECKSUM_CALCULATION"
RESPONSE_CHECKSUM_VAR = "AWS_RESPONSE_CHECKSUM_VALIDATION"

CHECKSUM_MODES = ("when_supported", "when_required")
ADDRESSING_STYLES = ("auto", "path", "virtual")
MIN_PART_MB = 5  # S3 refuses multipart parts under 5 MiB (all but the last)

_KNOWN_KEYS = (
    BUCKET_VAR, PREFIX_VAR, CHECKSUMS_VAR, CONCURRENCY_VAR, PART_SIZE_VAR, ADDRESSING_VAR,
    REQUEST_CHECKSUM_VAR, RESPONSE_CHECKSUM_VAR,
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""  # "" or "some/prefix/" (always ends with "/")
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    request_checksum: str | None = None  # None: boto3's default (when_supported)
    response_checksum: str | None = None
    max_concurrency: int = 10
    part_size_mb: int = 16
    addressing_style: str | None = None
    source: Path | None = None  # the settings file read, if any
    warnings: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """`text` with every secret value replaced by '***', in every form a message may quote
        it: as is, escaped (repr, JSON), URL-quoted, with its whitespace folded, and each line
        of a secret that holds a newline."""
        for form in _secret_forms((self.secret_access_key, self.session_token, self.access_key_id)):
            text = text.replace(form, "***")
        return text


def _secret_forms(secrets: tuple[str | None, ...]) -> list[str]:
    from urllib.parse import quote, quote_plus

    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        escaped = secret.encode("unicode_escape").decode("ascii")
        for form in (secret, escaped, json.dumps(secret)[1:-1], quote(secret, safe=""),
                     quote_plus(secret), " ".join(secret.split())):
            forms.add(form)
        forms.update(secret.split())  # each piece a message may print on a line of its own
    return sorted((f for f in forms if len(f.strip()) >= 4), key=len, reverse=True)


class RedactingStream:
    """A text stream that masks the configured secrets in everything written through it, and
    removes escape sequences and controls (a file name may hold them) but the progress line's
    own "carriage return, erase line"."""

    OWN = "\r\x1b[K"

    def __init__(self, stream: TextIO, settings: "S3Settings") -> None:
        self.stream = stream
        self.settings = settings

    def write(self, text: str) -> int:
        from rltui.text import clean_lines

        masked = self.settings.redact(text)  # first: a secret may hold a control character
        return self.stream.write(self.OWN.join(clean_lines(p) for p in masked.split(self.OWN)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def redacted_output(settings: "S3Settings") -> Iterator[None]:
    """stdout and stderr with the secrets masked, for the length of an archive command."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out, settings), RedactingStream(err, settings)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def parse_env_file(text: str, path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `export ` prefixes, blank lines and `#` comments allowed."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            # the line may hold a secret: name the line, never its text
            raise UsageError(f"{path}:{lineno}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def _settings_file(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """(path, named explicitly)."""
    named = environ.get(ENV_FILE_VAR)
    if named:
        return Path(os.path.expanduser(named)), True
    return Path(os.path.expanduser(DEFAULT_ENV_FILE)), False


def _permission_warning(path: Path) -> str | None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"warning: {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds credentials: chmod 600 {path}"
        )
    return None


def _choice(values: Mapping[str, str], key: str, choices: tuple[str, ...]) -> str | None:
    value = values.get(key)
    if value in (None, ""):
        return None
    value = value.strip().lower()
    if value not in choices:
        raise UsageError(f"bad {key}: {values[key]!r} (use one of: {', '.join(choices)})")
    return value


def _int(values: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    raw = values.get(key)
    if raw in (None, ""):
        return default
    try:
        n = int(raw)
    except ValueError:
        raise UsageError(f"bad {key}: {raw!r} (not a whole number)") from None
    if n < minimum:
        raise UsageError(f"bad {key}: {raw!r} (at least {minimum})")
    return n


def _prefix(raw: str) -> str:
    parts = [p for p in raw.strip().strip("/").split("/")]
    if parts == [""]:
        return ""
    for p in parts:
        if p in ("", ".", "..") or "\\" in p or "\x00" in p:
            raise UsageError(f"bad {PREFIX_VAR}: {raw!r} (use folder names separated by '/')")
    return "/".join(parts) + "/"


def _bucket(raw: str | None, source: Path) -> str:
    if not raw or not raw.strip():
        raise UsageError(
            f"no bucket: set {BUCKET_VAR} in {source} or in the environment"
        )
    bucket = raw.strip()
    if bucket.startswith("s3://"):
        bucket = bucket[len("s3://"):].rstrip("/")
    if not bucket or "/" in bucket or any(c.isspace() for c in bucket):
        raise UsageError(f"bad {BUCKET_VAR}: {raw!r} (a bucket name, without a path)")
    return bucket


def load_settings(environ: Mapping[str, str] | None = None, *, need_bucket: bool = True) -> S3Settings:
    """Read the settings file (if any) and the environment; validate; never touch the network.

    `need_bucket` False (a dry run): no bucket set is no error; the settings' bucket is then "".
    """
    environ = os.environ if environ is None else environ
    path, named = _settings_file(environ)
    file_values: dict[str, str] = {}
    warnings: list[str] = []
    source: Path | None = None
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read settings file {path}: {getattr(e, 'strerror', None) or e}") from None
        file_values = parse_env_file(text, path)
        source = path
        warning = _permission_warning(path)
        if warning:
            warnings.append(warning)
    elif named:
        raise UsageError(f"bad {ENV_FILE_VAR}: {str(path)!r} (no such file)")

    values: dict[str, str] = {k: v for k, v in file_values.items() if k in _KNOWN_KEYS}
    values.update({k: environ[k] for k in _KNOWN_KEYS if environ.get(k)})

    given_bucket = bool(values.get(BUCKET_VAR, "").strip())
    both = _choice(values, CHECKSUMS_VAR, CHECKSUM_MODES)
    request = _choice(values, REQUEST_CHECKSUM_VAR, CHECKSUM_MODES) or both
    response = _choice(values, RESPONSE_CHECKSUM_VAR, CHECKSUM_MODES) or both
    return S3Settings(
        bucket=_bucket(values.get(BUCKET_VAR), path) if need_bucket or given_bucket else "",
        prefix=_prefix(values.get(PREFIX_VAR, "")),
        endpoint_url=values.get("AWS_ENDPOINT_URL_S3") or values.get("AWS_ENDPOINT_URL") or None,
        region=values.get("AWS_REGION") or values.get("AWS_DEFAULT_REGION") or None,
        profile=values.get("AWS_PROFILE") or None,
        access_key_id=values.get("AWS_ACCESS_KEY_ID") or None,
        secret_access_key=values.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=values.get("AWS_SESSION_TOKEN") or None,
        request_checksum=request,
        response_checksum=response,
        max_concurrency=_int(values, CONCURRENCY_VAR, 10, 1),
        part_size_mb=_int(values, PART_SIZE_VAR, 16, MIN_PART_MB),
        addressing_style=_choice(values, ADDRESSING_VAR, ADDRESSING_STYLES),
        source=source,
        warnings=tuple(warnings),
    )


def make_client(settings: S3Settings, *, quick: bool = False) -> Any:
    """A boto3 S3 client: standard retries, the configured checksum modes, a pool for the threads.
    `quick`: one attempt and short timeouts (is the endpoint there at all?).

    Endpoint precedence: the settings' AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL (file or
    environment), then boto3's own configuration.
    """
    import boto3
    from botocore.config import Config

    config_args: dict[str, Any] = {
        "retries": {"mode": "standard", **({"total_max_attempts": 1} if quick else {"max_attempts": 5})},
        "max_pool_connections": max(10, settings.max_concurrency + 4),
        "connect_timeout": 3 if quick else 20,
        "read_timeout": 5 if quick else 120,
    }
    if settings.request_checksum:
        config_args["request_checksum_calculation"] = settings.request_checksum
    if settings.response_checksum:
        config_args["response_checksum_validation"] = settings.response_checksum
    if settings.addressing_style:
        config_args["s3"] = {"addressing_style": settings.addressing_style}
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
        profile_name=settings.profile if not settings.access_key_id else None,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=Config(**config_args))
