"""Two "nodes" on this one machine (two slurmd under two node names): one srun task per node,
each running torchrun --nnodes 2 --nproc-per-node 1 (gloo, c10d rendezvous on the first node);
the run trains, then a resume job continues it at the same world size."""

from __future__ import annotations

import json

import pytest

from slurm_kit import run_cli

pytestmark = pytest.mark.slow


def test_two_nodes_train_and_resume(slurm_cluster, slurm_root, slurm_cfg):
    common = ("--backend", "slurm", "--nodes", "2", "--gpus", "none")
    done = run_cli(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=2)), *common)
    assert done.returncode == 0, done.stderr + done.stdout
    (run,) = [p.name for p in (slurm_root / "training_runs").iterdir()]
    state = slurm_root / "training_runs" / run / "training_state"
    info = json.loads((state / "step_2" / "training_info.json").read_text())
    assert info["world_size"] == 2
    assert sorted(p.name for p in (state / "step_2" / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]

    # a resume keeps the world size: 3 nodes cannot split 2 ranks; refused before anything is submitted
    refused = run_cli(slurm_cluster, slurm_root, "resume", "--training-run", run, "--additional-steps", "1",
                      "--backend", "slurm", "--nodes", "3", "--gpus", "none")
    assert refused.returncode == 2 and "world size 2" in refused.stderr, refused.stderr
    assert len(list((slurm_root / "jobs").iterdir())) == 1

    done = run_cli(slurm_cluster, slurm_root, "resume", "--training-run", run, "--additional-steps", "1", *common)
    assert done.returncode == 0, done.stderr + done.stdout
    info = json.loads((state / "step_3" / "training_info.json").read_text())
    assert info["world_size"] == 2 and info["target_step"] == 3
    status = json.loads((slurm_root / "training_runs" / run / "status.json").read_text())
    assert status["phase"] == "completed" and status["step"] == 3
    jobs = sorted((slurm_root / "jobs").iterdir())
    begins = [json.loads(line) for j in jobs for line in (j / "attempts.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "begin"]
    nodes = {b["nodes"] for b in begins}
    assert nodes == {slurm_cluster.run(["sinfo", "-h", "-o", "%N"]).stdout.strip()}  # both nodes, every time

