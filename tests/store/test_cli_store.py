"""`rltui --batch runs | compare | export` as a user runs them (real processes for the exit codes)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_kit import RUN_A, RUN_B, RUN_C

from rltui.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def rltui(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          capture_output=True, text=True, cwd=cwd or REPO, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_runs_filters_sorts_and_prints_csv(root: Path) -> None:
    r = rltui(root, "runs", "--where", "best(eval_accuracy) > 0.6 and lora.r in (16, 32)",
              "--sort=-best(eval_accuracy)", "--columns", "lora.r,best(eval_accuracy),status", "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows == [["run", "lora.r", "best(eval_accuracy)", "status"],
                    [RUN_A, "16", "0.7", "completed"], [RUN_B, "32", "0.65", "stopped"]]


def test_a_descending_sort_key_may_follow_the_flag_as_its_own_word(root: Path) -> None:
    # `--sort -best(...)` was "expected one argument" (argparse took the value for an option)
    spaced = rltui(root, "runs", "--sort", "-best(eval_accuracy)", "--columns", "best(eval_accuracy)", "--csv")
    glued = rltui(root, "runs", "--sort=-best(eval_accuracy)", "--columns", "best(eval_accuracy)", "--csv")
    assert spaced.returncode == 0, spaced.stderr
    assert spaced.stdout == glued.stdout and spaced.stdout.splitlines()[1].startswith(RUN_A)
    from rltui.cli.main import glue_dash_values

    assert glue_dash_values(["runs", "--sort", "--csv"]) == ["runs", "--sort", "--csv"]  # an option stays one
    assert glue_dash_values(["runs", "--sort", "-h"]) == ["runs", "--sort", "-h"]
    assert glue_dash_values(["runs", "--sort", "lora.r"]) == ["runs", "--sort", "lora.r"]


def test_a_bad_where_is_one_line_pointing_at_the_token_exit_2(root: Path) -> None:
    r = rltui(root, "runs", "--where", "status = 'completed' and bset(loss) < 1")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "--where at column 26" in lines[0] and ">>bset<<" in lines[0]


def test_runs_json_and_defaults(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--batch", "runs", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["run"] for d in doc] == [RUN_A, RUN_B, RUN_C]
    assert doc[0]["best(eval_accuracy)"] == 0.7 and doc[1]["status"] == "stopped"
    assert main(["--root", str(root), "--batch", "runs", "--where", "unknown_key = 1"]) == 2
    assert "unknown key 'unknown_key'" in capsys.readouterr().err


def test_compare_text_shows_best_last_and_the_differing_keys(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--batch", "compare", RUN_A, RUN_B]) == 0
    out = capsys.readouterr().out
    assert "reward_mean" in out and "eval_accuracy" in out
    assert "config keys that differ" in out
    differing = out.split("config keys that differ")[1]
    assert "lora.r" in differing and "training.total_steps" in differing
    assert "model.base" not in differing  # the same in both


def test_compare_json_aligns_series_by_step(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--batch", "compare", RUN_B, RUN_C, "--metric", "reward_mean", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = doc["metrics"]["reward_mean"]
    assert m["steps"] == list(range(1, 11))
    assert m["series"][RUN_C][5:] == [None] * 5 and m["series"][RUN_B][9] == 0.5
    assert m["summary"][RUN_B]["best"] == 0.5 and m["summary"][RUN_C]["last_step"] == 5
    assert doc["differing_config"]["lora.r"] == {RUN_B: 32, RUN_C: 8}


def test_compare_csv_and_bad_names(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(root), "--batch", "compare", RUN_A, RUN_C, "--metric", "loss", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["step", f"{RUN_A}:loss", f"{RUN_C}:loss"] and len(rows) == 21
    assert main(["--root", str(root), "--batch", "compare", RUN_A, "run_2030-01-01_00-00-00"]) == 2
    assert "no run named 'run_2030-01-01_00-00-00'" in capsys.readouterr().err
    assert main(["--root", str(root), "--batch", "compare", RUN_A, RUN_B, "--metric", "rewrd"]) == 2
    assert "unknown metric 'rewrd'" in capsys.readouterr().err


def test_export_csv_and_parquet_one_row_per_step(root: Path, tmp_path: Path) -> None:
    import pandas as pd

    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    out = tmp_path / "a.csv"
    r = rltui(root, "export", RUN_A, "--to", "csv", "--out", str(out))
    assert r.returncode == 0, r.stderr
    frame = pd.read_csv(out)
    assert list(frame["step"]) == list(range(1, 21))
    assert {"reward_mean", "loss", "eval_accuracy", "eval_accuracy@gsm8k"} <= set(frame.columns)
    assert frame.loc[frame.step == 20, "eval_accuracy"].item() == 0.7
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]  # no temporary file left
    pytest.importorskip("pyarrow")
    r = rltui(root, "export", RUN_B, "--to", "parquet", "--metric", "reward_mean", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    frame = pd.read_parquet(tmp_path / f"{RUN_B}.parquet")
    assert list(frame.columns) == ["step", "reward_mean"] and len(frame) == 10


def test_export_without_pyarrow_says_so_in_one_line(root: Path, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    code = ("import sys; sys.modules['pyarrow'] = None; from rltui.cli.main import main; "
            f"sys.exit(main(['--root', {str(root)!r}, '--batch', 'export', {RUN_A!r}, '--to', 'parquet']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "needs pyarrow" in r.stderr and list(tmp_path.iterdir()) == []


def test_status_keeps_the_store_current_with_the_index_statuses(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rltui.runs.store import Store, store_path

    assert not store_path(root).exists()
    assert main(["--root", str(root), "--batch", "status", "--json"]) == 0
    capsys.readouterr()
    with Store.open(root) as store:
        assert store.run_names() == [RUN_A, RUN_B, RUN_C]
        assert store.summary("reward_mean")[RUN_B].last == 0.5
