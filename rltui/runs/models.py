"""The base models available on this machine: the Hugging Face cache and ROOT/models/.

    models, problems = list_local_models(layout)

Cache entries come from huggingface_hub's own scanner (`scan_cache_dir`, imported only here, when
asked: HF_HOME / HF_HUB_CACHE as every Hugging Face tool reads them); one entry per cached commit,
named by repo id, with the refs (branches, tags) that point at it. ROOT/models/NAME folders are
listed when they hold a config.json (`tiny` is the built-in model's base/); a fetch_info.json
written by `rltui --batch fetch model ... --as NAME` gives their repo and commit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rltui.runs.disk import tree_size
from rltui.runs.localfs import Layout

FETCH_INFO = "fetch_info.json"


@dataclass(frozen=True)
class LocalModel:
    name: str  # what model.base takes: the repo id (cache) or NAME (ROOT/models/NAME)
    source: str  # cache | localfs
    path: Path
    size: int  # bytes on disk
    revision: str = ""  # refs pointing at this commit (cache), or the revision fetched
    commit: str | None = None
    repo_id: str | None = None
    complete: bool = True  # config.json and weights present

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "path": str(self.path), "size": self.size,
                "revision": self.revision, "commit": self.commit, "repo_id": self.repo_id,
                "complete": self.complete}


def list_local_models(layout: Layout) -> tuple[list[LocalModel], list[str]]:
    """(models, problems): cache entries then localfs ones; problems are one line each."""
    cached, problems = _cache_models()
    return cached + _localfs_models(layout), problems


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "(huggingface_hub not installed)"
    return str(constants.HF_HUB_CACHE)


def _cache_models() -> tuple[list[LocalModel], list[str]]:
    try:  # installed with transformers (the train extra); a manager-only install may lack it
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:
        return [], ["huggingface_hub is not installed here: the Hugging Face cache is not listed"]

    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return [], []
    except OSError as e:
        return [], [f"Hugging Face cache {hub_cache_dir()}: unreadable ({e})"]
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            path = Path(rev.snapshot_path)
            out.append(LocalModel(
                name=repo.repo_id, source="cache", path=path, size=rev.size_on_disk,
                revision=",".join(sorted(rev.refs)), commit=rev.commit_hash, repo_id=repo.repo_id,
                complete=_has_model_files(path)))
    problems = [f"Hugging Face cache: {w}" for w in info.warnings]
    return out, problems


def _localfs_models(layout: Layout) -> list[LocalModel]:
    try:
        entries = sorted(os.scandir(layout.models), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        folder = Path(entry.path)
        model_dir = folder / "base" if entry.name == "tiny" else folder
        if not (model_dir / "config.json").is_file():
            continue
        info = _read_fetch_info(folder)
        out.append(LocalModel(
            name=entry.name, source="localfs", path=model_dir, size=tree_size(model_dir, follow_links=True),
            revision=str(info.get("revision") or ""), commit=info.get("commit"),
            repo_id=info.get("repo_id"), complete=_has_model_files(model_dir)))
    return out


def _read_fetch_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / FETCH_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _has_model_files(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


