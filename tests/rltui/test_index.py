"""The run index on real localfs trees: records, statuses, damaged files, refreshes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rltui.runs import localfs, machine
from rltui.runs.index import Index, JobState, RunStatus, classify_run, diagnose_run

HOST = machine.this_host()


def scan(b):
    return Index(b.layout).scan()


# ---------------------------------------------------------------- a localfs of every kind


def test_every_kind_of_run_gets_its_status(every_kind):
    snap = scan(every_kind)
    got = {name: r.status for name, r in snap.runs.items()}
    assert got == {
        "run_2026-01-01_00-00-01": RunStatus.COMPLETED,
        "run_2026-01-01_00-00-02": RunStatus.STOPPED,
        "run_2026-01-01_00-00-03": RunStatus.CRASHED,
        "run_2026-01-01_00-00-04": RunStatus.RUNNING,
        "run_2026-01-01_00-00-05": RunStatus.UNKNOWN,
        "run_2026-01-01_00-00-06": RunStatus.CRASHED,
        "run_2026-01-01_00-00-07": RunStatus.STOPPED,
        "run_2026-01-01_00-00-08": RunStatus.CRASHED,
    }
    assert "gone" in snap.runs["run_2026-01-01_00-00-03"].status_reason
    assert snap.runs["run_2026-01-01_00-00-06"].error == "CUDA out of memory"
    assert "job_lost lost" in snap.runs["run_2026-01-01_00-00-08"].status_reason
    assert list(snap.runs) == sorted(snap.runs)


def test_run_record_carries_progress_config_metrics_and_latest_checkpoint(every_kind):
    run = scan(every_kind).runs["run_2026-01-01_00-00-04"]
    assert (run.step, run.target_step, run.phase) == (3, 9, "training")
    assert run.latest_complete == 2
    assert [c.step for c in run.checkpoints] == [1, 2]
    assert all(c.complete and c.size_bytes == 29 + 300 + 200 + 20 + 40 for c in run.checkpoints)
    assert [c.is_latest for c in run.checkpoints] == [False, True]
    cfg = run.config_summary
    assert (cfg.model, cfg.dataset, cfg.lora_r, cfg.learning_rate, cfg.num_generations, cfg.max_steps) == (
        "models/tiny", "arith", 8, 5e-5, 4, 9)
    assert run.dataset == "arith"
    assert run.last_metrics == {"step": 3, "reward_mean": pytest.approx(0.3), "loss": pytest.approx(1 / 3)}
    assert run.started is not None and run.updated is not None and not run.legacy


def test_each_incomplete_checkpoint_says_why(every_kind):
    run = scan(every_kind).runs["run_2026-01-01_00-00-07"]
    reasons = {c.path.name: c.reason for c in run.checkpoints if not c.complete}
    staging = [n for n in reasons if n.startswith(".tmp_step_5.")]
    assert len(staging) == 1 and reasons[staging[0]].startswith("unfinished save")
    assert reasons["step_1"].startswith("damaged training_info.json: not valid JSON")
    assert reasons["step_2"] == "missing file optimizer.pt"
    assert reasons["step_3"] == "wrong size scheduler.pt: 7 bytes, expected 20"
    assert reasons["step_4"] == "missing training_info.json (save did not finish)"
    assert run.latest_complete is None
    assert [c.step for c in run.checkpoints] == [1, 2, 3, 4, 5]


def test_damaged_training_info_is_listed_as_an_error_and_the_scan_goes_on(every_kind):
    snap = scan(every_kind)
    damaged = [e for e in snap.errors if e.path.name == "training_info.json"]
    assert [e.path.parent.name for e in damaged] == ["step_1"]
    assert "not valid JSON" in damaged[0].reason
    assert len(snap.runs) == 8  # every run is still there


def test_evaluations_join_their_run_with_best_and_last_accuracy(every_kind):
    run = scan(every_kind).runs["run_2026-01-01_00-00-01"]
    assert sorted(run.evals) == ["arith", "gsm8k"]
    gsm = run.evals["gsm8k"]
    assert [(s.step, s.accuracy, s.error) for s in gsm.steps] == [
        (1, 0.25, None), (2, 0.5, None), (3, None, "out of memory")]
    assert (gsm.best_accuracy, gsm.best_step, gsm.last_accuracy, gsm.last_step) == (0.5, 2, 0.5, 2)
    assert run.evals["arith"].last_accuracy == 0.75
    assert run.last_eval.dataset == "gsm8k"


def test_jobs_are_read_and_their_usage_adds_up_on_the_run(every_kind):
    snap = scan(every_kind)
    assert sorted(snap.jobs) == ["job_done", "job_lost"]
    assert snap.jobs["job_lost"].state is JobState.LOST
    run = snap.runs["run_2026-01-01_00-00-01"]
    assert run.job_ids == ["job_done"]
    assert (run.restarts, run.gpu_seconds, run.cost) == (2, 120.0, 0.5)
    assert snap.jobs_of("run_2026-01-01_00-00-08") == [snap.jobs["job_lost"]]


def test_legacy_run_is_listed_read_only_with_its_steps(every_kind):
    snap = scan(every_kind)
    legacy = snap.legacy_runs["old_gsm8k_run"]
    assert legacy.legacy and legacy.status is RunStatus.UNKNOWN
    assert [(c.step, c.complete) for c in legacy.checkpoints] == [(100, True), (200, True), (300, False)]
    assert legacy.checkpoints[2].problems == ["no adapter_config.json", "no adapter_model file"]
    assert legacy.latest_complete == 200
    assert legacy.evals["gsm8k"].last_accuracy == 0.4
    assert snap.run("old_gsm8k_run") is legacy and "old_gsm8k_run" not in snap.runs


def test_a_scan_writes_nothing(every_kind, tree_state):
    before = tree_state(every_kind.root)
    scan(every_kind)
    assert tree_state(every_kind.root) == before


@pytest.mark.timeout(60)
def test_scan_never_opens_logs_in_full_completions_or_tensorboard(lfs):
    """Those files are FIFOs here: opening one for reading would block the scan forever."""
    run = lfs.run("run_2026-01-01_00-00-01")
    lfs.evaluation(run, "gsm8k", {2: 0.5})
    fifos = [
        lfs.layout.rollouts_log(run), lfs.layout.ratios_log(run),
        lfs.layout.tensorboard_dir(run) / "events.out.tfevents.1.host",
        lfs.layout.eval_step_dir(run, "gsm8k", 2) / "completions.jsonl",
        lfs.layout.eval_step_dir(run, "gsm8k", 2) / "metrics.csv",
    ]
    for f in fifos:
        f.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(f)
    snap = scan(lfs)
    assert snap.runs[run].evals["gsm8k"].last_accuracy == 0.5


def test_last_metrics_come_from_the_tail_of_a_long_train_log(lfs):
    run = lfs.run("run_2026-01-01_00-00-01", train_log=[])
    log = lfs.layout.train_log(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        f.write(b"not json at all\n" * 100_000)  # the index must not need these lines
        f.write(b'{"step": 7, "reward_mean": 0.9}\n{"step": 8, "reward_')  # a torn last line
    assert scan(lfs).runs[run].last_metrics == {"step": 7, "reward_mean": 0.9}


def test_damaged_status_config_and_job_files_are_errors_not_crashes(lfs):
    run = lfs.run("run_2026-01-01_00-00-01")
    lfs.layout.run_status(run).write_text("{\"phase\": ")
    lfs.layout.run_config(run).write_text("model: [unclosed\n")
    lfs.evaluation(run, "gsm8k", {1: 0.5})
    lfs.layout.consolidated_metrics(run, "gsm8k").write_bytes(b"step,accuracy\nseven,0.5\n")
    lfs.job("job_1", run, "running")
    lfs.layout.job_state("job_1").write_text("[]")
    snap = scan(lfs)
    record = snap.runs[run]
    assert record.status is RunStatus.UNKNOWN
    assert record.error is not None and "status.json" in record.error
    names = sorted(e.path.name for e in snap.errors)
    assert names == ["config.yaml", "consolidated_metrics.csv", "state.json", "status.json"]
    assert snap.jobs["job_1"].state is JobState.UNKNOWN and snap.jobs["job_1"].error


def test_eval_folder_goes_to_the_run_with_the_longest_matching_name(lfs):
    a = lfs.run("run_2026-01-01_00-00-01")
    b = lfs.run("run_2026-01-01_00-00-01_2")
    lfs.evaluation(b, "gsm8k", {2: 0.9})
    lfs.evaluation(a, "gsm8k", {2: 0.1})
    lfs.evaluation("run_2025-05-05_00-00-00", "arith", {1: 0.3})  # its run is gone
    snap = scan(lfs)
    assert snap.runs[a].evals["gsm8k"].last_accuracy == 0.1
    assert snap.runs[b].evals["gsm8k"].last_accuracy == 0.9
    orphan = snap.orphan_evals["run_2025-05-05_00-00-00_arith"]
    assert (orphan.run, orphan.dataset) == ("run_2025-05-05_00-00-00", "arith")


def test_empty_or_missing_localfs_scans_to_nothing(tmp_path):
    snap = Index(localfs.Layout(tmp_path / "nothing")).scan()
    assert not snap.runs and not snap.jobs and not snap.legacy_runs and not snap.errors


# ---------------------------------------------------------------- the status rule


def _status(**kw):
    base = {"phase": "training", "pid": 4242, "host": HOST, "time": 1000.0, "step": 3}
    base.update(kw)
    return base


def test_status_rule_from_phase_pid_host_and_time():
    alive = lambda pid, t: pid == 4242  # noqa: E731
    dead = lambda pid, t: False  # noqa: E731
    fresh, stale = 1000.0 + 60, 1000.0 + 3600
    assert classify_run(None, fresh, HOST) is RunStatus.UNKNOWN
    assert classify_run(_status(phase="completed"), stale, HOST, alive=dead) is RunStatus.COMPLETED
    assert classify_run(_status(phase="stopped"), stale, HOST, alive=dead) is RunStatus.STOPPED
    assert classify_run(_status(phase="failed"), fresh, HOST, alive=alive) is RunStatus.CRASHED
    assert classify_run(_status(), fresh, HOST, alive=alive) is RunStatus.RUNNING
    assert classify_run(_status(), fresh, HOST, alive=dead) is RunStatus.CRASHED
    assert classify_run(_status(pid=None), fresh, HOST, alive=alive) is RunStatus.CRASHED
    stalled = diagnose_run(_status(), stale, HOST, stale_after=900, alive=alive)
    assert stalled.status is RunStatus.RUNNING and stalled.stalled and "no progress for 60 min" in stalled.reason
    # another host: its pid means nothing here
    assert classify_run(_status(host="gpu-7"), fresh, HOST, alive=dead) is RunStatus.RUNNING
    assert classify_run(_status(host="gpu-7"), stale, HOST, alive=alive) is RunStatus.UNKNOWN


def test_crashed_run_has_a_stale_status_and_a_dead_pid(lfs, dead_pid):
    lfs.run("run_2026-01-01_00-00-01", phase="generating", step=4, target=10, pid=dead_pid,
            progress_time=time.time() - 7200)
    run = scan(lfs).runs["run_2026-01-01_00-00-01"]
    assert run.status is RunStatus.CRASHED
    assert f"trainer pid {dead_pid} is gone" in run.status_reason
    assert run.latest_complete == 2  # ready to resume from here


def test_a_reused_pid_does_not_make_a_dead_run_look_alive(lfs):
    """The recorded pid now belongs to a process that started after the run's last progress."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lfs.run("run_2026-01-01_00-00-01", phase="training", pid=proc.pid,
                progress_time=time.time() - 600)
        assert scan(lfs).runs["run_2026-01-01_00-00-01"].status is RunStatus.CRASHED
    finally:
        proc.kill()
        proc.wait()


def test_stale_progress_with_a_live_process_is_running_but_stalled(lfs, live_pid):
    clock = [time.time()]
    lfs.run("run_2026-01-01_00-00-01", phase="training", pid=live_pid, progress_time=clock[0])
    index = Index(lfs.layout, now=lambda: clock[0], stale_after=900)
    assert index.scan().runs["run_2026-01-01_00-00-01"].stalled is False
    clock[0] += 3600
    run = index.reclassify().runs["run_2026-01-01_00-00-01"]
    assert run.status is RunStatus.RUNNING and run.stalled


def test_an_active_job_with_a_live_keeper_keeps_a_restarting_run_running(lfs, dead_pid, live_pid):
    lfs.run("run_2026-01-01_00-00-01", phase="training", pid=dead_pid, progress_time=time.time())
    lfs.job("job_1", "run_2026-01-01_00-00-01", "restarting", keeper_pid=live_pid, restarts=1)
    run = scan(lfs).runs["run_2026-01-01_00-00-01"]
    assert run.status is RunStatus.RUNNING and "restarting" in run.status_reason
    assert run.restarts == 1


def test_a_job_whose_keeper_died_counts_as_lost_and_its_run_as_crashed(lfs, dead_pid):
    lfs.run("run_2026-01-01_00-00-01", phase=None)
    lfs.job("job_1", "run_2026-01-01_00-00-01", "running", keeper_pid=dead_pid)
    snap = scan(lfs)
    assert snap.jobs["job_1"].orphaned
    assert snap.runs["run_2026-01-01_00-00-01"].status is RunStatus.CRASHED


def test_a_finished_run_stays_finished_whatever_its_job_says(lfs):
    lfs.run("run_2026-01-01_00-00-01", phase="completed")
    lfs.job("job_1", "run_2026-01-01_00-00-01", "lost")
    assert scan(lfs).runs["run_2026-01-01_00-00-01"].status is RunStatus.COMPLETED


# ---------------------------------------------------------------- refreshing one thing


def test_refresh_run_rereads_only_that_run(lfs):
    a = lfs.run("run_2026-01-01_00-00-01", phase="training", step=1, target=9)
    b = lfs.run("run_2026-01-01_00-00-02")
    index = Index(lfs.layout)
    first = index.scan()
    status = localfs.read_json(lfs.layout.run_status(a))
    status.update(step=7, phase="completed")
    localfs.write_json_atomic(lfs.layout.run_status(a), status)
    lfs.checkpoint(a, 7)
    second = index.refresh_run(a)
    assert second.runs[a].step == 7 and second.runs[a].status is RunStatus.COMPLETED
    assert second.runs[a].latest_complete == 7
    assert second.runs[b] is first.runs[b]  # the other run was not touched
    assert first.runs[a].step == 1  # an old snapshot never changes


def test_refresh_run_adds_a_new_run_and_drops_a_deleted_one(lfs):
    import shutil

    a = lfs.run("run_2026-01-01_00-00-01")
    index = Index(lfs.layout)
    index.scan()
    b = lfs.run("run_2026-01-01_00-00-02")
    lfs.evaluation(b, "gsm8k", {2: 0.6})
    assert index.refresh_run(b).runs[b].evals["gsm8k"].last_accuracy == 0.6
    shutil.rmtree(lfs.layout.run_dir(a))
    snap = index.refresh_run(a)
    assert list(snap.runs) == [b]


def test_refresh_eval_and_refresh_job_update_their_run(lfs, live_pid):
    run = lfs.run("run_2026-01-01_00-00-01", phase=None)
    index = Index(lfs.layout)
    index.scan()
    lfs.evaluation(run, "gsm8k", {1: 0.2, 2: 0.4})
    snap = index.refresh_eval(lfs.layout.eval_dir(run, "gsm8k").name)
    assert snap.runs[run].evals["gsm8k"].best_accuracy == 0.4
    lfs.job("job_1", run, "running", keeper_pid=live_pid, usage={"gpu_seconds": 5.0})
    snap = index.refresh_job("job_1")
    assert snap.jobs["job_1"].state is JobState.RUNNING
    assert snap.runs[run].status is RunStatus.RUNNING and snap.runs[run].gpu_seconds == 5.0


def test_refresh_rejects_names_that_escape_the_root(lfs):
    index = Index(lfs.layout)
    index.scan()
    for bad in ("../etc", "a/b", "..", ""):
        with pytest.raises(localfs.BadName):
            index.refresh_run(bad)
    with pytest.raises(localfs.BadName):
        index.refresh_job("../../tmp")
    with pytest.raises(localfs.BadName):
        index.refresh_eval("x/../../y")


def test_rescan_sees_a_checkpoint_info_file_that_changed_since_it_was_cached(lfs):
    run = lfs.run("run_2026-01-01_00-00-01")
    index = Index(lfs.layout)
    assert index.scan().runs[run].latest_complete == 2
    info_path = lfs.layout.step_dir(run, 2) / localfs.CHECKPOINT_INFO
    info = localfs.read_json(info_path)
    info["files"]["optimizer.pt"]["size"] += 1
    localfs.write_json_atomic(info_path, info)
    snap = index.scan()
    assert snap.runs[run].latest_complete == 1
    assert snap.runs[run].checkpoints[1].problems == ["wrong size optimizer.pt: 200 bytes, expected 201"]


def test_snapshot_paths_are_inside_the_root(every_kind):
    snap = scan(every_kind)
    root = every_kind.root
    for run in (*snap.runs.values(), *snap.legacy_runs.values()):
        assert Path(run.path).is_relative_to(root)
        for c in run.checkpoints:
            assert c.path.is_relative_to(run.path)


def test_a_lost_job_does_not_make_a_live_trainer_crashed(lfs, live_pid):
    """Its keeper is gone but the trainer still runs: crashed would invite a second trainer."""
    lfs.run("run_2026-01-01_00-00-01", phase="training", pid=live_pid, progress_time=time.time())
    lfs.job("job_1", "run_2026-01-01_00-00-01", "lost")
    run = scan(lfs).runs["run_2026-01-01_00-00-01"]
    assert run.status is RunStatus.RUNNING and run.process_alive
    assert "job_1 is lost" in run.status_reason


# ---------------------------------------------------------------- the config summary


def test_config_summary_prefers_the_resolved_config_with_its_defaults(lfs):
    run = lfs.run("run_2026-01-01_00-00-01", config={"model": {"base": "tiny"}})
    localfs.write_yaml_atomic(lfs.layout.run_dir(run) / "config_resolved.yaml", {
        "model": {"base": "tiny", "init_adapter": None},
        "lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]},
        "data": {"dataset": "arith_r1_template"},
        "rewards": [{"function": "correctness", "weight": 1.0, "learning_rate": 9.0}],
        "grpo": {"num_generations": 4},
        "optim": {"learning_rate": 1e-4},
        "training": {"total_steps": 30},
    })
    cfg = scan(lfs).runs[run].config_summary
    assert (cfg.model, cfg.dataset, cfg.lora_r, cfg.learning_rate, cfg.num_generations, cfg.max_steps) == (
        "tiny", "arith_r1_template", 16, 1e-4, 4, 30)  # the list item's learning_rate is not it


def test_a_hand_written_config_reads_the_same_as_the_dumped_one(lfs):
    import yaml

    from rltui.runs.readers import parse_config_summary, read_dumped_yaml

    hand = (
        "# my run\n"
        "model:\n  base: '/models/Qwen 1.5B'   # quoted, with a comment\n"
        "lora: {r: 32, alpha: 64}\n"
        "data:\n  dataset: gsm8k_r1_template\n"
        "grpo:\n  num_generations: 8\n"
        "optim:\n  learning_rate: 3.0e-6\n"
        "training:\n  total_steps: 250\n"
    )
    assert read_dumped_yaml(hand) is None  # not what safe_dump writes: PyYAML reads it
    dumped = localfs.dump_yaml(yaml.safe_load(hand))
    assert read_dumped_yaml(dumped) is not None
    a, b = parse_config_summary(hand.encode(), "hand"), parse_config_summary(dumped.encode(), "dumped")
    assert a == b
    assert (a.model, a.lora_r, a.learning_rate, a.num_generations, a.max_steps) == (
        "/models/Qwen 1.5B", 32, 3e-6, 8, 250)


def test_a_run_folder_linked_from_another_disk_is_listed(lfs, tmp_path):
    import shutil

    run = lfs.run("run_2026-01-01_00-00-01")
    elsewhere = tmp_path / "big_disk" / run
    elsewhere.parent.mkdir()
    shutil.move(str(lfs.layout.run_dir(run)), elsewhere)
    os.symlink(elsewhere, lfs.layout.run_dir(run))
    record = scan(lfs).runs[run]
    assert record.status is RunStatus.COMPLETED and record.latest_complete == 2


def test_refreshes_keep_orphan_evaluations_right(lfs):
    import shutil

    a = lfs.run("run_2026-01-01_00-00-01")
    lfs.evaluation(a, "gsm8k", {2: 0.5})
    lfs.evaluation("run_2026-01-01_00-00-01_2", "gsm8k", {1: 0.1})  # its run is not here (yet)
    index = Index(lfs.layout)
    snap = index.scan()
    assert list(snap.orphan_evals) == ["run_2026-01-01_00-00-01_2_gsm8k"]
    snap = index.refresh_run(a)  # re-reads both folders (both start with a's name)
    assert list(snap.orphan_evals) == ["run_2026-01-01_00-00-01_2_gsm8k"]
    b = lfs.run("run_2026-01-01_00-00-01_2")
    snap = index.refresh_run(b)
    assert not snap.orphan_evals and snap.runs[b].evals["gsm8k"].last_accuracy == 0.1
    shutil.rmtree(lfs.layout.run_dir(a))
    snap = index.refresh_run(a)
    assert list(snap.orphan_evals) == ["run_2026-01-01_00-00-01_gsm8k"]
    assert snap.orphan_evals == index.scan().orphan_evals  # the same as a full scan says


def test_a_keeper_pid_reused_by_a_newer_process_counts_as_gone(lfs, live_pid):
    """state.json was last written an hour ago; the live process with that pid started later."""
    lfs.run("run_2026-01-01_00-00-01", phase=None)
    job_dir = lfs.job("job_1", "run_2026-01-01_00-00-01", "running", keeper_pid=live_pid)
    state = localfs.read_json(job_dir / "state.json")
    state["updated_at"] = state["started_at"] = time.time() - 3600
    localfs.write_json_atomic(job_dir / "state.json", state)
    snap = scan(lfs)
    assert snap.jobs["job_1"].orphaned
    assert snap.runs["run_2026-01-01_00-00-01"].status is RunStatus.CRASHED


def test_reclassify_notices_a_trainer_that_died_and_leaves_other_runs_alone(lfs):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.05)
    a = lfs.run("run_2026-01-01_00-00-01", phase="training", pid=proc.pid, progress_time=time.time())
    b = lfs.run("run_2026-01-01_00-00-02")
    index = Index(lfs.layout)
    first = index.scan()
    assert first.runs[a].status is RunStatus.RUNNING
    proc.kill()
    proc.wait()
    second = index.reclassify()
    assert second.runs[a].status is RunStatus.CRASHED
    assert second.runs[b] is first.runs[b]


def test_legacy_eval_folder_goes_to_the_longest_matching_legacy_name(lfs):
    lfs.legacy("old", (1,))
    lfs.legacy("old_gsm8k_run", (1,))
    lfs.evaluation("old_gsm8k_run", "gsm8k", {1: 0.7})
    snap = scan(lfs)
    assert snap.legacy_runs["old_gsm8k_run"].evals["gsm8k"].last_accuracy == 0.7
    assert not snap.legacy_runs["old"].evals


def test_a_run_whose_job_the_user_killed_is_stopped_not_crashed(lfs, dead_pid):
    import json

    run = "run_2026-01-01_00-00-01"
    lfs.run(run, phase="training", step=3, target=10, checkpoints=(2,), pid=dead_pid)
    lfs.job("20260101-000001-train-aaaa", run, "stopped")
    path = lfs.layout.job_state("20260101-000001-train-aaaa")
    state = json.loads(path.read_text())
    state["last_reason"] = "killed by the user (SIGKILL to the group)"
    path.write_text(json.dumps(state))
    rec = Index(lfs.layout).scan().runs[run]
    assert rec.status is RunStatus.STOPPED
    assert rec.status_reason.startswith("killed by the user")


@pytest.mark.parametrize("kind", ["eval", "sync"])
def test_a_crashed_runs_eval_or_archive_job_says_nothing_of_its_training(lfs, dead_pid, live_pid, kind):
    # an eval of a crashed run's checkpoints once showed the run "▶ running" while it ran, and
    # "stopped" or crashed-by-that-job after it; its training job is what tells the run's state
    run = "run_2026-01-01_00-00-01"
    lfs.run(run, phase="training", step=3, target=10, checkpoints=(2,), pid=dead_pid, progress_time=time.time() - 3600)
    lfs.job("20260101-000001-train-aaaa", run, "failed", exit_code=1, created=time.time() - 3600)
    for state in ("running", "stopped", "failed"):
        lfs.job(f"20260101-000002-{kind}-bbbb", run, state, kind=kind, keeper_pid=live_pid, exit_code=1)
        rec = Index(lfs.layout).scan().runs[run]
        assert rec.status is RunStatus.CRASHED, (state, rec.status_reason)
    lfs.job("20260101-000003-resume-cccc", run, "running", kind="resume", keeper_pid=live_pid)
    assert Index(lfs.layout).scan().runs[run].status is RunStatus.RUNNING  # a resume is the training
