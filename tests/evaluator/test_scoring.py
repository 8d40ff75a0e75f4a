"""Evaluator pieces without a model: subsets, settings hash, pass@k, the consolidated table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evaluator.results import EvalFiles
from evaluator.scoring import EvalSettings, pass_at_k, subset_indices
from rltui.runs import localfs


def _settings(**changes) -> EvalSettings:
    base = dict(dataset="arith_r1_template", split="test", template="r1_template",
                base_model="/m", subset_frac=0.5, subset_seed=1234, questions=(1, 3),
                max_new_tokens=16, num_samples=1, temperature=0.0, sample_seed=0,
                rewards=(("correctness", 1.0),))
    base.update(changes)
    return EvalSettings(**base)


def test_subset_is_deterministic_sorted_and_of_the_asked_size() -> None:
    picked = subset_indices(300, 0.1)
    assert picked == subset_indices(300, 0.1) and list(picked) == sorted(picked)
    assert len(picked) == 30 and len(set(picked)) == 30
    assert subset_indices(300, 0.1, seed=7) != picked
    assert subset_indices(5, 0.01) and len(subset_indices(5, 0.01)) == 1
    assert subset_indices(4, 1.0) == (0, 1, 2, 3)


def test_settings_hash_follows_what_changes_results() -> None:
    assert _settings().hash() == _settings().hash()
    for change in ({"max_new_tokens": 32}, {"questions": (1, 4)}, {"num_samples": 2},
                   {"rewards": (("correctness", 1.0), ("format_strict", 0.5))},
                   {"base_model": "/other"}):
        assert _settings(**change).hash() != _settings().hash()


def test_pass_at_k_counts_questions_with_any_correct_sample() -> None:
    records = [{"index": 1, "correct": False}, {"index": 1, "correct": True},
               {"index": 2, "correct": False}, {"index": 2, "correct": False}]
    assert pass_at_k(records) == 0.5


def _summary(step: int, accuracy: float, settings_hash: str = "h", error=None) -> dict:
    return {"step": step, "accuracy": accuracy, "format_rate": 1.0, "mean_reward": accuracy,
            "mean_completion_length": 10.0, "n": 4, "seconds": 1.0, "tokens_per_s": 40.0,
            "settings_hash": settings_hash, "error": error}


def test_consolidated_is_rebuilt_from_good_summaries_sorted_by_step(tmp_path: Path) -> None:
    files = EvalFiles(localfs.Layout(tmp_path), "run_x", "arith_r1_template")
    for s in (_summary(10, 0.5), _summary(2, 0.25), _summary(5, 0.0, error="timed out"),
              _summary(7, 0.75, settings_hash="old")):
        localfs.write_json_atomic(files.summary_path(s["step"]), s)
    files.summary_path(3).parent.mkdir(parents=True)
    files.summary_path(3).write_text("{ torn")  # a damaged summary is skipped, not a crash
    files.rebuild_consolidated("h")
    table = pd.read_csv(localfs.Layout(tmp_path).consolidated_metrics("run_x", "arith_r1_template"))
    assert list(table["step"]) == [2, 10]
    assert list(table["accuracy"]) == [0.25, 0.5]
    assert "pass_at_k" not in table.columns


def test_is_done_needs_same_settings_same_checkpoint_and_no_error(tmp_path: Path) -> None:
    files = EvalFiles(localfs.Layout(tmp_path), "run_x", "arith_r1_template")
    summary = dict(_summary(1, 0.5), checkpoint={"fingerprint": "abc"})
    localfs.write_json_atomic(files.summary_path(1), summary)
    assert files.is_done(1, "h", "abc")
    assert not files.is_done(1, "other", "abc")
    assert not files.is_done(1, "h", "re-saved")
    assert not files.is_done(2, "h", "abc")
    localfs.write_json_atomic(files.summary_path(1), dict(summary, error="boom"))
    assert not files.is_done(1, "h", "abc")
