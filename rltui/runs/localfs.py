"""The on-disk contract: the localfs root, its layout, names, atomic writers and readers.

Standard library only: the trainer and the evaluator import this module too, and the manager
must start without torch. Every path that a name is joined into goes through `validate_name`, so
nothing from a flag, a config or an S3 key can escape the root.

Layout (../shared/DESIGN.md):

    training_runs/RUN/{config.yaml,status.json,training_state/step_N/,logs/,tensorboard/}
    eval_runs/RUN_DATASET/{eval_config.yaml,step_N_DATASET/,consolidated_metrics.csv}
    archive/  jobs/JOB_ID/  datasets/NAME/  models/NAME/  rl_runs/ (legacy, read-only)
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

ROOT_ENV = "LOCALFS_ROOT"
DEFAULT_ROOT = "~/localfs"
CHECKPOINT_INFO = "training_info.json"
STEP_LATEST = "step_latest"
STAGING_PREFIX = ".tmp_"
FORMAT_VERSION = 1

_RUN_NAME = re.compile(r"^run_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(_\d+)?$")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_MAX = 255  # bytes in one folder name on Linux filesystems (ext4, xfs, btrfs, tmpfs)


class BadName(ValueError):
    """A run, dataset, job or model name that could escape the root or is malformed."""


class DamagedFile(Exception):
    """A file that exists but cannot be read as what it should be; carries the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ---------------------------------------------------------------- names


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is one safe path segment, else raise BadName naming it.

    Refused: empty, '.', '..', anything with '/', '\\' or NUL, a leading dot or dash, and
    anything outside letters, digits, '.', '_' and '-'.
    """
    if not isinstance(name, str) or not name:
        raise BadName(f"bad {what}: {name!r} (empty)")
    if "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise BadName(f"bad {what}: {name!r} (must be a single folder name inside the root)")
    if ".." in name or not _SAFE_NAME.match(name):
        raise BadName(
            f"bad {what}: {_short(name)!r} (use letters, digits, '.', '_' and '-'; no leading dot or '..')"
        )
    _fits_name_max(name, what)
    return name


def _fits_name_max(name: str, what: str) -> None:
    if len(name.encode("utf-8")) > NAME_MAX:
        raise BadName(f"bad {what}: {_short(name)!r} is {len(name.encode('utf-8'))} bytes long; "
                      f"a folder name may have at most {NAME_MAX}")


def _short(name: str) -> str:
    """A name as quoted in one line: a very long one is cut (it is still recognisable)."""
    return name if len(name) <= 80 else name[:60] + "…" + name[-10:]


def validate_dataset_name(name: str) -> str:
    """Dataset names start with a letter, so `RUN_DATASET` folders split without ambiguity."""
    validate_name(name, "dataset name")
    if not name[0].isalpha():
        raise BadName(f"bad dataset name: {name!r} (must start with a letter)")
    return name


def is_run_name(name: str) -> bool:
    return bool(_RUN_NAME.match(name))


def validate_run_name(name: str) -> str:
    validate_name(name, "run name")
    return name


def run_name_for(when: _dt.datetime) -> str:
    return when.strftime("run_%Y-%m-%d_%H-%M-%S")


# ---------------------------------------------------------------- the root and its layout


def resolve_root(arg: str | os.PathLike[str] | None = None) -> Path:
    """`--root`, else `$LOCALFS_ROOT`, else `~/localfs`; made absolute, not created."""
    raw = arg if arg not in (None, "") else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(os.path.expanduser(str(raw))).absolute()


def existing_root(root: Path) -> Path:
    """`root` if it is a folder; else BadName, one line: a reader never makes one (a mistyped
    `--root` must not become a new, empty localfs that the next job then writes into)."""
    if not root.is_dir():
        raise BadName(f"no localfs at {root} (pass --root DIR or set ${ROOT_ENV}; "
                      "`rltui --batch train`, `fetch` or `demo` make one, or mkdir it)")
    return root


@dataclass(frozen=True)
class Layout:
    """Every path of the layout. Names are validated before they are joined."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # top-level folders
    @property
    def training_runs(self) -> Path:
        return self.root / "training_runs"

    @property
    def eval_runs(self) -> Path:
        return self.root / "eval_runs"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def completed_archive(self) -> Path:
        return self.archive / "completed_runs"

    @property
    def important_checkpoints(self) -> Path:
        return self.archive / "important_checkpoints"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def rl_runs(self) -> Path:
        return self.root / "rl_runs"

    def ensure(self) -> "Layout":
        for p in (self.training_runs, self.eval_runs, self.jobs, self.datasets, self.models):
            p.mkdir(parents=True, exist_ok=True)
        return self

    # a training run
    def run_dir(self, run: str) -> Path:
        return self.training_runs / validate_run_name(run)

    def run_config(self, run: str) -> Path:
        return self.run_dir(run) / "config.yaml"

    def run_status(self, run: str) -> Path:
        return self.run_dir(run) / "status.json"

    def stop_request(self, run: str) -> Path:
        """Created by the keeper or a user to ask the trainer to save and exit at a step boundary."""
        return self.run_dir(run) / "STOP"

    def training_state(self, run: str) -> Path:
        return self.run_dir(run) / "training_state"

    def step_dir(self, run: str, step: int) -> Path:
        return self.training_state(run) / step_dir_name(step)

    def step_latest(self, run: str) -> Path:
        return self.training_state(run) / STEP_LATEST

    def logs_dir(self, run: str) -> Path:
        return self.run_dir(run) / "logs"

    def train_log(self, run: str) -> Path:
        return self.logs_dir(run) / "train_log.jsonl"

    def rollouts_log(self, run: str) -> Path:
        return self.logs_dir(run) / "rollouts.jsonl"

    def ratios_log(self, run: str) -> Path:
        return self.logs_dir(run) / "ratios.jsonl"

    def tensorboard_dir(self, run: str) -> Path:
        return self.run_dir(run) / "tensorboard"

    # evaluation results
    def eval_dir(self, run: str, dataset: str) -> Path:
        folder = f"{validate_name(run, 'run name')}_{validate_dataset_name(dataset)}"
        _fits_name_max(f"step_{10**9}_{dataset}", "dataset name (in its step folders)")
        _fits_name_max(folder, "run and dataset names (together, as an eval folder)")
        return self.eval_runs / folder

    def eval_config(self, run: str, dataset: str) -> Path:
        return self.eval_dir(run, dataset) / "eval_config.yaml"

    def eval_step_dir(self, run: str, dataset: str, step: int) -> Path:
        return self.eval_dir(run, dataset) / f"step_{int(step)}_{dataset}"

    def consolidated_metrics(self, run: str, dataset: str) -> Path:
        return self.eval_dir(run, dataset) / "consolidated_metrics.csv"

    def eval_status(self, run: str, dataset: str) -> Path:
        """Progress of a running evaluation, for the manager."""
        return self.eval_dir(run, dataset) / "eval_status.json"

    # jobs
    def job_dir(self, job_id: str) -> Path:
        return self.jobs / validate_name(job_id, "job id")

    def job_spec(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.json"

    def job_state(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "state.json"

    def job_log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output.log"

    # data and models
    def dataset_dir(self, name: str) -> Path:
        return self.datasets / validate_name(name, "dataset folder")

    def model_dir(self, name: str) -> Path:
        return self.models / validate_name(name, "model name")

    def legacy_run_dir(self, name: str) -> Path:
        return self.rl_runs / validate_name(name, "legacy run name")


def step_dir_name(step: int) -> str:
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise BadName(f"bad step: {step!r}")
    return f"step_{int(step)}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def eval_dir_dataset(run: str, folder_name: str) -> str | None:
    """The dataset of an `eval_runs/RUN_DATASET` folder of `run`, or None if it is not run's."""
    prefix = run + "_"
    if not folder_name.startswith(prefix):
        return None
    dataset = folder_name[len(prefix):]
    return dataset if dataset and dataset[0].isalpha() else None


# ---------------------------------------------------------------- new runs


def create_run_dir(layout: Layout, when: _dt.datetime | None = None) -> str:
    """Create a new, unique run folder and return its name.

    `run_YYYY-MM-DD_HH-MM-SS`; a second run in the same second gets `_2`, `_3`, ... The folder is
    claimed with mkdir, which is atomic, so two processes never get the same name.
    """
    when = when or _dt.datetime.now()
    base = run_name_for(when)
    layout.training_runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}_{n}"
        try:
            (layout.training_runs / name).mkdir()
            return name
        except FileExistsError:
            continue
    raise RuntimeError(f"could not find a free run name for {base}")


# ---------------------------------------------------------------- atomic writers


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary name in the same folder, flush, fsync, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: Path, obj: Any, *, durable: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_text_atomic(path, text, durable=durable)


def dump_yaml(obj: Any) -> str:
    """YAML text for obj; falls back to JSON (which is valid YAML) when PyYAML is missing."""
    try:
        import yaml  # runtime dependency, but localfs must work on the standard library alone
    except ImportError:
        return json.dumps(obj, indent=2, default=_json_default) + "\n"
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def write_yaml_atomic(path: Path, obj: Any, *, durable: bool = True) -> None:
    write_text_atomic(path, dump_yaml(obj), durable=durable)


def write_csv_atomic(
    path: Path, header: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([row.get(h, "") for h in header] if isinstance(row, dict) else row)
    write_text_atomic(path, buf.getvalue())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one whole line with a single write on an O_APPEND descriptor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------- readers


def read_json(path: Path) -> Any:
    """Read a JSON file; a damaged one raises DamagedFile with its path (FileNotFoundError passes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DamagedFile(path, f"unreadable: {e.strerror or e}") from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(path, f"not valid JSON: {e}") from None


def read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


def read_yaml(path: Path) -> Any:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except ValueError as e:
            raise DamagedFile(path, f"not JSON and PyYAML is missing: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DamagedFile(path, f"not valid YAML: {e}") from None


def read_last_jsonl(path: Path, max_bytes: int = 65536) -> dict[str, Any] | None:
    """The last complete line of a JSONL file, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a first, cut line or a torn one
        if isinstance(obj, dict):
            return obj
    return None


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every whole JSON object line; torn or damaged lines are skipped."""
    with open(path, "rb") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj
