"""Real processes and real signals: SIGTERM saves and stops cleanly; SIGKILL at many points,
including mid-save, always leaves step_latest naming a complete checkpoint, and resuming after
every kill ends bitwise identical to a run never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from rltui.runs import checkpoints, localfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_cache, tmp_path_factory, kit, test_config):
    """The uninterrupted 6-step run every interrupted one must end equal to."""
    root, run, _ = kit.new_run(tiny_cache, tmp_path_factory.mktemp("reference"), test_config)
    return root, run


def _resume(kit, root, run, log, env=None):
    args = ["--training-run", run, "--from-step", "latest", "--no-torchrun", "--root", str(root)]
    return kit.spawn("trainer.resume_training", args, log, env=env)


def test_sigterm_finishes_the_step_saves_exits_0_and_resumes_bitwise(reference, tiny_root, cfg_file,
                                                                     kit, tmp_path):
    ref_root, ref_run = reference
    log = tmp_path / "out.log"
    proc = kit.spawn("trainer.rl_runner", ["--cfg", str(cfg_file()), "--root", str(tiny_root)], log,
                     env={"RLTUI_TEST_STEP_SLEEP": "0.5"})
    run = kit.run_name_from(log)
    status_path = localfs.Layout(tiny_root).run_status(run)
    kit.wait_status(status_path, lambda st: st["step"] == 1 and st["phase"] == "generating")
    proc.send_signal(signal.SIGTERM)  # in step 2, which finishes before the stop
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    status = json.loads(status_path.read_text())
    assert status["phase"] == "stopped" and status["step"] == 2 and status["latest_checkpoint"] == 2
    state = localfs.Layout(tiny_root).training_state(run)
    assert checkpoints.read_step_latest(state) == 2 and checkpoints.is_complete(state / "step_2")

    resumed = _resume(kit, tiny_root, run, log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert json.loads(status_path.read_text())["phase"] == "completed"
    kit.assert_same_adapter(ref_root / "training_runs" / ref_run / "training_state" / "step_6",
                            state / "step_6")
    a, b = kit.log(ref_root, ref_run), kit.log(tiny_root, run)
    assert [(a[s]["loss"], a[s]["reward_mean"]) for s in range(1, 7)] == \
           [(b[s]["loss"], b[s]["reward_mean"]) for s in range(1, 7)]


def test_stop_file_is_honoured_and_a_stale_one_removed_on_the_next_start(tiny_root, cfg_file, kit, tmp_path):
    log = tmp_path / "out.log"
    proc = kit.spawn("trainer.rl_runner", ["--cfg", str(cfg_file()), "--root", str(tiny_root)], log,
                     env={"RLTUI_TEST_STEP_SLEEP": "0.3"})
    run = kit.run_name_from(log)
    layout = localfs.Layout(tiny_root)
    kit.wait_status(layout.run_status(run), lambda st: st["step"] >= 1)
    layout.stop_request(run).touch()
    assert proc.wait(timeout=120) == 0
    status = json.loads(layout.run_status(run).read_text())
    assert status["phase"] == "stopped" and 1 <= status["step"] < 6
    assert layout.stop_request(run).exists()  # left for whoever asked; removed by the next session
    resumed = _resume(kit, tiny_root, run, log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert json.loads(layout.run_status(run).read_text())["phase"] == "completed"
    assert not layout.stop_request(run).exists()


# (phase to wait for, from which step, extra seconds before the kill): inside a save (the test
# pause is 0.5 s, before the checkpoint is sealed), at its very end, inside steps, at random
KILL_POINTS = [("saving", 1, 0.2), ("training", 2, 0.0), ("generating", 2, 0.0), ("saving", 3, 0.35),
               ("saving", 4, 0.5), ("saving", 4, 0.0), ("random", 5, 0.0)]


def test_sigkill_anywhere_leaves_a_complete_latest_checkpoint_and_resume_matches(
        reference, tiny_root, cfg_file, kit, tmp_path):
    ref_root, ref_run = reference
    log = tmp_path / "out.log"
    env = {"RLTUI_TEST_SAVE_SLEEP": "0.5", "RLTUI_TEST_STEP_SLEEP": "0.1"}
    cfg = cfg_file({"training.save_every": 1})  # the same training, saved at every step
    rng = random.Random(0)
    proc = kit.spawn("trainer.rl_runner", ["--cfg", str(cfg), "--root", str(tiny_root)], log, env=env)
    run = kit.run_name_from(log)
    layout = localfs.Layout(tiny_root)
    state = layout.training_state(run)
    kills: list[tuple[str, int]] = []
    for i, (phase, from_step, delay) in enumerate(KILL_POINTS):
        if i > 0:
            proc = _resume(kit, tiny_root, run, log, env=env)

        def ready(st, pid=proc.pid, from_step=from_step):  # this process, far enough
            return st["pid"] == pid and st["latest_checkpoint"] is not None and st["step"] >= from_step

        if phase == "random":
            kit.wait_status(layout.run_status(run), ready)
            time.sleep(rng.uniform(0.0, 1.5))
        elif phase == "saving":  # inside the save, before it is sealed
            kit.wait_status(layout.run_status(run), lambda st: ready(st) and st["phase"] == "saving"
                            and st["step"] > st["latest_checkpoint"])
            time.sleep(delay)
        else:
            kit.wait_status(layout.run_status(run), lambda st: ready(st) and st["phase"] == phase)
            time.sleep(delay)
        seen = localfs.read_json(layout.run_status(run))  # where this kill lands
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        kills.append((seen["phase"], seen["step"]))
        latest = checkpoints.read_step_latest(state)
        assert latest is not None and checkpoints.checkpoint_problems(state / f"step_{latest}") == []
        for step, path in checkpoints.list_step_dirs(state):  # no half-written step_N, ever
            assert checkpoints.checkpoint_problems(path) == [], (step, phase)
        if checkpoints.latest_complete_step(state) == 6:
            break
    if checkpoints.latest_complete_step(state) != 6:
        proc = _resume(kit, tiny_root, run, log)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert checkpoints.read_step_latest(state) == 6
    kit.assert_same_adapter(ref_root / "training_runs" / ref_run / "training_state" / "step_6",
                            state / "step_6")
    # The kills really landed: each in its own process, inside saves and outside, at several steps.
    assert len(kills) >= 4, kills
    assert any(phase == "saving" for phase, _ in kills), kills
    assert any(phase != "saving" for phase, _ in kills), kills
    assert len({step for _, step in kills}) >= 2, kills


def test_stall_hook_stops_progress_without_touching_status(tiny_root, cfg_file, kit, tmp_path):
    log = tmp_path / "out.log"
    proc = kit.spawn("trainer.rl_runner", ["--cfg", str(cfg_file()), "--root", str(tiny_root)], log,
                     env={"RLTUI_TEST_STALL_AT_STEP": "2"})
    try:
        run = kit.run_name_from(log)
        status_path = localfs.Layout(tiny_root).run_status(run)
        first = kit.wait_status(status_path, lambda st: st["step"] == 1 and st["phase"] == "training")
        time.sleep(3)
        assert json.loads(status_path.read_text()) == first and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
