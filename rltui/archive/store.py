"""The remote side of the archive: object keys, manifests, listings and parallel transfers.

Layout under the bucket's prefix:

    PREFIX/runs/RUN/manifest.json        the last complete backup (uploaded last, one PUT)
    PREFIX/runs/RUN/objects/SHA256       file contents, named by their sha256

Contents are addressed by hash rather than by path because S3 has no rename and no transaction:
if a changed `status.json` were uploaded over the old key, a backup that dies before its manifest
would leave the previous manifest pointing at bytes it does not describe. With hashed names an
object is never overwritten with different bytes, so the previous manifest stays true until the
new one replaces it. Identical files (often the adapter config across checkpoints) upload once.
"""

from __future__ import annotations

import json
import re
import time
from typing import IO, Any, Callable, Iterable

from rltui.archive.manifest import LocalFile, Manifest
from rltui.archive.settings import BUCKET_VAR, S3Settings
from rltui.archive.snapshot import open_as_hashed
from rltui.errors import UsageError, WorkFailed

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RUN_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def describe_error(e: BaseException, settings: S3Settings) -> str:
    """One line: the cause of an S3 or network failure, with secrets masked."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code", "?")
        msg = f"{code}: {err.get('Message') or e}"
    else:
        msg = f"{type(e).__name__}: {e}"
    # s3transfer wraps the real cause; the first line is what a user needs
    line = " ".join(str(msg).split())
    return settings.redact(line)[:400]


def translate(e: BaseException, settings: S3Settings, doing: str) -> Exception:
    """The UsageError (bad setting) or WorkFailed (failed work) that `e` means for a user."""
    from botocore.exceptions import ClientError, NoCredentialsError, ProfileNotFound

    if isinstance(e, (UsageError, WorkFailed)):
        return type(e)(settings.redact(str(e)))
    if isinstance(e, NoCredentialsError):
        return UsageError(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the settings "
            "file or the environment"
        )
    if isinstance(e, ProfileNotFound):
        return UsageError(f"bad AWS_PROFILE: {describe_error(e, settings)}")
    if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "NoSuchBucket":
        return UsageError(f"bad {BUCKET_VAR}: {settings.bucket!r} (no such bucket at "
                          f"{settings.endpoint_url or 'AWS'})")
    return WorkFailed(f"{doing} failed: {describe_error(e, settings)}")


class RemoteStore:
    """One bucket and prefix, through one boto3 client (which the tests may instrument)."""

    def __init__(self, client: Any, settings: S3Settings) -> None:
        self.client = client
        self.settings = settings
        self.bucket = settings.bucket
        self.max_bandwidth: int | None = None  # bytes/s across all transfers; None: no cap

    # keys
    def run_prefix(self, run: str) -> str:
        return f"{self.settings.prefix}runs/{run}/"

    def manifest_key(self, run: str) -> str:
        return self.run_prefix(run) + "manifest.json"

    def object_key(self, run: str, sha256: str) -> str:
        if not _SHA256.match(sha256):
            raise ValueError(f"bad sha256 {sha256!r}")
        return self.run_prefix(run) + "objects/" + sha256

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    # manifests
    def _get_manifest_object(self, run: str) -> dict[str, Any] | None:
        """GetObject's answer for the run's manifest, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.manifest_key(run))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def get_manifest_raw(self, run: str) -> tuple[Any, float] | None:
        """(parsed JSON, LastModified) of the run's manifest, or None when there is none."""
        resp = self._get_manifest_object(run)
        if resp is None:
            return None
        try:
            return json.loads(resp["Body"].read()), resp["LastModified"].timestamp()
        except ValueError:
            return {"damaged": True}, resp["LastModified"].timestamp()

    def get_manifest(self, run: str) -> Manifest | None:
        raw = self.get_manifest_raw(run)
        if raw is None:
            return None
        try:
            return Manifest.from_json(raw[0], run)
        except ValueError as e:
            raise WorkFailed(f"damaged manifest {self.url(self.manifest_key(run))}: {e}") from None

    def put_manifest(self, manifest: Manifest) -> None:
        body = (json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n").encode()
        self.client.put_object(
            Bucket=self.bucket, Key=self.manifest_key(manifest.run), Body=body,
            ContentType="application/json",
        )

    # listings
    def list_runs(self) -> list[str]:
        runs: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.settings.prefix}runs/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(prefix):].rstrip("/")
                if _RUN_SEGMENT.match(name) and ".." not in name:
                    runs.append(name)
        return sorted(runs)

    def list_manifest_etags(self) -> dict[str, str]:
        """run -> ETag of its manifest, for every run, in one listing.

        The delimiter `/objects/` rolls each run's content objects up into one common prefix, so
        the listing holds about two entries per run however many files each run has. Its pages
        are read with the standard library's XML parser (`_listing_pairs`): botocore's own
        parsing of 1,000 entries costs more than the request.
        """
        out: dict[str, str] = {}
        prefix = f"{self.settings.prefix}runs/"
        pairs: list[tuple[str, str]] = []
        event = "before-parse.s3.ListObjectsV2"
        handler = _listing_pairs(pairs)
        self.client.meta.events.register(event, handler, unique_id="rltui-manifest-listing")
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for _page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/objects/"):
                pass
        finally:
            self.client.meta.events.unregister(event, unique_id="rltui-manifest-listing")
        for key, etag in pairs:
            run, _, name = key[len(prefix):].partition("/")
            if key.startswith(prefix) and name == "manifest.json" and _RUN_SEGMENT.match(run) and ".." not in run:
                out[run] = etag
        return out

    def get_manifest_with_etag(self, run: str) -> tuple[Any, str] | None:
        """(parsed JSON, ETag) of the run's manifest; None when there is none or it is not JSON."""
        resp = self._get_manifest_object(run)
        if resp is None:
            return None
        try:
            return json.loads(resp["Body"].read()), str(resp.get("ETag") or "")
        except ValueError:
            return None

    def manifest_etag(self, run: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return str(self.client.head_object(Bucket=self.bucket, Key=self.manifest_key(run))["ETag"])
        except ClientError:
            return None

    def list_objects(self, run: str) -> dict[str, int]:
        """sha256 -> size of every content object of the run (other keys are ignored)."""
        out: dict[str, int] = {}
        prefix = self.run_prefix(run) + "objects/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if _SHA256.match(name):
                    out[name] = int(obj["Size"])
        return out

    def head_size(self, run: str, sha256: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.object_key(run, sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(resp["ContentLength"])

    def delete_objects(self, run: str, shas: Iterable[str]) -> None:
        keys = [{"Key": self.object_key(run, s)} for s in sorted(shas)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True}
            )

    # unfinished multipart uploads (a backup killed mid-file, a connection cut)
    def unfinished_uploads(self, run: str | None = None) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated epoch seconds) of every multipart upload begun under the
        run's prefix (every run's when None) and neither completed nor aborted."""
        prefix = self.run_prefix(run) if run else f"{self.settings.prefix}runs/"
        out = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for u in page.get("Uploads", []):
                started = u.get("Initiated")
                out.append((u["Key"], u["UploadId"], started.timestamp() if started else 0.0))
        return out

    def abort_stale_uploads(self, run: str, older_than_s: float, now: float | None = None) -> int:
        """Abort the run's unfinished uploads begun more than `older_than_s` ago; how many.
        Called under the run's archive lock, so none of them is this host's upload in flight."""
        now = time.time() if now is None else now
        aborted = 0
        for key, upload_id, started in self.unfinished_uploads(run):
            if now - started >= older_than_s:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                aborted += 1
        return aborted

    # transfers
    def _manager(self) -> Any:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        part = self.settings.part_size_mb * 1024 * 1024
        config = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part,
            max_concurrency=self.settings.max_concurrency, use_threads=True,
            max_bandwidth=self.max_bandwidth,
        )
        return create_transfer_manager(self.client, config)

    def uploader(self, run: str, on_bytes: Callable[[int], None]) -> "Uploader":
        return Uploader(self, run, on_bytes)

    def download_many(
        self, run: str, items: list[tuple[str, IO[bytes]]], on_bytes: Callable[[int], None]
    ) -> None:
        """Download (sha256, open file) pairs in parallel; every file object is closed after."""
        manager = self._manager()
        subscribers = [_Progress(on_bytes)]
        futures: list[Any] = []
        try:
            futures += [
                manager.download(self.bucket, self.object_key(run, sha), fileobj, subscribers=subscribers)
                for sha, fileobj in items
            ]
            for fut in futures:
                fut.result()
        except BaseException:
            _cancel(manager, futures)
            raise
        finally:
            for _sha, fileobj in items:
                fileobj.close()
        manager.shutdown()


class Uploader:
    """Parallel uploads submitted one by one while the caller hashes the next file.

    `with store.uploader(run, on_bytes) as up: up.submit(file, sha)`; leaving the block waits for
    every upload and raises the first failure (after cancelling the rest).
    """

    def __init__(self, store: RemoteStore, run: str, on_bytes: Callable[[int], None]) -> None:
        self.store = store
        self.run = run
        self.subscribers = [_Progress(on_bytes)]
        self.manager: Any = None
        self.futures: list[Any] = []
        self.bodies: list[IO[bytes]] = []

    def __enter__(self) -> "Uploader":
        self.manager = self.store._manager()
        return self

    def submit(self, f: LocalFile, sha256: str) -> bool:
        """Start uploading `f` as it was hashed; False (nothing started) when its content is not
        the hashed one any more (replaced or rewritten meanwhile: rltui.archive.snapshot)."""
        body = open_as_hashed(f, sha256, small=self.store.settings.part_size_mb * 1024 * 1024)
        if body is None:
            return False
        self.bodies.append(body)
        self.futures.append(self.manager.upload(
            body, self.store.bucket, self.store.object_key(self.run, sha256),
            extra_args={"Metadata": {"rltui-path": _ascii(f.path)}},
            subscribers=self.subscribers,
        ))
        return True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                _cancel(self.manager, self.futures)
                return
            try:
                for fut in self.futures:
                    fut.result()
            except BaseException:
                _cancel(self.manager, self.futures)
                raise
            self.manager.shutdown()
        finally:
            for body in self.bodies:
                body.close()


def _listing_pairs(pairs: list[tuple[str, str]]) -> Callable[..., None]:
    """A botocore `before-parse` handler for ListObjectsV2 that takes (key, ETag) of every entry
    from the XML itself and leaves botocore only the paging fields to parse."""
    from urllib.parse import unquote_plus
    from xml.etree import ElementTree
    from xml.sax.saxutils import escape

    def handler(response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict.get("status_code") != 200:
            return  # an error: botocore's parser reports it as usual
        root = ElementTree.fromstring(response_dict["body"])
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        encoded = root.findtext(f"{ns}EncodingType") == "url"
        for entry in root.iter(f"{ns}Contents"):
            key = entry.findtext(f"{ns}Key") or ""
            pairs.append((unquote_plus(key) if encoded else key, entry.findtext(f"{ns}ETag") or ""))
        paging = "".join(f"<{tag}>{escape(el.text or '')}</{tag}>"
                         for tag in ("IsTruncated", "NextContinuationToken")
                         if (el := root.find(f"{ns}{tag}")) is not None)
        response_dict["body"] = f"<ListBucketResult>{paging}</ListBucketResult>".encode()

    return handler


def _cancel(manager: Any, futures: list[Any]) -> None:
    """Cancel what is in flight and wait for the threads. (Not shutdown(cancel=True): in
    s3transfer 0.19 it passes the message where the exception type goes and raises TypeError.)"""
    for fut in futures:
        fut.cancel()
    try:
        manager.shutdown()
    except Exception:
        pass  # the first failure is what the caller reports


def _ascii(text: str) -> str:
    """S3 metadata values must be ASCII; the path is informational only."""
    return text.encode("ascii", "backslashreplace").decode("ascii")[:1024]


class _Progress:
    """An s3transfer subscriber that forwards byte counts (negative when a part is retried).
    Called from many threads: `on_bytes` must be thread-safe (Progress.add is)."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        pass

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._on_bytes(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        pass
