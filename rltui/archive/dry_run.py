"""The bucket a dry run compares with: the configured one when it answers, else none.

Usage:
    store, note = dry_run_store(settings)   # note: None when `store` is the real bucket

A dry run says what a backup would upload and delete. With a bucket that answers, it compares
the local files with what the bucket holds, as a real backup would. Without bucket settings, or
when the endpoint does not answer (one quick attempt, a short timeout, no retries), it compares
with nothing: every local file counts as not yet uploaded, and `note` says in one line why no
bucket was compared. A bucket that answers with a refusal (no such bucket, bad credentials) is
reported as for a real backup: that is a setting to fix, not a bucket out of reach.
"""

from __future__ import annotations

from typing import Any

from rltui.archive.manifest import Manifest
from rltui.archive.settings import BUCKET_VAR, S3Settings


class NoBucket:
    """A RemoteStore stand-in that holds nothing: no manifest, no objects, no uploads.
    Only the reading side a dry run uses is here; a transfer through it is a bug (AttributeError)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.max_bandwidth: int | None = None

    def run_prefix(self, run: str) -> str:
        return f"{self.settings.prefix}runs/{run}/"

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket or '(no bucket)'}/{key}"

    def get_manifest(self, run: str) -> Manifest | None:
        return None

    def list_objects(self, run: str) -> dict[str, int]:
        return {}

    def head_size(self, run: str, sha256: str) -> int | None:
        return None


def unreachable(settings: S3Settings) -> str | None:
    """Why the bucket's endpoint cannot be reached now (one line), or None when it answered.
    One request, one attempt: connection refused answers at once, a silent host in seconds."""
    from botocore.exceptions import ConnectionError as NoConnection
    from botocore.exceptions import HTTPClientError

    from rltui.archive.settings import make_client
    from rltui.archive.store import describe_error

    client = make_client(settings, quick=True)
    try:
        client.list_objects_v2(Bucket=settings.bucket, Prefix=f"{settings.prefix}runs/", MaxKeys=1)
    except (NoConnection, HTTPClientError) as e:
        return f"{settings.endpoint_url or 'the S3 endpoint'} is unreachable: {describe_error(e, settings)}"
    return None


def dry_run_store(settings: S3Settings) -> tuple[Any, str | None]:
    """(the store to compare with, None) when the bucket answers; (NoBucket, why) otherwise."""
    from rltui.archive.settings import make_client
    from rltui.archive.store import RemoteStore

    if not settings.bucket:
        why = f"no bucket settings: {BUCKET_VAR} is not set"
    else:
        why = unreachable(settings)
    if why is None:
        return RemoteStore(make_client(settings), settings), None
    return NoBucket(settings), (f"dry run: nothing was compared with a bucket ({why}); "
                                "every file counts as not yet uploaded")
