"""Readers of the small metadata files of a localfs, each into a record, with a parse cache.

Used by rltui.runs.index. A reader never raises for a damaged or missing file: it returns a record
that says so (and lists the file in `damaged`). Only small files are read: status.json,
config.yaml, training_info.json, summary.json, consolidated_metrics.csv, job.json, state.json,
and the tail of logs/train_log.jsonl.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from rltui.runs import checkpoints, localfs, machine
from rltui.runs.disk import tree_size
from rltui.text import clean
from rltui.runs.records import (
    CheckpointRecord,
    ConfigSummary,
    EvalRecord,
    EvalStepRecord,
    FileError,
    JobRecord,
    JobState,
    trainer_alive,
)

T = TypeVar("T")

_STAGING_STEP = re.compile(r"^\.tmp_(?:old\.)?step_(\d+)\.")
_EVAL_STEP = re.compile(r"^step_(\d+)_(.+)$")
_RUN_TIME = re.compile(r"^run_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})")


class FileCache:
    """Parsed files keyed by path, reused while (inode, mtime, size) is unchanged.

    Checkpoint info files never change once written and the writers replace files by rename
    (a new inode), so a rescan re-parses only what changed. A damaged file's error is cached too.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], Any, DamagedFileError | None]] = {}

    def load(
        self, path: str, parse: Callable[[bytes, str], T], *, dir_fd: int | None = None,
        name: str | None = None,
    ) -> T:
        """Parsed content of `path`; FileNotFoundError when absent, DamagedFile when unreadable.

        With `dir_fd` the file opened is `name` relative to that folder; `path` stays the key.
        """
        try:
            if dir_fd is None:
                fd = os.open(path, os.O_RDONLY)
            else:
                fd = os.open(name or os.path.basename(path), os.O_RDONLY, dir_fd=dir_fd)
        except FileNotFoundError:
            self._entries.pop(path, None)
            raise
        except OSError as e:
            raise localfs.DamagedFile(Path(path), f"unreadable: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            hit = self._entries.get(path)
            if hit is not None and hit[0] == key:
                if hit[2] is not None:
                    raise localfs.DamagedFile(Path(path), hit[2].reason)
                return hit[1]
            try:
                data = _read_fd(fd, st.st_size)
            except OSError as e:
                raise localfs.DamagedFile(Path(path), f"unreadable: {e.strerror or e}") from None
        finally:
            os.close(fd)
        try:
            value = parse(data, path)
        except localfs.DamagedFile as e:
            self._entries[path] = (key, None, DamagedFileError(e.reason))
            raise
        self._entries[path] = (key, value, None)
        return value

    def __len__(self) -> int:
        return len(self._entries)


class DamagedFileError:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read_fd(fd: int, size: int) -> bytes:
    """The whole file: one read when it is as long as fstat said (the usual case)."""
    data = os.read(fd, size + 1)
    if len(data) <= size:
        return data if len(data) == size else data + _read_rest(fd)
    return data + _read_rest(fd)


def _read_rest(fd: int) -> bytes:
    chunks = []
    while True:
        block = os.read(fd, 65536)
        if not block:
            return b"".join(chunks)
        chunks.append(block)


# ---------------------------------------------------------------- parsers


def parse_json(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise localfs.DamagedFile(Path(path), f"not valid JSON: {e}") from None


def parse_json_object(data: bytes, path: str) -> dict[str, Any]:
    obj = parse_json(data, path)
    if not isinstance(obj, dict):
        raise localfs.DamagedFile(Path(path), f"not a JSON object ({type(obj).__name__})")
    return obj


def parse_checkpoint_info(data: bytes, path: str) -> dict[str, Any]:
    """Only what the index keeps of a training_info.json: the file list and when it was made."""
    info = parse_json_object(data, path)
    files = info.get("files")
    total = 0
    if isinstance(files, dict):
        total = sum(m.get("size") or 0 for m in files.values() if isinstance(m, dict)
                    and isinstance(m.get("size"), int))
    return {"files": files, "created": info.get("created"), "total": total}


#: Written by the trainer beside config.yaml: every setting, defaults filled in, by yaml.safe_dump.
RESOLVED_CONFIG = "config_resolved.yaml"


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> Any:
    """The fastest PyYAML loader that builds nothing but dicts, lists and strings.

    A summary needs a few scalars, which `summarize_config` converts itself; skipping the
    resolver (BaseLoader) makes the parse about a third cheaper than the safe loader.
    """
    try:
        import yaml
    except ImportError:
        return None
    return getattr(yaml, "CBaseLoader", None) or yaml.BaseLoader


def parse_config_summary(data: bytes, path: str) -> ConfigSummary:
    """A run's config file to its summary: the block YAML that yaml.safe_dump writes is read
    line by line (4x cheaper, it matters at thousands of runs); anything else goes to PyYAML."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise localfs.DamagedFile(Path(path), f"not UTF-8 text: {e}") from None
    flat = read_dumped_yaml(text)
    if flat is None:
        flat = _flatten(_load_yaml(text, path))
    return summarize_config(flat)


def _load_yaml(text: str, path: str) -> dict[str, Any]:
    loader = _yaml_loader()
    try:
        if loader is None:
            cfg = json.loads(text)
        else:
            import yaml

            cfg = yaml.load(text, Loader=loader)  # noqa: S506 - BaseLoader constructs no objects
    except Exception as e:  # yaml.YAMLError, ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise localfs.DamagedFile(Path(path), f"not valid YAML: {first}") from None
    if cfg is None or isinstance(cfg, str) and cfg in _YAML_NULLS:
        return {}
    if not isinstance(cfg, dict):
        raise localfs.DamagedFile(Path(path), "not a mapping of settings")
    return cfg


_DUMPED_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?: (.*))?$")
_SPECIAL_VALUE_START = frozenset("|>&*!%@`{[\"'#")


def read_dumped_yaml(text: str) -> dict[str, str] | None:
    """Dotted key -> scalar text of block-style YAML of nested mappings (what yaml.safe_dump
    writes); sequences are skipped. None as soon as a line is anything else: quoted or flow
    values, block scalars, anchors, inline comments, wrapped lines."""
    flat: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    skip_deeper_than = -1  # inside a sequence started at this indent
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped[0] == "#":
            continue
        indent = len(line) - len(stripped)
        if skip_deeper_than >= 0:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = -1
        if stripped[0] == "-":
            if stripped == "-" or stripped[1] == " ":
                skip_deeper_than = indent
                continue
            return None
        m = _DUMPED_KEY.match(stripped)
        if m is None:
            return None
        while path and path[-1][0] >= indent:
            path.pop()
        key, value = m.group(1), m.group(2)
        if not value:
            path.append((indent, key))
            continue
        if value[0] in _SPECIAL_VALUE_START or " #" in value:
            if value in ("[]", "{}"):
                continue
            return None
        flat[".".join([k for _i, k in path] + [key])] = value
    return flat


def summarize_config(flat: dict[str, Any]) -> ConfigSummary:
    """The few settings a run list shows, found by their usual names at any nesting level."""
    leaves: dict[str, Any] = {}
    for key, value in flat.items():
        leaves.setdefault(key.rsplit(".", 1)[-1], value)

    def pick(*names: str) -> Any:
        for name in names:
            if name in flat:
                return flat[name]
        for name in names:  # the same name one level down, e.g. "optim.learning_rate"
            if "." not in name and name in leaves:
                return leaves[name]
        return None

    return ConfigSummary(
        model=_as_str(pick("model.base", "base_model", "model_name_or_path", "model.name",
                           "model.path", "model")),
        dataset=_as_str(pick("data.dataset", "dataset.name", "data.name", "train_dataset",
                             "dataset_name", "dataset")),
        lora_r=_as_int(pick("lora.r", "peft.r", "lora_r", "lora.rank", "lora_rank")),
        learning_rate=_as_float(pick("learning_rate", "lr")),
        num_generations=_as_int(pick("num_generations")),
        max_steps=_as_int(pick("total_steps", "max_steps", "steps")),
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_YAML_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


def _as_str(v: Any) -> str | None:
    if v is None or isinstance(v, (list, dict)) or v in _YAML_NULLS:
        return None
    return clean(str(v))  # shown in tables: nothing from a file may drive the terminal


def _as_int(v: Any) -> int | None:
    try:
        return None if v is None or isinstance(v, bool) else int(v)
    except (TypeError, ValueError):
        return None


def _as_float(v: Any) -> float | None:
    try:
        return None if v is None or isinstance(v, bool) else float(v)
    except (TypeError, ValueError):
        return None


def read_config_summary(cache: FileCache, run_dir: str, damaged: list[FileError]) -> ConfigSummary:
    """From config_resolved.yaml (every setting, defaults included) when the trainer wrote one,
    else from config.yaml as given; a damaged file is listed and gives an empty summary."""
    for name in (RESOLVED_CONFIG, "config.yaml"):
        try:
            return cache.load(run_dir + "/" + name, parse_config_summary)
        except FileNotFoundError:
            continue
        except localfs.DamagedFile as e:
            damaged.append(FileError(e.path, e.reason))
            return ConfigSummary()
    return ConfigSummary()


# ---------------------------------------------------------------- checkpoints


def read_checkpoints(
    cache: FileCache, training_state: str, damaged: list[FileError]
) -> list[CheckpointRecord]:
    """Every `step_N` and staging folder of a run's training_state, sorted by step."""
    try:
        entries = list(os.scandir(training_state))
    except FileNotFoundError:
        return []
    except OSError as e:
        damaged.append(FileError(Path(training_state), f"unreadable: {e.strerror or e}"))
        return []
    latest = None
    out: list[CheckpointRecord] = []
    for e in entries:
        name = e.name
        step = localfs.parse_step_dir(name)
        if step is not None:
            if e.is_dir(follow_symlinks=False):
                out.append(_read_checkpoint(cache, e.path, step, damaged))
        elif name == localfs.STEP_LATEST:
            latest = checkpoints.read_step_latest(Path(training_state))
        elif name.startswith(localfs.STAGING_PREFIX) and e.is_dir(follow_symlinks=False):
            m = _STAGING_STEP.match(name)
            path = Path(e.path)
            out.append(
                CheckpointRecord(
                    step=int(m.group(1)) if m else -1,
                    path=path,
                    complete=False,
                    problems=checkpoints.checkpoint_problems(path),
                    size_bytes=tree_size(e.path),
                )
            )
    out.sort(key=lambda c: (c.step, not c.complete, str(c.path)))
    for c in out:  # a problem may quote a file name from training_info.json: shown made safe
        if c.problems:
            c.problems = [clean(p) for p in c.problems]
    if latest is not None:
        for c in out:
            c.is_latest = c.step == latest and c.path.name == localfs.step_dir_name(latest)
    return out


def _read_checkpoint(
    cache: FileCache, path: str, step: int, damaged: list[FileError]
) -> CheckpointRecord:
    info_path = path + "/" + localfs.CHECKPOINT_INFO
    step_path = Path(path)
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return CheckpointRecord(step, step_path, False, checkpoints.checkpoint_problems(step_path), None)
    try:
        # Opened once; the info file and every file it lists are looked up relative to it.
        info = cache.load(info_path, parse_checkpoint_info, dir_fd=dir_fd, name=localfs.CHECKPOINT_INFO)
        problems = checkpoints.listed_file_problems(path, info, dir_fd=dir_fd)
    except (FileNotFoundError, localfs.DamagedFile) as e:
        if isinstance(e, localfs.DamagedFile):
            damaged.append(FileError(Path(info_path), e.reason))
        problems = checkpoints.checkpoint_problems(step_path)
        return CheckpointRecord(step, step_path, False, problems, tree_size(path))
    finally:
        os.close(dir_fd)
    if problems:
        damage = next((p for p in problems if p.startswith("damaged")), None)
        if damage is not None:
            damaged.append(FileError(Path(info_path), damage))
        size = tree_size(path)
    else:
        size = info["total"]
    created = info.get("created")
    return CheckpointRecord(
        step, step_path, not problems, problems, size,
        created=float(created) if isinstance(created, (int, float)) else None,
    )


# ---------------------------------------------------------------- evaluations


def read_eval(cache: FileCache, path: str, run: str, dataset: str) -> EvalRecord:
    """An `eval_runs/RUN_DATASET` folder: consolidated_metrics.csv, plus summary.json of the
    step folders the table does not list yet (a failed step, or one just written)."""
    rec = EvalRecord(run=run, dataset=dataset, path=Path(path), steps=[])
    damaged: list[FileError] = []
    by_step: dict[int, EvalStepRecord] = {}
    csv_path = path + "/consolidated_metrics.csv"
    try:
        for s in cache.load(csv_path, parse_consolidated):
            by_step[s.step] = s
    except FileNotFoundError:
        pass
    except localfs.DamagedFile as e:
        damaged.append(FileError(Path(csv_path), e.reason))
    try:
        entries = list(os.scandir(path))
    except OSError as e:
        rec.error = f"unreadable folder: {e.strerror or e}"
        entries = []
    for e in entries:
        m = _EVAL_STEP.match(e.name)
        if not m or int(m.group(1)) in by_step or not e.is_dir():
            continue
        step = int(m.group(1))
        summary_path = e.path + "/summary.json"
        try:
            s = cache.load(summary_path, parse_json_object)
        except FileNotFoundError:
            continue  # the step is being evaluated; its summary comes last
        except localfs.DamagedFile as err:
            damaged.append(FileError(Path(summary_path), err.reason))
            by_step[step] = EvalStepRecord(step, None, error=f"damaged summary.json: {err.reason}")
            continue
        by_step[step] = _step_from_summary(step, s)
    try:
        rec.progress = cache.load(path + "/eval_status.json", parse_json_object)
    except FileNotFoundError:
        pass
    except localfs.DamagedFile as e:
        damaged.append(FileError(Path(path + "/eval_status.json"), e.reason))
    rec.steps = [by_step[k] for k in sorted(by_step)]
    scored = [s for s in rec.steps if s.accuracy is not None and not s.error]
    if scored:
        best = max(scored, key=lambda s: (s.accuracy, s.step))
        rec.best_accuracy, rec.best_step = best.accuracy, best.step
        rec.last_accuracy, rec.last_step = scored[-1].accuracy, scored[-1].step
    if damaged and rec.error is None:
        rec.error = str(damaged[0])
    rec.damaged = damaged
    return rec


def parse_consolidated(data: bytes, path: str) -> list[EvalStepRecord]:
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise localfs.DamagedFile(Path(path), f"not a valid CSV table: {e}") from None
    out = []
    for i, row in enumerate(rows, start=2):
        step = _as_int(row.get("step"))
        if step is None:
            raise localfs.DamagedFile(Path(path), f"line {i}: bad step {row.get('step')!r}")
        out.append(
            EvalStepRecord(
                step=step,
                accuracy=_as_float(row.get("accuracy") or None),
                format_rate=_as_float(row.get("format_rate") or None),
                mean_reward=_as_float(row.get("mean_reward") or None),
                n=_as_int(row.get("n") or None),
                error=row.get("error") or None,
            )
        )
    return out


def _step_from_summary(step: int, s: dict[str, Any]) -> EvalStepRecord:
    return EvalStepRecord(
        step=_as_int(s.get("step")) if _as_int(s.get("step")) is not None else step,
        accuracy=_as_float(s.get("accuracy")),
        format_rate=_as_float(s.get("format_rate")),
        mean_reward=_as_float(s.get("mean_reward")),
        n=_as_int(s.get("n")),
        error=clean(str(s["error"])) if s.get("error") else None,
    )


# ---------------------------------------------------------------- jobs


def read_job(cache: FileCache, path: str, job_id: str, boot: float | None) -> JobRecord:
    """jobs/ID/job.json (what to run) and state.json (what is happening), into one record."""
    damaged: list[FileError] = []
    spec: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for name, target in (("job.json", spec), ("state.json", state)):
        p = path + "/" + name
        try:
            target.update(cache.load(p, parse_json_object))
        except FileNotFoundError:
            if name == "job.json":
                damaged.append(FileError(Path(p), "missing"))
        except localfs.DamagedFile as e:
            damaged.append(FileError(Path(p), e.reason))
    try:
        js = JobState(state.get("state"))
    except ValueError:
        js = JobState.UNKNOWN
        if state:
            damaged.append(FileError(Path(path + "/state.json"), f"unknown state {state.get('state')!r}"))
    usage = state.get("usage") if isinstance(state.get("usage"), dict) else {}
    gpus = state.get("gpus") if state.get("gpus") is not None else spec.get("gpus")
    rec = JobRecord(
        id=job_id,
        kind=clean(spec["kind"]) if spec.get("kind") else None,
        run=state.get("run") or spec.get("run"),
        state=js,
        argv=[str(a) for a in spec.get("argv") or []],
        gpus=[g for g in gpus if isinstance(g, int)] if isinstance(gpus, list) else None,
        restarts=_as_int(state.get("restarts")) or 0,
        last_reason=clean(state["last_reason"]) if state.get("last_reason") else None,
        cause=clean(state["cause"]) if state.get("cause") else None,
        created=_as_float(spec.get("created")),
        started_at=_as_float(state.get("started_at")),
        ended_at=_as_float(state.get("ended_at")),
        exit_code=_as_int(state.get("exit_code")),
        # null stays null (cost without a price): "unknown" is not "missing"
        usage={k: _as_float(v) for k, v in usage.items() if v is None or _as_float(v) is not None},
        error=str(damaged[0]) if damaged else None,
        path=Path(path),
        keeper_pid=_as_int(state.get("keeper_pid")),
        updated_at=_as_float(state.get("updated_at")),
        boot_time=_as_float(state.get("boot_time")),
    )
    rec.orphaned = js.active and keeper_gone(rec, boot)
    rec.damaged = damaged
    return rec


def keeper_gone(job: JobRecord, boot: float | None) -> bool:
    """The job's keeper is not running: it started before this machine's last boot, or its pid
    is dead (or now belongs to a process newer than the keeper's last write of state.json)."""
    if job.boot_time is not None and boot is not None and abs(job.boot_time - boot) > 2:
        return True
    pid = job.keeper_pid
    if pid is None:
        return False  # not started yet (queued): the launcher or the supervisor decides
    # A state.json without times (hand-written, or from an older writer) is dated by its mtime:
    # a process that started after the file was last written is not its keeper.
    last_write = job.updated_at or job.started_at
    if last_write is None and job.path is not None:
        last_write = _mtime(os.path.join(job.path, "state.json"))
    return not (trainer_alive(pid, last_write) if last_write is not None else machine.pid_alive(pid))


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# ---------------------------------------------------------------- small things


def last_metrics(train_log: str) -> dict[str, Any]:
    """The last line of logs/train_log.jsonl, reading only the end of the file."""
    try:
        size = os.stat(train_log).st_size
    except OSError:
        return {}
    line = localfs.read_last_jsonl(Path(train_log), max_bytes=4096)
    if line is None and size > 4096:  # a long last line: look further back, still only the tail
        line = localfs.read_last_jsonl(Path(train_log), max_bytes=65536)
    # keys and text values are shown (runs table columns, plots' labels): made safe here
    return {clean(k): clean(v) if isinstance(v, str) else v for k, v in (line or {}).items()}


def time_from_run_name(name: str) -> float | None:
    """`run_YYYY-MM-DD_HH-MM-SS` (local time) as epoch seconds."""
    m = _RUN_TIME.match(name)
    if not m:
        return None
    try:
        return _dt.datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S").timestamp()
    except ValueError:
        return None
