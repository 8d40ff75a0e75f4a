"""Base models by name: Hub ids through huggingface_hub's cache, local folders, localfs models, tiny.

A base model is named as the ecosystem names it:
    tiny                      the built-in model (ROOT/models/tiny/base, built on first use)
    /path/to/folder           a local Hugging Face folder (also ./rel, ~/x, or any existing folder)
    NAME                      a localfs model, ROOT/models/NAME/ (e.g. fetched with --as NAME)
    org/name[@revision]       a Hugging Face Hub repo id; revision a branch, tag or commit

A Hub id goes through huggingface_hub and its settings (HF_HOME / HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT, HF_HUB_OFFLINE):
- in the cache (a complete snapshot of that revision): used with no network call at all;
- not in the cache: one bounded probe of the Hub (PROBE_TIMEOUT_S), then one download into the
  cache, progress printed as whole lines (a job's log);
- not in the cache and offline or unreachable: ConfigError (exit 2), one line naming the id and
  the command that fetches it.
Only the files a causal LM needs are taken (MODEL_FILES: configs, safetensors, tokenizer files).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

from trainer.errors import ConfigError, DownloadFailed, HubUnreachable
from rltui.runs.disk import human_bytes

MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PROBE_TIMEOUT_S = 3.0  # the whole probe, DNS included: an unreachable Hub is an answer within 5 s
PROGRESS_EVERY_S = 2.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a base model name led: the local folder, and for Hub ids the exact commit."""

    spec: str  # as given
    path: Path  # a local folder with config.json
    kind: str  # tiny | folder | localfs | hub
    repo_id: str | None = None
    revision: str | None = None  # as asked (None: the default branch)
    commit: str | None = None  # the snapshot's commit (Hub ids, and localfs models fetched from the Hub)
    downloaded: bool = False

    @property
    def pinned(self) -> str:
        """The name that gives these exact weights again: `org/name@COMMIT` for a Hub id."""
        return f"{self.repo_id}@{self.commit}" if self.kind == "hub" and self.commit else self.spec

    def record(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "path": str(self.path), "repo_id": self.repo_id,
                "revision": self.revision, "commit": self.commit}


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None); else None."""
    repo_id, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or (spec.endswith("@")):
        return None
    return repo_id, (revision or None)


def fetch_command(repo_id: str, revision: str | None) -> str:
    return f"rltui --batch fetch model {repo_id}" + (f" --revision {revision}" if revision else "")


def resolve_model(spec: str, root: Path, *, allow_download: bool = True) -> ResolvedModel:
    """The local folder (and Hub commit) a base model name stands for; ConfigError when none."""
    if spec == "tiny":
        from trainer.tiny import ensure_tiny

        return ResolvedModel(spec, ensure_tiny(Path(root)).base, "tiny")
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith(("/", "./", "../", "~")) or path.is_dir()
    if looks_like_path:
        return ResolvedModel(spec, _model_folder(path, spec), "folder")
    localfs_model = Path(root) / "models" / spec
    if "/" not in spec and localfs_model.is_dir():
        fetched = _read_fetch_info(localfs_model)
        return ResolvedModel(spec, _model_folder(localfs_model, spec), "localfs",
                             repo_id=fetched.get("repo_id"), revision=fetched.get("revision"),
                             commit=fetched.get("commit"))
    hub = parse_hub_id(spec)
    if hub is None:
        raise ConfigError(f"base model not found: {spec} (not a folder, not {localfs_model}, and not a "
                          "Hub id org/name[@revision]; use 'tiny', a folder, a localfs model or a Hub id)")
    return resolve_hub_model(*hub, spec=spec, allow_download=allow_download)


def _model_folder(path: Path, spec: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"base model not found: {spec} (not a folder)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"base model {spec}: no config.json (not a Hugging Face model folder)")
    return path.absolute()


def _read_fetch_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / "fetch_info.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# ---------------------------------------------------------------- the Hub


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None, *, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of this revision, or None; never touches the network.

    Read in huggingface_hub's cache layout (HF_HUB_CACHE as huggingface_hub.constants resolves
    it): `{type}s--ORG--NAME/refs/REV` holds the commit a branch or tag named when it was
    fetched, `snapshots/COMMIT/` the files. Done by hand rather than with
    `snapshot_download(local_files_only=True)`, whose first call imports huggingface_hub's API
    client (~0.4 s on this project's CPU box: bench/hub_startup.py) for two small reads.
    When huggingface_hub recorded the commit's file listing (`trees/COMMIT.json`), every model
    file in it must be present, as snapshot_download itself checks."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    revision = revision or constants.DEFAULT_REVISION
    if _COMMIT.match(revision):
        commit = revision
    else:
        try:
            commit = (storage / "refs" / revision).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
    snapshot = storage / "snapshots" / commit
    if not commit or not snapshot.is_dir() or _listed_files_missing(storage, commit, snapshot):
        return None
    return snapshot


def _listed_files_missing(storage: Path, commit: str, snapshot: Path) -> bool:
    try:
        listed = json.loads((storage / "trees" / f"{commit}.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no listing recorded (a cache laid out by hand or by an older client)
    wanted = [p for p in listed if any(fnmatch(p, pattern) for pattern in MODEL_FILES)]
    return any(not (snapshot / p).is_file() for p in wanted)


def resolve_hub_model(repo_id: str, revision: str | None, *, spec: str | None = None,
                      allow_download: bool = True,
                      say: Callable[[str], None] | None = None) -> ResolvedModel:
    """A Hub model from the cache when complete there, else downloaded (see module docstring)."""
    spec = spec or repo_id + (f"@{revision}" if revision else "")
    folder = cached_snapshot(repo_id, revision)
    if folder is not None and not model_files_missing(folder):
        return ResolvedModel(spec, folder, "hub", repo_id, revision, folder.name)
    where = f"the Hugging Face cache ({hub_cache_dir()})"
    state = "incomplete in" if folder is not None else "not in"
    fetch = fetch_command(repo_id, revision)
    if hub_offline():
        raise ConfigError(f"base model {spec} is {state} {where} and HF_HUB_OFFLINE is set; "
                          f"fetch it first: {fetch}")
    if not allow_download:
        raise ConfigError(f"base model {spec} is {state} {where}; fetch it first: {fetch}")
    probe_repo(repo_id, revision, "model", what=f"base model {spec}", fetch=fetch)
    folder = download_snapshot(repo_id, revision, "model", MODEL_FILES, what=f"base model {spec}",
                               fetch=fetch, say=say)
    missing = model_files_missing(folder)
    if missing:
        raise ConfigError(f"base model {spec}: the Hub repo has no {missing} (not a causal LM "
                          "in safetensors form)")
    return ResolvedModel(spec, folder, "hub", repo_id, revision, folder.name, downloaded=True)


def model_files_missing(folder: Path) -> str:
    """What a loadable model folder lacks ('' when nothing): config, weights (every shard)."""
    if not (folder / "config.json").is_file():
        return "config.json"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "readable model.safetensors.index.json"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return ", ".join(missing)
    elif not (folder / "model.safetensors").is_file():
        return "model.safetensors"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return "tokenizer files"
    return ""


def probe_repo(repo_id: str, revision: str | None, repo_type: str, *, what: str, fetch: str) -> str:
    """The commit `revision` names on the Hub, asked once within PROBE_TIMEOUT_S; ConfigError
    (one line) when the Hub cannot be reached, the repo or revision does not exist, or it is gated.

    The request runs in a daemon thread so that a resolver or a connect that hangs (no network,
    a firewall dropping packets) costs PROBE_TIMEOUT_S and no more."""
    from huggingface_hub import HfApi, constants

    result: dict[str, Any] = {}

    def ask() -> None:
        try:
            info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type,
                                     timeout=PROBE_TIMEOUT_S)
            result["commit"] = info.sha
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    worker = threading.Thread(target=ask, daemon=True, name="hub-probe")
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    endpoint = constants.ENDPOINT
    if worker.is_alive():
        reason = f"did not answer within {PROBE_TIMEOUT_S:g} s"
        raise HubUnreachable(f"{what} is not in the Hugging Face cache and the Hub ({endpoint}) {reason}; "
                             f"fetch it where there is network: {fetch}", _retry_line(what, endpoint, reason))
    if "error" in result:
        error = result["error"]
        line = hub_error_line(error, what=what, repo_id=repo_id, revision=revision, endpoint=endpoint,
                              fetch=fetch)
        if _hub_answered(error):
            raise ConfigError(line)
        raise HubUnreachable(line, _retry_line(what, endpoint, f"cannot be reached ({_first_line(error)})"))
    return str(result.get("commit") or "")


def _hub_answered(error: BaseException) -> bool:
    """Whether `error` is the Hub's own answer about the repo (not found, gated, a refused token),
    which asking again would not change."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(error, (RevisionNotFoundError, GatedRepoError, RepositoryNotFoundError)):
        return True
    return isinstance(error, HfHubHTTPError) and getattr(error.response, "status_code", 0) == 401


def _retry_line(what: str, endpoint: str, reason: str) -> str:
    return (f"{what}: the Hub ({endpoint}) {reason}; nothing was downloaded. Check the network "
            "(HF_ENDPOINT, a proxy) and run the same command again")


def hub_error_line(error: BaseException, *, what: str, repo_id: str, revision: str | None,
                   endpoint: str, fetch: str) -> str:
    """One line for a failed Hub request: what failed, why, and what to do."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(error, RevisionNotFoundError):
        return f"{what}: revision {revision!r} not found in {repo_id} on the Hub ({endpoint})"
    if isinstance(error, GatedRepoError):
        return (f"{what}: {repo_id} is gated on the Hub; accept its terms on the model page and set "
                "HF_TOKEN (or run `hf auth login`)")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{what}: no repo {repo_id} on the Hub ({endpoint}), or it is private "
                "(set HF_TOKEN for a private repo)")
    if isinstance(error, HfHubHTTPError) and getattr(error.response, "status_code", 0) == 401:
        return f"{what}: the Hub ({endpoint}) refused the token (HTTP 401); check HF_TOKEN"
    reason = _first_line(error)
    return (f"{what} is not in the Hugging Face cache and the Hub ({endpoint}) cannot be reached "
            f"({reason}); fetch it where there is network: {fetch}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def download_snapshot(repo_id: str, revision: str | None, repo_type: str, patterns: list[str] | None,
                      *, what: str, fetch: str, local_dir: Path | None = None,
                      say: Callable[[str], None] | None = None) -> Path:
    """Download one snapshot (into the cache, or into `local_dir`), progress as whole lines.

    huggingface_hub writes each file to a temporary `*.incomplete` name and renames it into place
    when its size is right (a dropped connection is retried within the call): an interrupted
    download leaves no partial file where a reader looks, and a rerun keeps the files already
    whole. Failures are ConfigError (bad id, gated, not found) or
    DownloadFailed (the network, the disk)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub import constants

    say = say or _print_line
    say(f"downloading {repo_id}" + (f"@{revision}" if revision else "") +
        f" from {constants.ENDPOINT}" + (f" into {local_dir}" if local_dir else f" into {hub_cache_dir()}"))
    started = time.monotonic()
    try:
        folder = snapshot_download(repo_id, revision=revision, repo_type=repo_type,
                                   allow_patterns=patterns, local_dir=local_dir,
                                   tqdm_class=line_progress(repo_id, say))
    except (RevisionNotFoundError, GatedRepoError, RepositoryNotFoundError) as e:
        raise ConfigError(hub_error_line(e, what=what, repo_id=repo_id, revision=revision,
                                         endpoint=constants.ENDPOINT, fetch=fetch)) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise DownloadFailed(f"{what}: download from {constants.ENDPOINT} failed ({_first_line(e)}); "
                             f"run it again to continue: {fetch}") from None
    except Exception as e:  # httpx errors that escape the client's own retries
        raise DownloadFailed(f"{what}: download from {constants.ENDPOINT} failed ({_first_line(e)}); "
                             f"run it again to continue: {fetch}") from None
    size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and ".cache" not in p.parts)
    say(f"downloaded {repo_id} ({human_bytes(size)}) in {time.monotonic() - started:.1f} s: {folder}")
    return Path(folder)


def _print_line(text: str) -> None:
    print(text, flush=True)


def line_progress(label: str, say: Callable[[str], None]) -> type:
    """A tqdm class for snapshot_download that draws nothing and says the bytes done as a whole
    line every PROGRESS_EVERY_S (and at the end): readable in a job's log, no carriage returns."""
    from tqdm import tqdm

    class LineProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = _Discard()
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            self._said_at = time.monotonic()
            # the bytes bar of the whole snapshot; the files bar and the reconstruction bar stay quiet
            self._speaks = self.unit == "B" and not str(self.desc).startswith("Reconstruct")

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self._speaks and time.monotonic() - self._said_at >= PROGRESS_EVERY_S:
                self._say()
            return shown

        def _say(self) -> None:
            self._said_at = time.monotonic()
            total = self.total or 0
            part = f" of {human_bytes(total)} ({100 * self.n / total:.0f}%)" if total else ""
            rate = self.format_dict.get("rate")
            speed = f", {human_bytes(rate)}/s" if rate else ""
            say(f"download {label}: {human_bytes(self.n)}{part}{speed}")

    return LineProgress


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


