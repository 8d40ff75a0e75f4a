"""Under torchrun with 2 CPU processes (gloo): DDP over the LoRA parameters, a STOP request agreed
by both ranks, per-rank RNG files, and a resume at the run's world size that ends bitwise identical
to the run never stopped."""

from __future__ import annotations

import json
import sys

import pytest

from rltui.runs import checkpoints, localfs
from trainer import resume_training

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            "--nproc_per_node=2", "-m", "trainer.rl_runner"]


def _torchrun(kit, cfg, root, log, env=None):
    return kit.spawn("", ["--cfg", str(cfg), "--root", str(root)], log, env=env, python=TORCHRUN)


def test_two_process_run_stopped_and_resumed_equals_the_run_never_stopped(tiny_root, cfg_file, kit,
                                                                          tmp_path, capsys):
    cfg = cfg_file()
    layout = localfs.Layout(tiny_root)
    straight_log, stopped_log = tmp_path / "straight.log", tmp_path / "stopped.log"
    straight = _torchrun(kit, cfg, tiny_root, straight_log)
    assert straight.wait(timeout=600) == 0, straight_log.read_text()[-4000:]
    ref = kit.run_name_from(straight_log)

    stopped = _torchrun(kit, cfg, tiny_root, stopped_log, env={"RLTUI_TEST_STEP_SLEEP": "0.3"})
    run = kit.run_name_from(stopped_log)
    kit.wait_status(layout.run_status(run), lambda st: st["step"] >= 2 and st["phase"] == "training")
    layout.stop_request(run).touch()  # seen by rank 0 and 1 alike; agreed in one all-reduce
    assert stopped.wait(timeout=300) == 0, stopped_log.read_text()[-4000:]
    status = json.loads(layout.run_status(run).read_text())
    assert status["phase"] == "stopped" and status["world_size"] == 2 and 2 <= status["step"] < 6
    state = layout.training_state(run)
    info = checkpoints.read_checkpoint_info(state / f"step_{status['step']}")
    assert info["world_size"] == 2 and info["rng_files"] == ["rng/rank_0.pt", "rng/rank_1.pt"]
    assert info["data_position"] == status["step"] * 2 * 2  # 2 prompts per rank and step

    # a different world size is refused unless asked for
    assert resume_training.main(["--training-run", run, "--no-torchrun", "--root", str(tiny_root)]) == 2
    assert "world size 2" in capsys.readouterr().err

    resumed = kit.spawn("trainer.resume_training", ["--training-run", run, "--from-step", "latest",
                                                    "--root", str(tiny_root)], stopped_log)
    assert resumed.wait(timeout=600) == 0, stopped_log.read_text()[-4000:]
    assert json.loads(layout.run_status(run).read_text())["phase"] == "completed"
    kit.assert_same_adapter(layout.step_dir(ref, 6), layout.step_dir(run, 6))
    a, b = kit.log(tiny_root, ref), kit.log(tiny_root, run)
    for step in range(1, 7):
        for key in ("loss", "reward_mean", "rewards/correctness", "grad_norm", "learning_rate"):
            assert a[step][key] == b[step][key], (step, key)
