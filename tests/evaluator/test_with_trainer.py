"""The contract with the trainer: its real checkpoints evaluate with no other step."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evaluator.eval_batch import main as eval_main
from rltui.runs import localfs

REPO = Path(__file__).resolve().parents[2]


def test_a_real_training_run_evaluates_from_its_own_config(tiny_root, capsys) -> None:
    from trainer.rl_runner import main as train_main

    cfg = REPO / "configs" / "tiny.yaml"
    assert train_main(["--cfg", str(cfg), "--root", str(tiny_root), "--steps", "2"]) == 0
    (run,) = [p.name for p in localfs.Layout(tiny_root).training_runs.iterdir()]
    args = ["--root", str(tiny_root), "--training-run", run, "--subset-frac", "0.05",
            "--include-base"]
    assert eval_main(args) == 0  # dataset, rewards, base and length all from the run's config
    folder = localfs.Layout(tiny_root).eval_dir(run, "arith_r1_template")
    table = pd.read_csv(folder / "consolidated_metrics.csv")
    assert list(table["step"]) == [0, 2]
    summary = localfs.read_json(folder / "step_2_arith_r1_template" / "summary.json")
    assert summary["checkpoint"]["path"].endswith("training_state/step_2/model")
    assert set(summary["reward_means"]) == {"correctness", "format_strict"}
    # the warm-started policy is well formed, the base alone is not
    assert table.loc[1, "format_rate"] > table.loc[0, "format_rate"]
    capsys.readouterr()
    assert eval_main(args) == 0
    assert capsys.readouterr().out.count("already evaluated with these settings") == 2
