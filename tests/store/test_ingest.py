"""Ingestion of the localfs into the metrics store: incremental, idempotent, safe to run twice at once."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_kit import RUN_A, RUN_B, RUN_C, dump, log_step, write_run

from rltui.runs import localfs
from rltui.runs.ingest import ingest
from rltui.runs.localfs import Layout
from rltui.runs.store import Store, store_path

REPO = Path(__file__).resolve().parents[2]


def ingested(root: Path) -> Store:
    store = Store.open(root)
    ingest(store, Layout(root))
    return store


def test_runs_config_provenance_summaries_evals_and_usage_are_read(root: Path) -> None:
    with ingested(root) as store:
        assert store.run_names() == [RUN_A, RUN_B, RUN_C]
        cfg = store.config([RUN_A])[RUN_A]
        assert cfg["lora.r"] == 16 and cfg["data.dataset"] == "arith"
        assert cfg["optim.learning_rate"] == pytest.approx(1e-4)
        assert cfg["training.bf16"] == "false"
        assert cfg["lora.target_modules"] == '["q_proj", "v_proj"]'
        assert cfg["provenance.base.revision"] == "abc123"
        reward = store.summary("reward_mean")[RUN_B]
        assert (reward.n, reward.first, reward.last, reward.max, reward.best_step) == (10, 0.05, 0.5, 0.5, 10)
        loss = store.summary("loss")[RUN_A]
        assert loss.best == loss.min == pytest.approx(0.05) and loss.best_step == 20  # smaller is better
        acc = store.summary("eval_accuracy")
        assert acc[RUN_A].best == 0.7 and acc[RUN_A].best_step == 20 and acc[RUN_B].best == 0.65
        assert store.summary("eval_accuracy@gsm8k")[RUN_A].best == 0.4
        assert RUN_C not in acc
        assert store.series([RUN_A], "eval_accuracy")[RUN_A] == ([10, 20], [0.5, 0.7])
        assert ("gsm8k", 20, 0.4, 0.9, 0.4, 20, None) in store.evals(RUN_A)
        assert store.usage(RUN_A) == {"gpu_seconds": 5400.0, "energy_j": 54000.0, "cost": 2.0}
        status = dict(store.conn.execute("SELECT name, status FROM runs").fetchall())
        assert status == {RUN_A: "completed", RUN_B: "stopped", RUN_C: "completed"}


def test_a_second_pass_reads_nothing_and_a_rebuilt_store_is_identical(root: Path, tmp_path: Path) -> None:
    with ingested(root) as store:
        first = dump(store.path)
        again = ingest(store, Layout(root))
        assert (again.runs_read, again.points, again.jobs_read) == (0, 0, 0)
        assert dump(store.path) == first
    for suffix in ("", "-wal", "-shm"):
        Path(str(store_path(root)) + suffix).unlink(missing_ok=True)
    with ingested(root) as store:
        assert dump(store.path) == first


def test_new_lines_are_appended_and_summaries_move(root: Path) -> None:
    layout = Layout(root)
    with ingested(root) as store:
        log_step(layout, RUN_C, 6, reward_mean=0.9, loss=0.01)
        report = ingest(store, layout)
        assert (report.runs_read, report.points) == (1, 2)
        steps, values = store.series([RUN_C], "reward_mean")[RUN_C]
        assert steps == [1, 2, 3, 4, 5, 6] and values[-1] == 0.9
        s = store.summary("reward_mean")[RUN_C]
        assert (s.n, s.last, s.last_step, s.best, s.best_step) == (6, 0.9, 6, 0.9, 6)


def test_a_torn_last_line_is_read_once_it_is_whole(root: Path) -> None:
    layout = Layout(root)
    log = layout.train_log(RUN_C)
    with ingested(root) as store:
        with open(log, "ab") as f:
            f.write(b'{"step": 6, "reward_mean": 0.77, "lo')  # a writer half-way through a line
        assert ingest(store, layout).points == 0
        assert store.series([RUN_C], "reward_mean")[RUN_C][0] == [1, 2, 3, 4, 5]
        with open(log, "ab") as f:
            f.write(b'ss": 0.3}\n')
        assert ingest(store, layout).points == 2
        steps, values = store.series([RUN_C], "reward_mean")[RUN_C]
        assert steps[-1] == 6 and values[-1] == 0.77
        assert store.summary("loss")[RUN_C].last == 0.3


def test_damaged_lines_are_skipped_and_the_rest_is_read(root: Path) -> None:
    layout = Layout(root)
    with open(layout.train_log(RUN_C), "ab") as f:
        f.write(b"not json\n[1, 2]\n{\"step\": \"x\"}\n{\"step\": 6, \"reward_mean\": true}\n"
                b"{\"step\": 7, \"reward_mean\": NaN}\n{\"step\": 8, \"reward_mean\": 0.8}\n")
    with ingested(root) as store:
        steps, _values = store.series([RUN_C], "reward_mean")[RUN_C]
        assert steps == [1, 2, 3, 4, 5, 7, 8]
        assert store.summary("reward_mean")[RUN_C].n == 6  # NaN kept in the series, not summarised


def test_a_step_logged_again_after_a_resume_counts_once_with_its_new_value(root: Path) -> None:
    layout = Layout(root)
    with ingested(root) as store:
        for step in (4, 5, 6):  # resumed from step 3's checkpoint: 4 and 5 are logged again
            log_step(layout, RUN_C, step, reward_mean=0.01 * step, loss=0.5)
        ingest(store, layout)
        steps, values = store.series([RUN_C], "reward_mean")[RUN_C]
        assert steps == [1, 2, 3, 4, 5, 6] and values[3:] == [0.04, 0.05, 0.06]
        s = store.summary("reward_mean")[RUN_C]
        assert (s.n, s.max, s.last) == (6, 0.3, 0.06)


def test_a_replaced_or_truncated_log_is_read_again_from_its_start(root: Path) -> None:
    layout = Layout(root)
    with ingested(root) as store:
        localfs.write_text_atomic(layout.train_log(RUN_A), '{"step": 1, "reward_mean": 0.42}\n')
        ingest(store, layout)
        assert store.series([RUN_A], "reward_mean")[RUN_A] == ([1], [0.42])
        assert "loss" not in store.summary_metrics(RUN_A)
        assert "eval_accuracy" in store.summary_metrics(RUN_A)  # evals are not the log's


def test_eval_results_and_removed_runs_follow_the_files(root: Path) -> None:
    layout = Layout(root)
    with ingested(root) as store:
        shutil.rmtree(layout.eval_dir(RUN_A, "gsm8k"))
        shutil.rmtree(layout.run_dir(RUN_B))
        report = ingest(store, layout)
        assert report.runs_dropped == 1 and store.run_names() == [RUN_A, RUN_C]
        assert {e[0] for e in store.evals(RUN_A)} == {"arith"}
        assert "eval_accuracy@gsm8k" not in store.summary_metrics(RUN_A)
        assert store.conn.execute("SELECT COUNT(*) FROM files WHERE run = ?", (RUN_B,)).fetchone() == (0,)


def test_status_from_the_index_wins_and_a_budget_stops_early(root: Path) -> None:
    with Store.open(root) as store:
        report = ingest(store, Layout(root), budget_s=0.0)
        assert not report.complete and report.runs_read <= 1
        ingest(store, Layout(root), statuses={RUN_C: "crashed"})
        assert store.conn.execute("SELECT status FROM runs WHERE name = ?", (RUN_C,)).fetchone() == ("crashed",)


def test_a_deleted_store_is_noticed_and_rebuilt(root: Path) -> None:
    store = ingested(root)
    before = dump(store.path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(store.path) + suffix).unlink(missing_ok=True)
    assert store.gone()
    store.close()
    with ingested(root) as fresh:
        assert not fresh.gone()
        assert dump(fresh.path) == before


def test_reads_do_not_wait_for_a_writer(root: Path) -> None:
    with ingested(root):
        writer = sqlite3.connect(str(store_path(root)), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM summary")
        try:
            reader = Store.open(root, busy_timeout_s=0.0)  # would fail at once if it had to wait
            t0 = time.monotonic()
            assert RUN_A in reader.summary("reward_mean")  # sees the last commit, not the delete
            assert time.monotonic() - t0 < 5.0
            reader.close()
        finally:
            writer.execute("ROLLBACK")
            writer.close()


_INGEST = """
import sys
from rltui.runs.ingest import ingest
from rltui.runs.localfs import Layout
from rltui.runs.store import Store
with Store.open(sys.argv[1]) as store:
    for _ in range(3):
        ingest(store, Layout(sys.argv[1]))
"""


def test_two_ingesting_processes_at_once_add_every_point_once(tmp_path: Path) -> None:
    root = tmp_path / "localfs"
    layout = Layout(root).ensure()
    names = [f"run_2026-04-01_10-{i:02d}-00" for i in range(24)]
    for i, name in enumerate(names):
        write_run(layout, name, steps=150, lora_r=8 * (1 + i % 3))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _INGEST, str(root)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with Store.open(root) as store:
        assert store.run_names() == names
        total = store.conn.execute("SELECT SUM(n) FROM series").fetchone()[0]
        assert total == 24 * 150 * 2  # reward_mean and loss, each point once
        for name, s in store.summary("reward_mean").items():
            assert s.n == 150 and s.last_step == 150
        assert ingest(store, layout).runs_read == 0
