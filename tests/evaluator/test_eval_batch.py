"""eval_batch on the tiny model: files and columns, consistency, idempotence, failures, subsets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from evaluator.eval_batch import main, remaining_seconds
from rltui.runs import checkpoints, folders, localfs

DATASET = "arith_r1_template"


def _eval_dir(root: Path, run: str) -> Path:
    return localfs.Layout(root).eval_dir(run, DATASET)


def _completions(root: Path, run: str, step: int) -> list[dict]:
    path = localfs.Layout(root).eval_step_dir(run, DATASET, step) / "completions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(root: Path, run: str, step: int) -> dict:
    return localfs.read_json(localfs.Layout(root).eval_step_dir(run, DATASET, step) / "summary.json")


def test_writes_the_seed_layout_with_consistent_metrics(tiny_root, make_run, eval_args, capsys) -> None:
    run = make_run(tiny_root)
    assert main(eval_args(tiny_root, run, "--include-base")) == 0
    folder = _eval_dir(tiny_root, run)
    assert (folder / "eval_config.yaml").is_file()
    for step in (0, 1, 2, 3):
        step_dir = folder / f"step_{step}_{DATASET}"
        assert {"metrics.csv", "completions.jsonl", "summary.json"} <= set(os.listdir(step_dir))
    table = pd.read_csv(folder / "consolidated_metrics.csv")
    assert list(table.columns) == ["step", "accuracy", "format_rate", "mean_reward",
                                   "mean_completion_length", "n", "seconds", "tokens_per_s"]
    assert list(table["step"]) == [0, 1, 2, 3]
    for _, row in table.iterrows():
        lines = _completions(tiny_root, run, int(row["step"]))
        assert row["n"] == len(lines) == 30  # 10% of the 300 test questions, one sample each
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in lines) / len(lines))
        assert row["format_rate"] == pytest.approx(sum(r["format_ok"] for r in lines) / len(lines))
        assert row["mean_reward"] == pytest.approx(sum(r["reward"] for r in lines) / len(lines))
        first = lines[0]
        assert {"prompt", "completion", "extracted_answer", "gold_answer", "correct", "rewards",
                "tokens"} <= set(first)
        assert set(first["rewards"]) == {"correctness", "format_strict"}
    metrics = pd.read_csv(folder / f"step_1_{DATASET}" / "metrics.csv")
    assert metrics.loc[0, "accuracy"] == table.loc[1, "accuracy"]
    config = localfs.read_yaml(folder / "eval_config.yaml")
    assert config["settings"]["subset_seed"] == 1234 and config["settings"]["questions"] == 30
    assert config["repeatable_decoding"] is True  # no decode kernel picked by timing
    # the folder says whose it is: the one ownership rule (rltui.runs.folders) reads it
    assert (config["run"], config["dataset"]) == (run, DATASET)
    assert folders.read_eval_record(folder) == (run, DATASET)
    status = localfs.read_json(folder / "eval_status.json")
    assert status["phase"] == "completed" and status["done"] == [0, 1, 2, 3]
    out = capsys.readouterr().out
    assert "[4/4] step 3: accuracy" in out and "ETA" in out


def test_the_eta_leaves_out_the_first_checkpoint_once_there_are_others() -> None:
    # the first carries the warm-up (on a GPU the fast generation's compiles and graph captures)
    assert remaining_seconds([], 3) is None
    assert remaining_seconds([150.0], 4) == 600.0  # nothing else to go by yet
    assert remaining_seconds([150.0, 60.0, 62.0], 2) == 122.0  # counted in: 181


def test_include_base_makes_step_0_the_base_alone_even_when_the_run_saved_step_0(
        tiny_root, make_run, eval_args, capsys) -> None:
    run = make_run(tiny_root, steps=(0, 1))
    assert main(eval_args(tiny_root, run, "--steps", "0")) == 0
    assert _summary(tiny_root, run, 0)["checkpoint"]["base_only"] is False
    assert main(eval_args(tiny_root, run, "--include-base")) == 0
    assert "step 0 is the base model alone" in capsys.readouterr().out
    assert _summary(tiny_root, run, 0)["checkpoint"]["base_only"] is True
    assert _summary(tiny_root, run, 1)["error"] is None


def test_second_run_evaluates_nothing_new_unless_forced(tiny_root, make_run, eval_args, capsys) -> None:
    run = make_run(tiny_root, steps=(1, 2))
    assert main(eval_args(tiny_root, run)) == 0
    stamps = {s: _summary(tiny_root, run, s)["evaluated_at"] for s in (1, 2)}
    capsys.readouterr()
    assert main(eval_args(tiny_root, run, "--batch-size", "7")) == 0  # speed only: still skipped
    assert capsys.readouterr().out.count("with these settings, skipped") == 2
    assert {s: _summary(tiny_root, run, s)["evaluated_at"] for s in (1, 2)} == stamps
    assert main(eval_args(tiny_root, run, "--steps", "2", "--force")) == 0
    assert _summary(tiny_root, run, 1)["evaluated_at"] == stamps[1]
    assert _summary(tiny_root, run, 2)["evaluated_at"] > stamps[2]


def test_changed_settings_evaluate_again_and_consolidated_follows(tiny_root, make_run, eval_args) -> None:
    run = make_run(tiny_root, steps=(1, 2))
    assert main(eval_args(tiny_root, run)) == 0
    args = ["--root", str(tiny_root), "--training-run", run, "--subset-frac", "0.1",
            "--max-new-tokens", "8", "--steps", "1"]
    assert main(args) == 0
    assert _summary(tiny_root, run, 1)["settings_hash"] != _summary(tiny_root, run, 2)["settings_hash"]
    table = pd.read_csv(_eval_dir(tiny_root, run) / "consolidated_metrics.csv")
    assert list(table["step"]) == [1]  # step 2's results belong to the old settings
    assert max(r["tokens"] for r in _completions(tiny_root, run, 1)) <= 8


def test_broken_checkpoint_is_recorded_and_the_others_evaluated(tiny_root, make_run, eval_args) -> None:
    run = make_run(tiny_root)
    weights = localfs.Layout(tiny_root).step_dir(run, 2) / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(eval_args(tiny_root, run)) == 1
    error = _summary(tiny_root, run, 2)["error"]
    assert "incomplete" in error and "wrong size model/adapter_model.safetensors" in error
    table = pd.read_csv(_eval_dir(tiny_root, run) / "consolidated_metrics.csv")
    assert list(table["step"]) == [1, 3]
    assert localfs.read_json(_eval_dir(tiny_root, run) / "eval_status.json")["failed"] == [2]


def _mismatched_adapter(out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    lora = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(Qwen2ForCausalLM(config), lora).save_pretrained(out)


def test_adapter_that_does_not_fit_fails_its_step_without_harming_the_rest(
        tiny_root, make_run, eval_args, capsys) -> None:
    run = make_run(tiny_root)
    assert main(eval_args(tiny_root, run, "--steps", "3")) == 0
    clean = [r["completion"] for r in _completions(tiny_root, run, 3)]
    layout = localfs.Layout(tiny_root)
    staging = checkpoints.staging_dir(layout.training_state(run), 2)
    _mismatched_adapter(staging / "model")
    checkpoints.finalize_checkpoint(staging, layout.step_dir(run, 2), {"step": 2})
    capsys.readouterr()
    assert main(eval_args(tiny_root, run, "--force")) == 1
    error = _summary(tiny_root, run, 2)["error"]
    assert "does not fit base model" in error and str(layout.step_dir(run, 2) / "model") in error
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the job's cause (rltui.jobs.output)
    assert last.startswith("eval_batch: error: 1 of ") and "failed, first step 2: " in last
    assert "does not fit base model" in last
    assert [r["completion"] for r in _completions(tiny_root, run, 3)] == clean


def test_subset_frac_selects_the_same_questions_every_time(tiny_root, make_run, eval_args) -> None:
    run = make_run(tiny_root, steps=(1, 2))
    assert main(eval_args(tiny_root, run)) == 0
    first = {s: [r["index"] for r in _completions(tiny_root, run, s)] for s in (1, 2)}
    assert first[1] == first[2]  # every step sees the same questions
    assert first[1] != list(range(30))  # a spread-out sample, not the first ones
    shutil.rmtree(_eval_dir(tiny_root, run))
    assert main(eval_args(tiny_root, run, "--steps", "1")) == 0
    assert [r["index"] for r in _completions(tiny_root, run, 1)] == first[1]


def test_several_samples_add_pass_at_k(tiny_root, make_run, eval_args) -> None:
    run = make_run(tiny_root, steps=(1,))
    assert main(eval_args(tiny_root, run, "--num-samples", "3", "--subset-frac", "0.05")) == 0
    table = pd.read_csv(_eval_dir(tiny_root, run) / "consolidated_metrics.csv")
    assert "pass_at_k" in table.columns
    lines = _completions(tiny_root, run, 1)
    assert len(lines) == 3 * table.loc[0, "n"] == 45
    solved = {r["index"] for r in lines if r["correct"]}
    assert table.loc[0, "pass_at_k"] == pytest.approx(len(solved) / table.loc[0, "n"])
    assert table.loc[0, "pass_at_k"] >= table.loc[0, "accuracy"]


def test_a_step_past_its_timeout_is_recorded_and_the_batch_goes_on(tiny_root, make_run, eval_args) -> None:
    run = make_run(tiny_root, steps=(1, 2))
    assert main(eval_args(tiny_root, run, "--timeout-per-step", "0.000001")) == 1
    for step in (1, 2):
        assert _summary(tiny_root, run, step)["error"].startswith("timed out after")
    assert pd.read_csv(_eval_dir(tiny_root, run) / "consolidated_metrics.csv").empty
    assert main(eval_args(tiny_root, run)) == 0  # failed steps are evaluated again
    assert _summary(tiny_root, run, 2)["error"] is None


def test_ckpt_path_evaluates_an_older_runs_step_folders(tiny_root, tiny_paths, capsys) -> None:
    legacy = tiny_root / "rl_runs" / "old_run"
    (legacy / "step_5").mkdir(parents=True)
    for name in os.listdir(tiny_paths.warmstart):
        shutil.copy(tiny_paths.warmstart / name, legacy / "step_5" / name)
    args = ["--root", str(tiny_root), "--ckpt-path", str(legacy), "--eval-dataset", DATASET,
            "--subset-frac", "0.05", "--max-new-tokens", "16"]
    assert main(args) == 0
    summary = _summary(tiny_root, "old_run", 5)
    assert summary["error"] is None and summary["n"] == 15
    assert summary["checkpoint"]["path"] == str(legacy / "step_5")
    by_name = ["--root", str(tiny_root), "--training-run", "old_run", "--eval-dataset", DATASET,
               "--subset-frac", "0.05", "--max-new-tokens", "16"]
    capsys.readouterr()
    assert main(by_name) == 0  # an rl_runs/ run by its name: the same folder, nothing new
    assert "step 5: already evaluated" in capsys.readouterr().out
    one = ["--root", str(tiny_root), "--ckpt-path", str(tiny_paths.warmstart), "--training-run",
           "sft", "--eval-dataset", DATASET, "--subset-frac", "0.05", "--max-new-tokens", "16"]
    assert main(one) == 0
    assert _summary(tiny_root, "sft", 0)["error"] is None


def test_under_torchrun_only_rank_zero_evaluates_and_no_group_forms(
        tiny_root, make_run, eval_args, monkeypatch, capsys) -> None:
    run = make_run(tiny_root, steps=(1,))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(eval_args(tiny_root, run)) == 0
    assert not _eval_dir(tiny_root, run).exists()
    monkeypatch.setenv("RANK", "0")
    assert main(eval_args(tiny_root, run)) == 0
    assert "never initialises a process group" in capsys.readouterr().out
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert _summary(tiny_root, run, 1)["error"] is None


@pytest.mark.parametrize("more, named", [
    (["--steps", "7"], "no step 7"),
    (["--steps", "one"], "--steps 'one'"),
    (["--subset-frac", "0"], "--subset-frac 0.0"),
    (["--eval-dataset", "gsm8k_r1_template"], "gsm8k"),
    (["--eval-dataset", "gsm8k_template"], "bad dataset name: 'gsm8k_template'"),
    (["--eval-dataset", "../gsm8k"], "bad dataset name: '../gsm8k'"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--timeout-per-step", "-1"], "--timeout-per-step"),
])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
        tiny_root, make_run, eval_args, capsys, more, named) -> None:
    run = make_run(tiny_root, steps=(1,))
    assert main(eval_args(tiny_root, run, *more)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert not (tiny_root / "eval_runs").exists()


def test_unknown_run_and_unknown_flag_are_exit_2(tiny_root, capsys) -> None:
    assert main(["--root", str(tiny_root), "--training-run", "run_nope"]) == 2
    assert "training run not found: run_nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--root", str(tiny_root), "--training-run", "x", "--bogus"])
    assert e.value.code == 2


@pytest.mark.slow
def test_a_killed_evaluation_resumes_where_it_stopped(tiny_root, make_run, capsys) -> None:
    import signal
    import subprocess
    import sys
    import time

    run = make_run(tiny_root)
    # batch size 1 over 90 questions: slow enough to be killed in the middle
    args = ["--root", str(tiny_root), "--training-run", run, "--max-new-tokens", "16",
            "--subset-frac", "0.3"]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "evaluator.eval_batch", *args, "--batch-size", "1"],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = localfs.Layout(tiny_root).eval_step_dir(run, DATASET, 1) / "summary.json"
    deadline = time.monotonic() + 540
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (localfs.Layout(tiny_root).eval_step_dir(run, DATASET, 3) / "summary.json").exists()
    stamp = _summary(tiny_root, run, 1)["evaluated_at"]
    assert main([*args, "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "step 1: already evaluated" in out and "step 3: accuracy" in out
    assert _summary(tiny_root, run, 1)["evaluated_at"] == stamp
    table = pd.read_csv(_eval_dir(tiny_root, run) / "consolidated_metrics.csv")
    assert list(table["step"]) == [1, 2, 3]


def test_a_smaller_subset_does_not_replace_a_larger_result_unless_forced(
        tiny_root, make_run, eval_args, capsys) -> None:
    run = make_run(tiny_root, steps=(1,))
    assert main(eval_args(tiny_root, run)) == 0  # 0.1 of 300: 30 questions
    before = _summary(tiny_root, run, 1)
    assert before["n"] == 30
    capsys.readouterr()
    assert main(eval_args(tiny_root, run, "--subset-frac", "0.05")) == 0  # 15 questions
    assert "kept its result on 30 questions (this evaluation has 15" in capsys.readouterr().out
    assert _summary(tiny_root, run, 1) == before
    assert main(eval_args(tiny_root, run, "--subset-frac", "0.05", "--force")) == 0
    assert _summary(tiny_root, run, 1)["n"] == 15


def test_a_second_evaluation_of_the_same_folder_is_refused_while_the_first_writes(
        tiny_root, make_run, eval_args, capsys) -> None:
    # two evals of one run on one dataset (a key pressed twice, an --eval-after beside a manual
    # one) both evaluated every step and crossed their eval_status.json: one writer per folder
    from rltui.runs import writer_lock

    run = make_run(tiny_root)
    folder = _eval_dir(tiny_root, run)
    folder.mkdir(parents=True)
    held = writer_lock.acquire(folder, job="20261206-000000-eval-abcd")
    try:
        assert main(eval_args(tiny_root, run, "--steps", "1")) == 2
    finally:
        held.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"eval_batch: error: evaluation {folder.name} is being written by "
                                               f"pid {os.getpid()}"), err
    assert err[0].endswith("one writer at a time: stop it (rltui --batch stop 20261206-000000-eval-abcd)")
    assert not (folder / f"step_1_{DATASET}").exists()
    assert main(eval_args(tiny_root, run, "--steps", "1")) == 0  # free again
    assert writer_lock.holder(folder) is None  # released at the end
