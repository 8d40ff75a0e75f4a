"""Full-state checkpoints: everything the loop needs to continue bitwise-identically.

    training_state/step_N/
      model/                 the LoRA adapter (peft save_pretrained; loads with PeftModel)
      optimizer.pt           optimizer.state_dict()   } torch.load(..., weights_only=True)
      scheduler.pt           scheduler.state_dict()   }
      rng/rank_K.pt          torch, CUDA, python, numpy and sampling-generator states of rank K,
                             as tensors and plain numbers (weights_only loads them)
      training_info.json     written last by localfs.finalize_checkpoint (sizes, sha256)

Saving is collective: every rank calls `save_checkpoint` at the same step. Rank 0 creates the
staging folder and tells the others its path; each rank writes its RNG file; after a barrier rank
0 seals the folder, points `step_latest` at it and applies retention; a last barrier releases all.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rltui.runs import checkpoints, disk, localfs
from trainer.distributed import Dist
from trainer.runfiles import MODEL_DIR

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_DIR = "rng"
SAVE_SLEEP_ENV = "RLTUI_TEST_SAVE_SLEEP"  # test-only: pause inside a save, to aim a kill there
# The base's embedding weights are never saved with the adapter: rltui never resizes the vocabulary,
# so the base has them as they are. peft's default ("auto") decides by comparing the base's
# config.json with the model, and for a base named by Hub id (an SFT adapter from the Hub) asked the
# Hub for it at every save: a request a checkpoint, a stall on a flaky network, two warnings each on
# a box without one (tests/trainer/test_hub_models.py). "auto" also saved them whole (~0.5 GB for
# Qwen2.5-1.5B) when the LoRA targets embed_tokens, where the LoRA weights alone reproduce the model.
EMBEDDINGS_SAVED = False


def rng_file(rank: int) -> str:
    return f"{RNG_DIR}/rank_{rank}.pt"


# ---------------------------------------------------------------- RNG state as plain tensors


def capture_rng(sampler: torch.Generator) -> dict[str, Any]:
    """This process's random states, as tensors and numbers only (no pickled objects)."""
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "sampler": sampler.get_state(),
        "python_version": version,
        "python_state": torch.tensor(state, dtype=torch.int64),
        "python_gauss": gauss,
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gauss": float(cached)}
    except ImportError:
        pass
    return out


def restore_rng(state: dict[str, Any], sampler: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    sampler.set_state(state["sampler"])
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["cached_gauss"]))


# ---------------------------------------------------------------- saving


@dataclass
class SaveResult:
    step: int
    path: Path
    seconds: float
    deleted: list[int]


def save_checkpoint(
    d: Dist,
    training_state: Path,
    step: int,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: torch.Generator,
    info: dict[str, Any],
    keep_last: int,
    keep_every: int,
) -> SaveResult:
    """Write step_N collectively (see module docstring); returns on every rank after the save."""
    started = time.monotonic()
    staging = None
    try:
        staging = d.broadcast(str(checkpoints.staging_dir(training_state, step)) if d.is_main else None)
        staging = Path(staging)
        rng_path = staging / rng_file(d.rank)
        rng_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(capture_rng(sampler), rng_path)
        if d.is_main:
            model.save_pretrained(str(staging / MODEL_DIR), save_embedding_layers=EMBEDDINGS_SAVED)
            torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
            torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
            _test_pause()
        d.barrier()  # every rank's RNG file is in the staging folder
        final = training_state / localfs.step_dir_name(step)
        deleted: list[int] = []
        if d.is_main:
            full = dict(info, step=step, world_size=d.world_size,
                        rng_files=[rng_file(r) for r in range(d.world_size)])
            checkpoints.finalize_checkpoint(staging, final, full)
            checkpoints.update_step_latest(training_state, step)
            deleted = apply_retention(training_state, keep_last, keep_every)
    except Exception as e:
        if not disk.is_full(e):
            raise
        raise disk_full(training_state, staging, step) from None
    d.barrier()  # nobody moves on (or exits) before the checkpoint is sealed
    return SaveResult(step, final, time.monotonic() - started, deleted)


def disk_full(training_state: Path, staging: Path | None, step: int) -> disk.DiskFull:
    """The one-line error of a save that filled the disk; its staging folder is removed (the
    space it took comes back; step_latest still names the last complete checkpoint)."""
    previous = checkpoints.latest_complete_step(training_state)
    needed = disk.tree_size(training_state / localfs.step_dir_name(previous)) if previous is not None else None
    if staging is not None:
        needed = max(needed or 0, disk.tree_size(staging)) or None
        shutil.rmtree(staging, ignore_errors=True)
    return disk.DiskFull(disk.describe(training_state, needed, f"checkpoint step {step}"))


def _test_pause() -> None:
    pause = float(os.environ.get(SAVE_SLEEP_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)


# ---------------------------------------------------------------- retention


def retention_victims(steps: list[int], keep_last: int, keep_every: int, protect: set[int]) -> list[int]:
    """Steps to delete: all but the last `keep_last`, every `keep_every`-th, and `protect`."""
    ordered = sorted(steps)
    keep = set(ordered[-keep_last:]) | set(protect)
    if keep_every > 0:
        keep |= {s for s in ordered if s % keep_every == 0}
    return [s for s in ordered if s not in keep]


def apply_retention(training_state: Path, keep_last: int, keep_every: int) -> list[int]:
    """Delete old complete checkpoints of this run; never the one `step_latest` names.

    A checkpoint is renamed to a `.tmp_` name before removal, so a crash mid-delete leaves
    nothing that looks like a checkpoint.
    """
    complete = [s for s, p in checkpoints.list_step_dirs(training_state) if checkpoints.is_complete(p)]
    latest = checkpoints.read_step_latest(training_state)
    protect = {latest} if latest is not None else set(complete)
    victims = retention_victims(complete, keep_last, keep_every, protect)
    for step in victims:
        path = training_state / localfs.step_dir_name(step)
        doomed = training_state / f"{localfs.STAGING_PREFIX}delete.{path.name}.{os.getpid()}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return victims


def remove_interrupted_saves(training_state: Path) -> list[Path]:
    """Staging folders left by a killed save (never loadable); removed when a session starts."""
    found = checkpoints.list_staging_dirs(training_state)
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def repair_step_latest(training_state: Path) -> None:
    """Point step_latest at the newest complete checkpoint (a kill can land between the two)."""
    newest = checkpoints.latest_complete_step(training_state)
    if newest is not None and checkpoints.read_step_latest(training_state) != newest:
        checkpoints.update_step_latest(training_state, newest)


# ---------------------------------------------------------------- loading


def load_training_state(
    step_dir: Path, d: Dist, *, optimizer: torch.optim.Optimizer, scheduler: Any,
    sampler: torch.Generator, allow_missing_rng: bool = False,
) -> None:
    """Optimizer, scheduler and this rank's RNG from `step_dir` (the adapter is loaded earlier).

    With `allow_missing_rng` (a resume at another world size) a rank without a saved RNG file
    keeps its freshly seeded generators.
    """
    optimizer.load_state_dict(torch.load(step_dir / OPTIMIZER_FILE, map_location="cpu",
                                         weights_only=True))
    scheduler.load_state_dict(torch.load(step_dir / SCHEDULER_FILE, weights_only=True))
    path = step_dir / rng_file(d.rank)
    if path.exists() or not allow_missing_rng:
        restore_rng(torch.load(path, weights_only=True), sampler)


# ---------------------------------------------------------------- a full disk


def end_on_full_disk(error: BaseException, where: Path, log: Any = None) -> int:
    """A session that filled the disk ends here: one line on stderr naming the disk and the space
    needed (no traceback), status.json marked failed with it (when even that can be written),
    and DISK_FULL_EXIT, which the restart policy does not restart."""
    import sys

    message = str(error) if isinstance(error, disk.DiskFull) else disk.describe(where)
    if os.environ.get("RANK", "0") == "0":
        print(f"rl_runner: error: {message}", file=sys.stderr, flush=True)
    if log is not None:
        try:
            from trainer.runlog import Phase

            log.phase(Phase.FAILED, error=message)
        except OSError:
            pass  # not even status.json fits: the keeper still records the job's end
    return disk.DISK_FULL_EXIT
