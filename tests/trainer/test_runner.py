"""rl_runner and resume_training in one process on the tiny model: what a run writes, exact
resume from a saved step (a fork, since it is older than the run's newest), and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rltui.runs import checkpoints, localfs
from trainer import resume_training


@pytest.fixture(scope="module")
def six_steps(tiny_cache, tmp_path_factory, kit, test_config):
    """One 6-step run (checkpoints at 0, 3, 6), shared by the tests of this module."""
    return kit.new_run(tiny_cache, tmp_path_factory.mktemp("straight"), test_config)


def test_a_run_writes_config_status_logs_tensorboard_and_checkpoints(six_steps, kit):
    root, run, cfg = six_steps
    layout = localfs.Layout(root)
    assert layout.run_config(run).read_text() == cfg.read_text()  # as given
    resolved = yaml.safe_load((layout.run_dir(run) / "config_resolved.yaml").read_text())
    assert resolved["grpo"]["epsilon_high"] is None and resolved["optim"]["min_lr_ratio"] == 0.0
    status = json.loads(layout.run_status(run).read_text())
    assert status["phase"] == "completed" and status["step"] == 6 and status["target_step"] == 6
    assert status["latest_checkpoint"] == 6 and status["world_size"] == 1 and status["parent"] is None
    assert {"run", "pid", "host", "time", "started", "error"} <= status.keys()
    log = kit.log(root, run)
    assert sorted(log) == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "reward_mean", "reward_std", "rewards/correctness", "rewards/format_strict",
                "kl", "clip_low", "clip_high", "completion_length", "learning_rate", "grad_norm",
                "time_generation", "time_scoring", "time_training", "time_saving", "tokens_per_s"):
        assert key in log[1], key
    assert log[3]["time_saving"] > 0 and log[2]["time_saving"] == 0
    # beta > 0: the reference is the base model with the adapter disabled, so the warm-started
    # policy is already away from it at step 1
    assert all(log[s]["kl"] > 0 for s in log)
    assert log[1]["learning_rate"] < log[2]["learning_rate"]  # warmup
    rollouts = [json.loads(x) for x in layout.rollouts_log(run).read_text().splitlines()]
    assert {r["step"] for r in rollouts} == {1, 2, 4, 6}  # the first step, then every 2
    assert {"prompt", "completion", "answer", "reward", "advantage"} <= rollouts[0].keys()
    ratios = [json.loads(x) for x in layout.ratios_log(run).read_text().splitlines()]
    assert len(ratios) == 6 and len(ratios[0]["iterations"]) == 2
    assert list(layout.tensorboard_dir(run).glob("events.out.tfevents.*"))
    state = layout.training_state(run)
    assert [s for s, _ in checkpoints.list_step_dirs(state)] == [0, 3, 6]
    assert checkpoints.read_step_latest(state) == 6
    assert all(checkpoints.is_complete(p) for _, p in checkpoints.list_step_dirs(state))
    info = checkpoints.read_checkpoint_info(state / "step_3")
    assert info["data_position"] == 3 * 2 and info["target_step"] == 6 and info["schedule_steps"] == 6


def test_a_run_prints_one_progress_line_per_logged_step(six_steps):
    root, run, _ = six_steps
    out = (root.parent / "trainer_stdout.txt").read_text()
    lines = [x for x in out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == [f"{s}/6" for s in range(1, 7)], out
    for word in ("reward ", "loss ", "kl ", "lr ", " s/step", "ETA "):
        assert word in lines[1], (word, lines[1])
    assert lines[0].endswith(" s (warm-up), ETA from the next")  # the first step's time, not a rate
    assert lines[-1].endswith("ETA 0s")


def test_resume_from_an_older_step_forks_and_matches_the_straight_run_bitwise(six_steps, kit):
    root, run, _ = six_steps
    state = localfs.Layout(root).training_state(run)
    before = {p: p.stat().st_mtime_ns for p in state.rglob("*")}
    argv = ["--training-run", run, "--from-step", "3", "--no-torchrun", "--root", str(root)]
    command = resume_training.plan(resume_training.parse_args(argv))
    assert command[1:3] == ["-m", "trainer.rl_runner"]
    code, child, err = kit.run_inprocess(command[3:])
    assert code == 0, err
    assert child != run
    assert {p: p.stat().st_mtime_ns for p in state.rglob("*")} == before  # parent untouched
    child_state = localfs.Layout(root).training_state(child)
    kit.assert_same_adapter(state / "step_6", child_state / "step_6")
    a, b = kit.log(root, run), kit.log(root, child)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        for key in ("loss", "reward_mean", "rewards/correctness", "kl", "learning_rate", "grad_norm"):
            assert a[step][key] == b[step][key], (step, key)
    status = json.loads(localfs.Layout(root).run_status(child).read_text())
    assert status["parent"] == {"run": run, "step": 3} and status["phase"] == "completed"
    assert checkpoints.read_checkpoint_info(child_state / "step_6")["parent"] == {"run": run, "step": 3}


def test_additional_steps_continue_a_finished_run_in_place(six_steps, kit, capsys):
    root, run, _ = six_steps
    argv = ["--training-run", run, "--from-step", "latest", "--additional-steps", "1",
            "--no-torchrun", "--root", str(root)]
    command = resume_training.plan(resume_training.parse_args(argv))
    assert "run: " not in capsys.readouterr().out  # the trainer says it, once
    code, same, err = kit.run_inprocess(command[3:])
    assert code == 0 and same == run, err
    assert kit.last_stdout.count("run: ") == 1
    state = localfs.Layout(root).training_state(run)
    assert checkpoints.read_step_latest(state) == 7 and checkpoints.is_complete(state / "step_7")
    status = json.loads(localfs.Layout(root).run_status(run).read_text())
    assert status["target_step"] == 7 and status["target_history"] == [6, 7]
    assert checkpoints.read_checkpoint_info(state / "step_7")["target_history"] == [6, 7]


@pytest.mark.parametrize("step, target, additional, expected", [
    (58, 150, None, 150),   # a plain resume continues to the target
    (58, 150, 3, 153),      # --additional-steps extends the target, not the step resumed
    (150, 150, 3, 153),     # a finished run: K more steps
    (40, 30, 5, 45),        # a checkpoint already past its target: K past the checkpoint
])
def test_the_resume_target_rule(step, target, additional, expected):
    info = {"target_step": target}
    assert resume_training.target_step(info, step, additional, "run_x") == expected


def test_a_plain_resume_of_a_finished_run_says_how_to_extend_it():
    from trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="--additional-steps"):
        resume_training.target_step({"target_step": 61}, 61, None, "run_x")


def test_run_name_uses_a_precreated_empty_folder_and_refuses_a_used_one(tiny_root, cfg_file, kit):
    name = localfs.create_run_dir(localfs.Layout(tiny_root))
    cfg = cfg_file({"training.total_steps": 5, "grpo.num_iterations": 1, "optim.warmup_steps": 0})
    code, run, err = kit.run_inprocess(["--cfg", str(cfg), "--root", str(tiny_root), "--run-name", name,
                                        "--steps", "1"])
    assert code == 0 and run == name, err
    status = json.loads(localfs.Layout(tiny_root).run_status(name).read_text())
    assert status["step"] == status["target_step"] == 1  # --steps overrides training.total_steps
    code, _, err = kit.run_inprocess(["--cfg", str(cfg), "--root", str(tiny_root), "--run-name", name])
    assert code == 2 and "already in use" in err and err.count("\n") == 1


def _misfit_adapter(tiny_paths, tmp_path) -> Path:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "misfit"
    shutil.copytree(tiny_paths.warmstart, bad)
    weights = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.cat([weights[key], weights[key]], dim=1)  # twice the input width
    save_file(weights, str(bad / "adapter_model.safetensors"))
    return bad


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "out_of_range", "missing_base",
                                  "missing_adapter", "misfit_adapter", "missing_dataset", "bad_reward"])
def test_bad_config_or_paths_end_in_one_line_and_exit_2(case, tiny_root, tiny_paths, cfg_file, kit, tmp_path):
    overrides = {
        "unknown_key": {"grpo.num_generation": 4},
        "wrong_type": {"grpo.max_completion_length": "long"},
        "out_of_range": {"grpo.temperature": 0},
        "missing_base": {"model.base": str(tmp_path / "no-such-model")},
        "missing_adapter": {"model.init_adapter": str(tmp_path / "no-such-adapter")},
        "misfit_adapter": {"model.init_adapter": str(_misfit_adapter(tiny_paths, tmp_path))},
        "missing_dataset": {"data.dataset": "gsm8k_r1_template"},
        "bad_reward": {"rewards": [{"function": "nosuchmodule:reward"}]},
    }[case]
    rewards = overrides.pop("rewards", None)
    cfg = cfg_file(overrides)
    if rewards:
        data = yaml.safe_load(cfg.read_text())
        data["rewards"] = rewards
        cfg.write_text(yaml.safe_dump(data))
    code, run, err = kit.run_inprocess(["--cfg", str(cfg), "--root", str(tiny_root)])
    named = {"unknown_key": "grpo.num_generation", "wrong_type": "'long'", "out_of_range": "temperature",
             "missing_base": "no-such-model", "missing_adapter": "no-such-adapter",
             "misfit_adapter": "misfit", "missing_dataset": "gsm8k", "bad_reward": "nosuchmodule"}[case]
    assert code == 2 and run is None
    assert err.count("\n") == 1 and named in err and "Traceback" not in err, err
    assert not (tiny_root / "training_runs").exists() or not any((tiny_root / "training_runs").iterdir())


def _resume_error(argv: list[str], capsys) -> str:
    assert resume_training.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_resume_requests_end_in_one_line_and_exit_2(six_steps, tmp_path, capsys):
    root, run, _ = six_steps
    base = ["--root", str(root), "--no-torchrun"]
    assert "no such training run" in _resume_error(["--training-run", "run_1999-01-01_00-00-00", *base], capsys)
    assert "bad run name" in _resume_error(["--training-run", "../etc", *base], capsys)
    assert "bad --from-step 'x'" in _resume_error(["--training-run", run, "--from-step", "x", *base], capsys)
    assert "no checkpoint step_4" in _resume_error(["--training-run", run, "--from-step", "4", *base], capsys)
    assert "--additional-steps 0" in _resume_error(
        ["--training-run", run, "--from-step", "3", "--additional-steps", "0", *base], capsys)
    # a copy of the run whose checkpoints we damage
    copy_root = tmp_path / "localfs"
    shutil.copytree(root / "training_runs" / run, copy_root / "training_runs" / run, symlinks=True)
    state = copy_root / "training_runs" / run / "training_state"
    (state / "step_3" / "optimizer.pt").unlink()
    with open(state / "step_3" / "rng" / "rank_0.pt", "ab") as f:
        f.write(b"junk")
    err = _resume_error(["--training-run", run, "--from-step", "3", "--root", str(copy_root)], capsys)
    assert "missing file optimizer.pt" in err and "wrong size rng/rank_0.pt" in err
    info_path = state / "step_0" / "training_info.json"
    info = json.loads(info_path.read_text())
    info["world_size"] = 2
    info_path.write_text(json.dumps(info))
    err = _resume_error(["--training-run", run, "--from-step", "0", "--no-torchrun", "--root", str(copy_root)], capsys)
    assert "world size 2" in err and "--allow-world-size-change" in err
    shutil.rmtree(state)
    err = _resume_error(["--training-run", run, "--root", str(copy_root)], capsys)
    assert "no complete checkpoint" in err


def test_entry_points_report_bad_input_in_one_line_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  loss_type: ppo\n")
    for module, args in (("trainer.rl_runner", ["--cfg", str(bad), "--root", str(tmp_path)]),
                         ("trainer.resume_training", ["--training-run", "run_x", "--root", str(tmp_path)])):
        p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
