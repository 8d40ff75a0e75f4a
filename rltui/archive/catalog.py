"""The bucket as a second place runs live: every backed-up run, from its manifest alone, cached.

One listing finds every run's manifest and its ETag: `list_objects_v2` under `PREFIX/runs/` with
the delimiter `/objects/` rolls each run's content objects up into one common prefix, so the
listing returns about two entries per run however many files a run has (1,000 runs: two pages).
A manifest is downloaded only when its ETag differs from the cached one. The summaries live in
`archive/.bucket_catalog.json` (written atomically), so `status` and the TUI show bucket-only runs
with no network call at all, and a refresh costs one listing plus the manifests that changed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rltui.archive.manifest import Manifest, archived_steps
from rltui.archive.store import RemoteStore
from rltui.runs import localfs
from rltui.runs.localfs import Layout

CATALOG_FORMAT = 1
_FETCH_THREADS = 16


@dataclass(frozen=True)
class BucketRun:
    """What a manifest says of a run, without its file list."""

    run: str
    etag: str
    size: int
    files: int
    newest_step: int | None
    step_latest: int | None
    steps: tuple[int, ...]
    backed_up_at: float
    host: str

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "etag": self.etag, "size": self.size, "files": self.files,
                "newest_step": self.newest_step, "step_latest": self.step_latest,
                "steps": list(self.steps), "backed_up_at": self.backed_up_at, "host": self.host}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BucketRun":
        return cls(
            run=str(d["run"]), etag=str(d["etag"]), size=int(d["size"]), files=int(d["files"]),
            newest_step=d.get("newest_step"), step_latest=d.get("step_latest"),
            steps=tuple(int(s) for s in d.get("steps") or ()), backed_up_at=float(d.get("backed_up_at") or 0),
            host=str(d.get("host") or ""),
        )

    @classmethod
    def of(cls, manifest: Manifest, etag: str) -> "BucketRun":
        steps = archived_steps(manifest)
        return cls(manifest.run, etag, manifest.total_size, len(manifest.files),
                   steps[-1] if steps else None, manifest.step_latest, tuple(steps),
                   manifest.created, manifest.host)


@dataclass
class Catalog:
    where: str  # s3://bucket/prefix: a catalog of another bucket is not reused
    runs: dict[str, BucketRun]
    listed_at: float | None = None
    fetched: int = 0  # manifests downloaded by the last refresh (the rest were unchanged)


def catalog_path(layout: Layout) -> Path:
    return layout.archive / ".bucket_catalog.json"


def _where(store: RemoteStore) -> str:
    return store.url(store.settings.prefix) + (f" at {store.settings.endpoint_url}"
                                               if store.settings.endpoint_url else "")


def read_catalog(layout: Layout, where: str | None = None) -> Catalog | None:
    """The cached catalog (no network). None when there is none, it is damaged, or it describes
    another bucket than `where`."""
    try:
        data = localfs.read_json(catalog_path(layout))
        if not isinstance(data, dict) or data.get("format") != CATALOG_FORMAT:
            return None
        if where is not None and data.get("where") != where:
            return None
        runs = {r["run"]: BucketRun.from_json(r) for r in data.get("runs") or ()}
        return Catalog(str(data.get("where")), runs, data.get("listed_at"))
    except (OSError, localfs.DamagedFile, KeyError, TypeError, ValueError):
        return None


def _save(layout: Layout, catalog: Catalog) -> None:
    doc = {"format": CATALOG_FORMAT, "where": catalog.where, "listed_at": catalog.listed_at,
           "runs": [r.to_json() for _, r in sorted(catalog.runs.items())]}
    # compact: the C encoder (an indent would take the pure-Python one, ~0.4 s at 1,000 runs)
    localfs.write_bytes_atomic(catalog_path(layout), json.dumps(doc, separators=(",", ":")).encode(),
                               durable=False)


def refresh(layout: Layout, store: RemoteStore) -> Catalog:
    """List the bucket once; download only the manifests whose ETag changed; save the cache."""
    where = _where(store)
    cached = read_catalog(layout, where) or Catalog(where, {})
    etags = store.list_manifest_etags()
    changed = [run for run, etag in etags.items()
               if run not in cached.runs or cached.runs[run].etag != etag]
    runs = {run: cached.runs[run] for run in etags if run not in changed}
    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        for found in pool.map(lambda r: _summary(store, r), changed):
            if found is not None:
                runs[found.run] = found
    catalog = Catalog(where, runs, time.time(), fetched=len(changed))
    _save(layout, catalog)
    return catalog


def _summary(store: RemoteStore, run: str) -> BucketRun | None:
    got = store.get_manifest_with_etag(run)
    if got is None:
        return None
    raw, etag = got
    try:
        return BucketRun.of(Manifest.from_json(raw, run), etag)
    except ValueError:
        return None  # a damaged manifest is not a run one can restore; list-backups says why


def remember_manifest(layout: Layout, store: RemoteStore, manifest: Manifest) -> None:
    """After a backup: put this run's new summary into the cache without listing the bucket."""
    where = _where(store)
    catalog = read_catalog(layout, where)
    if catalog is None:
        return  # never listed: the first refresh will read it
    etag = store.manifest_etag(manifest.run)
    if etag is None:
        return
    catalog.runs[manifest.run] = BucketRun.of(manifest, etag)
    try:
        _save(layout, catalog)
    except OSError:
        pass  # only a cache


def bucket_only(catalog: Catalog | None, local_runs: set[str]) -> list[BucketRun]:
    """The runs the bucket holds that this localfs does not, newest backup first."""
    if catalog is None:
        return []
    only = [r for name, r in catalog.runs.items() if name not in local_runs]
    return sorted(only, key=lambda r: r.backed_up_at, reverse=True)
