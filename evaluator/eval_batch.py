"""Evaluate the checkpoints of a training run in one process: one base-model load, adapter swaps.

Usage:
    python -m evaluator.eval_batch --training-run RUN [--eval-dataset D] [--steps 1,5,10 | all]
        [--subset-frac F] [--ckpt-path DIR] [--include-base] [--batch-size B]
        [--max-new-tokens T] [--num-samples K] [--timeout-per-step S] [--gpu I] [--force]
        [--root ROOT]

Defaults: the run's own dataset with its test split, every checkpoint, greedy decoding. Results go
to ROOT/eval_runs/RUN_D/ (see evaluator.results). A step evaluated before with the same settings
is skipped unless --force. A step that fails (incomplete checkpoint, adapter that does not load,
timeout) is recorded in its summary.json and the others still run; the exit code is then 1.
Exit codes: 0 every step evaluated or skipped; 1 some step failed; 2 bad input (or another
evaluation writes the same folder now: one writer at a time, its `.writer.lock`); 130 stopped.

Progress goes to eval_runs/RUN_D/eval_status.json after every generation batch; a keeper that
sees no change there for its hang timeout kills the job. For the tests of that:
RLTUI_TEST_EVAL_STALL_AT_STEP=k stops making progress when step k's evaluation begins (sleeps
forever, eval_status.json untouched).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from evaluator.checkpoints import Checkpoint
from evaluator.plan import EvalPlan, make_plan
from evaluator.results import EvalFiles, StatusFile
from evaluator.scoring import StepTimeout, evaluate_prompts
from rltui.runs import writer_lock
from trainer.errors import ConfigError, DownloadFailed
from trainer.progress import format_duration

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
STALL_ENV = "RLTUI_TEST_EVAL_STALL_AT_STEP"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"eval_batch: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m evaluator.eval_batch",
                description="Evaluate a run's checkpoints with one base-model load.")
    p.add_argument("--training-run", metavar="RUN",
                   help="run under training_runs/ (with --ckpt-path: the name of the results)")
    p.add_argument("--eval-dataset", metavar="D", help="SOURCE_TEMPLATE (default: the run's dataset)")
    p.add_argument("--steps", default="all", help="comma-separated steps, or 'all' (default)")
    p.add_argument("--subset-frac", type=float, default=1.0, metavar="F",
                   help="evaluate this fraction of the test split (same questions every time)")
    p.add_argument("--ckpt-path", type=Path, metavar="DIR",
                   help="an adapter folder, a step_N folder, or a folder of step_N folders")
    p.add_argument("--include-base", action="store_true", help="also evaluate the base model as step 0")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="sequences per batch")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="T",
                   help="completion length (default: the run's max_completion_length, else 256)")
    p.add_argument("--num-samples", type=int, default=1, metavar="K",
                   help="completions per question; K > 1 samples and adds pass@k")
    p.add_argument("--timeout-per-step", type=float, default=None, metavar="S",
                   help="seconds one checkpoint may take; past it the step is recorded as failed")
    p.add_argument("--gpu", type=int, default=None, metavar="I", help="CUDA device (default: the first)")
    p.add_argument("--force", action="store_true", help="evaluate again steps already evaluated")
    p.add_argument("--root", default=None, help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library advice (deprecations, peft's note on an adapter's base path) is not job output.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Could not find a config file")
    rank = _torchrun_rank()
    if rank is not None:
        print(f"eval_batch: started under torchrun (rank {rank}); evaluation runs in one process "
              "on one device and never initialises a process group", flush=True)
        if rank != 0:
            print(f"eval_batch: rank {rank} has nothing to do; rank 0 evaluates", flush=True)
            return 0
    try:
        plan = make_plan(args)
    except ConfigError as e:
        sys.stderr.write(f"eval_batch: error: {e}\n")
        return 2
    except DownloadFailed as e:
        sys.stderr.write(f"eval_batch: error: {e}\n")
        return 1
    folder = plan.layout.eval_dir(plan.run, plan.settings.dataset)
    folder.mkdir(parents=True, exist_ok=True)
    try:  # one writer per evaluation folder, as per run (rltui.runs.writer_lock)
        lock = writer_lock.acquire(folder)
    except writer_lock.WriterBusy as e:
        who = e.holder.describe() if e.holder else "another process"
        then = f"stop it (rltui --batch stop {e.holder.job})" if e.holder and e.holder.job else "wait until it ends"
        sys.stderr.write(f"eval_batch: error: evaluation {folder.name} is being written by {who}; "
                         f"one writer at a time: {then}\n")
        return 2
    try:
        # The same checkpoint gives the same completions in every evaluation on this kind of card:
        # no decode kernel or step is picked by timing (trainer.triton_base.repeatable).
        from trainer.triton_base import decode_repeatably

        decode_repeatably()
        return Evaluation(plan).run()
    except KeyboardInterrupt:
        sys.stderr.write("eval_batch: stopped\n")
        return 130
    finally:
        lock.release()


def _torchrun_rank() -> int | None:
    if not any(v in os.environ for v in TORCHRUN_VARS):
        return None
    try:
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


def remaining_seconds(step_seconds: list[float], left: int) -> float | None:
    """The time `left` more checkpoints take, from those done so far (`step_seconds`, in order),
    leaving out the first once there are others: it carries the warm-up (on a GPU the fast
    generation's compiles and graph captures, a minute or more, trainer/fast_generation.py)."""
    timed = step_seconds[1:] or step_seconds
    return left * sum(timed) / len(timed) if timed else None


@dataclass
class StepOutcome:
    step: int
    skipped: bool = False
    error: str | None = None
    summary: dict[str, Any] | None = None


class Evaluation:
    """One evaluation: load the base once, then each checkpoint's adapter in turn (hot-swapped)."""

    def __init__(self, plan: EvalPlan) -> None:
        self.plan = plan
        self.files = EvalFiles(plan.layout, plan.run, plan.settings.dataset)
        self.status = StatusFile(plan.layout.eval_status(plan.run, plan.settings.dataset),
                                 plan.run, plan.settings.dataset, total=len(plan.checkpoints))
        self.switcher: Any = None  # evaluator.adapters.AdapterSwitcher, once the base is loaded
        self.tokenizer: Any = None
        self.step_seconds: list[float] = []

    def run(self) -> int:
        plan, settings_hash = self.plan, self.plan.settings.hash()
        self.files.write_config(plan.config_file())
        for line in plan.notes:
            print(f"eval_batch: {line}", flush=True)
        todo = [c for c in plan.checkpoints if plan.force or not self.files.is_done(
            c.step, settings_hash, c.fingerprint)]
        kept = {} if plan.force else self._larger_results(todo)
        todo = [c for c in todo if c.step not in kept]
        print(f"eval_batch: {plan.run} on {plan.settings.dataset} ({len(plan.prompts_examples)} "
              f"questions x {plan.settings.num_samples}), {len(plan.checkpoints)} steps, "
              f"{len(plan.checkpoints) - len(todo)} already evaluated, device {plan.device}",
              flush=True)
        self.status.write("loading")
        if any(not c.problems for c in todo):
            self._load_base()
        first_error: str | None = None  # the first failed step's reason, for the closing error line
        for index, ckpt in enumerate(plan.checkpoints, 1):
            if ckpt not in todo:
                self.status.skipped.append(ckpt.step)
                why = (f"kept its result on {kept[ckpt.step]} questions (this evaluation has "
                       f"{len(plan.prompts_examples)}; --force replaces it)" if ckpt.step in kept
                       else "already evaluated with these settings")
                print(f"[{index}/{len(plan.checkpoints)}] step {ckpt.step}: {why}, skipped", flush=True)
                continue
            eta = self._eta(index, todo)
            self.status.write("evaluating", current_step=ckpt.step, eta_s=eta)
            _test_stall(ckpt.step)
            outcome = self._evaluate(ckpt, settings_hash, lambda done, total: self.status.write(
                "evaluating", current_step=ckpt.step, eta_s=eta, completions=(done, total)))
            (self.status.failed if outcome.error else self.status.done).append(ckpt.step)
            if outcome.error and first_error is None:
                first_error = f"step {ckpt.step}: " + " ".join(str(outcome.error).split())  # one line
            self.files.rebuild_consolidated(settings_hash)
            print(self._progress_line(index, outcome, todo), flush=True)
        self.files.rebuild_consolidated(settings_hash)
        failed = self.status.failed
        self.status.write("failed" if failed else "completed",
                          error=f"steps failed: {failed}" if failed else None)
        print(f"eval_batch: done: {len(self.status.done)} evaluated, {len(self.status.skipped)} "
              f"skipped, {len(failed)} failed; results in {self.files.folder}", flush=True)
        if failed:  # the job's one line on why (rltui.jobs.output.cause_line reads it)
            sys.stderr.write(f"eval_batch: error: {len(failed)} of {len(plan.checkpoints)} checkpoints "
                             f"failed, first {first_error}\n")
            sys.stderr.flush()
        return 1 if failed else 0

    def _larger_results(self, todo: list[Checkpoint]) -> dict[int, int]:
        """Steps whose present result is on more questions than this evaluation would use: a
        smaller subset never silently replaces a larger one's number. {step: its question count}"""
        ours = len(self.plan.prompts_examples)
        kept = {}
        for c in todo:
            s = self.files.read_summary(c.step) or {}
            n = s.get("n")
            if s.get("error") is None and isinstance(n, int) and n > ours:
                kept[c.step] = n
        return kept

    # ------------------------------------------------------------ one step

    def _evaluate(self, ckpt: Checkpoint, settings_hash: str,
                  on_batch: Callable[[int, int], None] | None = None) -> StepOutcome:
        started = time.monotonic()
        deadline = started + self.plan.timeout if self.plan.timeout else None
        checkpoint = {"path": str(ckpt.adapter), "fingerprint": ckpt.fingerprint,
                      "base_only": self.plan.is_base(ckpt)}
        summary: dict[str, Any] = {
            "step": ckpt.step, "dataset": self.plan.settings.dataset, "run": self.plan.run,
            "settings_hash": settings_hash, "checkpoint": checkpoint, "error": None,
            "evaluated_at": time.time(),
        }
        try:
            if ckpt.problems:
                raise _StepFailed(f"checkpoint {ckpt.folder} is incomplete: {'; '.join(ckpt.problems)}")
            model = self._with_adapter(ckpt)
            score = evaluate_prompts(model, self.tokenizer, self.plan.prompts_examples,
                                     self.plan.prompts, self.plan.settings,
                                     batch_size=self.plan.batch_size, deadline=deadline,
                                     on_batch=on_batch)
        except (_StepFailed, ConfigError) as e:
            return self._fail(summary, str(e), started)
        except StepTimeout as e:
            return self._fail(summary, f"timed out after {self.plan.timeout:g}s ({e})", started)
        except Exception as e:  # a failing step is recorded; the batch goes on
            return self._fail(summary, f"{type(e).__name__}: {e}", started)
        summary.update(score.metrics)
        summary["seconds"] = round(time.monotonic() - started, 3)
        summary["generation_seconds"] = round(score.generation_seconds, 3)
        summary["samples"] = len(score.records)
        summary["reward_means"] = score.reward_means
        self.files.write_step(ckpt.step, score.records, summary, score.reward_means)
        self.step_seconds.append(summary["seconds"])
        return StepOutcome(ckpt.step, summary=summary)

    def _fail(self, summary: dict[str, Any], error: str, started: float) -> StepOutcome:
        summary["error"] = error.splitlines()[0] if error else "failed"
        summary["seconds"] = round(time.monotonic() - started, 3)
        self.files.write_failure(summary["step"], summary)
        self.step_seconds.append(summary["seconds"])
        return StepOutcome(summary["step"], error=summary["error"], summary=summary)

    # ------------------------------------------------------------ the model

    def _load_base(self) -> None:
        from evaluator.adapters import AdapterSwitcher
        from trainer.modeling import load_model_and_tokenizer

        started = time.monotonic()
        model, self.tokenizer = load_model_and_tokenizer(
            self.plan.base_path, self.plan.device, self.plan.dtype)
        self.switcher = AdapterSwitcher(model, self.plan.base_path, self.plan.device)
        self.plan.build_prompts(self.tokenizer)
        print(f"eval_batch: base model {self.plan.base_path} loaded in "
              f"{time.monotonic() - started:.1f}s", flush=True)

    def _with_adapter(self, ckpt: Checkpoint) -> Any:
        if self.plan.is_base(ckpt):
            return self.switcher.base()
        try:
            return self.switcher.activate(ckpt.adapter)
        except ConfigError:
            if self.switcher.active is None and self.switcher.has_lora_layers():
                # a failed fresh load may leave LoRA layers behind in the base
                print("eval_batch: reloading the base model after a failed adapter load", flush=True)
                self._load_base()
            raise

    # ------------------------------------------------------------ progress

    def _eta(self, index: int, todo: list[Checkpoint]) -> float | None:
        left = sum(1 for c in self.plan.checkpoints[index - 1:] if c in todo)
        return remaining_seconds(self.step_seconds, left)

    def _progress_line(self, index: int, outcome: StepOutcome, todo: list[Checkpoint]) -> str:
        head = f"[{index}/{len(self.plan.checkpoints)}] step {outcome.step}:"
        eta = self._eta(index + 1, todo)
        tail = f" ETA {format_duration(eta)}" if eta is not None and index < len(self.plan.checkpoints) else ""
        if outcome.error:
            return f"{head} FAILED: {outcome.error}{tail}"
        s = outcome.summary or {}
        extra = f" pass@{self.plan.settings.num_samples} {s['pass_at_k']:.3f}" if "pass_at_k" in s else ""
        return (f"{head} accuracy {s['accuracy']:.3f} format {s['format_rate']:.3f} "
                f"reward {s['mean_reward']:.3f}{extra} ({s['seconds']:.1f}s, "
                f"{s['tokens_per_s']:.0f} tok/s){tail}")


class _StepFailed(Exception):
    pass


def _test_stall(step: int) -> None:
    if os.environ.get(STALL_ENV) and int(os.environ[STALL_ENV]) == step:
        print(f"eval_batch: test stall at step {step} ({STALL_ENV})", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
