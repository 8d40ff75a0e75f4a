"""Fault campaign (issue 13): the classes of failure that must never lose or cross wires, run
against one localfs, with a table of what survived.

Usage:
    .venv/bin/python bench/faults.py [--root DIR] [--seed 0] [--quick] [--skip CASE,...]

Cases (each a few runs; --quick: one each):
  stray-groups     a stale state.json names an unrelated process group (a `sleep` in its own
                   session) or an unrelated keeper pid: status, reconcile, stop, kill, supervise
  sigkill-trainer  jobs (auto-resume) whose trainer is SIGKILLed at random moments, saves included
  sigkill-keeper   jobs whose keeper is SIGKILLed at a random moment; supervise resumes them
  two-writers      the real trainer (tiny model): two resumes of one run started at once
  full-disk        the real trainer on a small tmpfs filled after its first checkpoint (root only)
  eval-ownership   runs whose names prefix each other; backup --cleanup of one (local moto S3)
  escapes          escape sequences in every kind of file; none reaches status, jobs or logs
The sigkill cases use the job tests' stand-in trainer (tests/jobs/fake_trainer.py: real
processes, real checkpoints through rltui.runs.checkpoints); the others the real trainer.

Columns: runs; checkpoints verified by sha256 at the end (every complete step_N, every file);
bytes lost (checkpoints seen complete during the run that are gone or fail sha256 at the end);
stray signals (decoy processes, in their own sessions and named by stale records in the same
localfs, found dead afterwards, plus signals rltui refused as not the job's are shown apart:
a refusal is the rule working, a dead decoy is the rule broken). 0 lost, 0 stray expected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "jobs"))
sys.path.insert(0, str(REPO / "bench"))

from fault_kit import PY, Decoys, Row, Watch, fake_job, final_state, stale_job, wait  # noqa: E402
from rltui.jobs import control, ownership, supervise  # noqa: E402
from rltui.jobs.records import JobState, read_state  # noqa: E402
from rltui.runs import checkpoints, localfs, machine  # noqa: E402


# ---------------------------------------------------------------- cases


def case_stray_groups(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    row = Row("stray-groups")
    for _ in range(runs):
        decoy = decoys.spawn()
        for keeper_is_decoy in (False, True):
            for act in ("status", "reconcile", "stop", "kill", "supervise"):
                job = stale_job(layout, decoy, keeper_is_decoy)
                if act == "status":
                    subprocess.run([PY, "-m", "rltui.cli", "--batch", "status", "--root", str(layout.root)],
                                   capture_output=True, cwd=REPO, timeout=120)
                elif act == "reconcile":
                    control.reconcile(layout, leftovers=True)
                elif act == "supervise":
                    supervise.supervise_once(layout)
                else:
                    for _ in range(2):  # the second finds it lost: kill tries its leftovers
                        try:
                            (control.stop if act == "stop" else control.kill)(layout, job)
                        except Exception:
                            pass
        row.runs += 1
    return row


def case_sigkill_trainer(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    row = Row("sigkill-trainer")
    for _ in range(runs):
        stale_job(layout, decoys.spawn())
        spec = fake_job(layout, steps=40, env={"FAKE_STEP_SLEEP": "0.05"})
        control.launch(layout, spec)
        watch = Watch(layout, spec.run)
        wait(lambda: checkpoints.latest_complete_step(layout.training_state(spec.run)) is not None, 60)
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0.2, 1.0))
            watch.poll()
            s = read_state(layout, spec.id)
            if s.state is JobState.RUNNING and s.child_pid:
                try:
                    os.kill(s.child_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        final = wait(lambda: final_state(layout, spec.id), 120, watch.poll)
        if final.state is not JobState.SUCCEEDED:
            row.notes.append(f"{spec.id}: {final.state.value}: {final.last_reason}")
        watch.settle(row)
        row.runs += 1
    return row


def case_sigkill_keeper(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    row = Row("sigkill-keeper")
    for _ in range(runs):
        stale_job(layout, decoys.spawn())
        spec = fake_job(layout, steps=60, env={"FAKE_STEP_SLEEP": "0.05"})
        control.launch(layout, spec)
        watch = Watch(layout, spec.run)
        wait(lambda: checkpoints.latest_complete_step(layout.training_state(spec.run)) is not None, 60)
        time.sleep(rng.uniform(0.0, 1.5))
        watch.poll()
        s = read_state(layout, spec.id)
        if s.keeper_pid:
            os.kill(s.keeper_pid, signal.SIGKILL)
        # supervise resumes the lost job (its trainer went with its keeper)
        def resumed_now():
            found = [new for old, new in supervise.supervise_once(layout).resumed if old == spec.id]
            return found or read_state(layout, spec.id).resumed_by
        try:
            found = wait(resumed_now, 60, watch.poll)
        except TimeoutError:
            s = read_state(layout, spec.id)
            row.notes.append(f"{spec.id} not resumed: {s.state.value}: {s.last_reason}")
            watch.settle(row)
            row.runs += 1
            continue
        new_id = found[0] if isinstance(found, list) else found
        final = wait(lambda: final_state(layout, new_id), 120, watch.poll)
        if final.state is not JobState.SUCCEEDED:
            row.notes.append(f"{new_id}: {final.state.value}: {final.last_reason}")
        watch.settle(row)
        row.runs += 1
    return row


def _tiny_root(root: Path) -> None:
    """models/tiny from the tests' cache (built once: trainer.tiny.ensure_tiny)."""
    import hashlib

    from trainer.tiny import ensure_tiny

    h = hashlib.sha256()
    for rel in ("trainer/tiny.py", "trainer/data.py"):
        h.update((REPO / rel).read_bytes())
    cache = Path(os.environ.get("RLTUI_TEST_MODEL_CACHE") or Path(tempfile.gettempdir()) / "rltui-tiny-cache") / h.hexdigest()[:12]
    ensure_tiny(cache)
    if not (root / "models" / "tiny").exists():
        shutil.copytree(cache / "models" / "tiny", root / "models" / "tiny")


CONFIG = """model: {base: tiny, init_adapter: warmstart}
data: {dataset: arith_r1_template}
rewards: [{function: correctness, weight: 1.0}]
grpo: {num_generations: 4, per_device_prompts: 2, max_completion_length: 16, num_iterations: 1, beta: 0.0, forward_batch_size: 4}
training: {total_steps: %d, save_every: 3, keep_last: 10, cpu_threads: 1}
"""


def _trainer(root: Path, module: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", module, *args, "--root", str(root)], cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, start_new_session=True)


def case_two_writers(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    row = Row("two-writers")
    root = layout.root
    _tiny_root(root)
    cfg = root / "faults_cfg.yaml"
    cfg.write_text(CONFIG % 3)
    for i in range(runs):
        stale_job(layout, decoys.spawn())
        log = root / f"two_writers_{i}.log"
        first = _trainer(root, "trainer.rl_runner", ["--cfg", str(cfg)], log)
        if first.wait(timeout=600) != 0:
            row.notes.append(f"the first session failed: {log}")
            continue
        run = [x.split()[1] for x in log.read_text().splitlines() if x.startswith("run: ")][-1]
        watch = Watch(layout, run)
        procs = [_trainer(root, "trainer.resume_training",
                          ["--training-run", run, "--from-step", "latest", "--additional-steps", "3",
                           "--no-torchrun"], root / f"two_writers_{i}_{k}.log", {"RLTUI_TEST_STEP_SLEEP": "0.3"})
                 for k in range(2)]
        codes = sorted(p.wait(timeout=600) for p in procs)
        if codes != [0, 2]:
            row.notes.append(f"exit codes {codes} (want [0, 2])")
        lines = (layout.train_log(run)).read_text().splitlines()
        per_step: dict[int, set] = {}
        for line in lines:
            rec = json.loads(line)
            per_step.setdefault(rec["step"], set()).add(rec.get("session"))
        twice = [s for s, v in per_step.items() if len(v) > 1]
        if twice:
            row.notes.append(f"steps trained twice: {twice}")
        watch.settle(row)
        row.runs += 1
    return row


def case_full_disk(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    row = Row("full-disk")
    for i in range(runs):
        mnt = Path(tempfile.mkdtemp(prefix="faults_disk_"))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
        if done.returncode != 0:
            row.notes.append(f"skipped: cannot mount a tmpfs ({done.stderr.strip() or done.returncode})")
            return row
        try:
            small = localfs.Layout(mnt / "localfs").ensure()
            _tiny_root(small.root)
            stale_job(small, decoys.spawn())
            cfg = mnt / "cfg.yaml"
            cfg.write_text(CONFIG % 6)
            cli = subprocess.Popen([PY, "-m", "rltui.cli", "--batch", "train", "--cfg", str(cfg), "--auto-resume",
                                    "--root", str(small.root)], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "RLTUI_TEST_STEP_SLEEP": "1.0"})
            stale = {j.spec.run for j in control.list_jobs(small) if j.spec}
            run = wait(lambda: next((j.spec.run for j in control.list_jobs(small)
                                     if j.spec and j.spec.run and j.spec.run not in stale), None), 120)
            watch = Watch(small, run)

            def past_first() -> bool:
                watch.poll()
                try:
                    st = localfs.read_json(small.run_status(run))
                except Exception:
                    return False
                return st.get("latest_checkpoint") == 0 and st.get("phase") != "saving"

            wait(past_first, 300)
            vfs = os.statvfs(mnt)
            with open(mnt / "filler", "wb") as f:
                try:
                    f.write(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - 96 * 1024))
                except OSError:
                    pass
            out, err = cli.communicate(timeout=600)
            full_lines = [x for x in out.splitlines() if x.startswith("rl_runner: ") and "disk full" in x]
            if "Traceback" in out + err or len(full_lines) != 1:
                row.notes.append(f"output: {len(full_lines)} disk-full lines, traceback: {'Traceback' in out + err}")
            else:
                row.notes.append(full_lines[0].replace(str(mnt), "MNT"))
            [job] = [j for j in control.list_jobs(small) if j.spec and j.spec.run == run]
            if job.phase is not JobState.FAILED or job.state.restarts:
                row.notes.append(f"job {job.phase} after {job.state.restarts} restarts")
            watch.settle(row)
            row.runs += 1
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            shutil.rmtree(mnt, ignore_errors=True)
    return row


# ---------------------------------------------------------------- issue 13: ownership and escapes (helper SAFE)

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1bP1$r\x1b\\\x9b31m"


def case_eval_ownership(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    """Runs whose names prefix each other (`expN`, `expN_v2`); `backup --cleanup` of the shorter
    against a local S3 (moto) must leave every file of the longer's evaluations as it was."""
    row = Row("eval-ownership")
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        row.notes.append("skipped: moto/boto3 not installed")
        return row
    from tests.archive.conftest import write_run  # real checkpoints through rltui.runs.checkpoints

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        settings = layout.root.parent / "faults_s3.env"
        settings.write_text(f"RLTUI_S3_BUCKET=faults\nAWS_ACCESS_KEY_ID=AKIAFAULTS\n"
                            f"AWS_SECRET_ACCESS_KEY=faults-secret\nAWS_REGION=us-east-1\n"
                            f"AWS_ENDPOINT_URL_S3=http://{host}:{port}\n")
        boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                     aws_access_key_id="AKIAFAULTS", aws_secret_access_key="faults-secret"
                     ).create_bucket(Bucket="faults")
        env = {**os.environ, "RLTUI_S3_ENV": str(settings), "PYTHONPATH": str(REPO)}
        for i in range(runs):
            short, other = f"exp{i}", f"exp{i}_v2"
            for run in (short, other):
                write_run(layout, run, steps=(1,), big=rng.randrange(20_000, 200_000))
                localfs.write_yaml_atomic(layout.eval_config(run, "gsm8k"), {"run": run, "dataset": "gsm8k"})
            folder = layout.eval_step_dir(other, "arith_r1_template", 1)
            folder.mkdir(parents=True)
            localfs.write_json_atomic(folder / "summary.json", {"step": 1, "accuracy": 0.5})
            localfs.write_yaml_atomic(layout.eval_config(other, "arith_r1_template"),
                                      {"run": other, "dataset": "arith_r1_template"})
            before = {p: (p.stat().st_size, checkpoints.sha256_file(p))
                      for p in layout.eval_runs.glob(f"{other}_*/**/*") if p.is_file()}
            subprocess.run([PY, "-m", "rltui.sync_to_s3", "--action", "backup", "--training-run", short,
                            "--cleanup", "--root", str(layout.root)], env=env, cwd=REPO,
                           capture_output=True, timeout=300)
            for p, (size, sha) in before.items():
                if p.is_file() and checkpoints.sha256_file(p) == sha:
                    row.verified += 1
                else:
                    row.lost_bytes += size
            row.runs += 1
    finally:
        server.stop()
    row.notes.append(f"{row.verified} files of the longer-named runs' evaluations checked")
    return row


def case_escapes(layout: localfs.Layout, decoys: Decoys, rng: random.Random, runs: int) -> Row:
    """Escape sequences in every kind of file (status.json error, state.json reason, config values,
    train-log keys, output.log lines): no ESC, BEL or C1 byte in `status`, `jobs`, `logs`."""
    row = Row("escapes")
    leaked = shown = 0
    for i in range(runs):
        run = f"run_escapes_{i}"
        layout.run_dir(run).mkdir(parents=True)
        localfs.write_yaml_atomic(layout.run_config(run), {"model": {"base": f"m{ESCAPES}"},
                                                          "dataset": {"name": f"d{ESCAPES}"}})
        localfs.write_json_atomic(layout.run_status(run), {"run": run, "phase": "failed", "step": 1,
                                                           "error": f"boom {ESCAPES}"})
        localfs.append_jsonl(layout.train_log(run), {"step": 1, f"k{ESCAPES}": 1.0})
        job = f"job-escapes-{i}"
        localfs.write_json_atomic(layout.job_spec(job), {"id": job, "kind": "train", "run": run, "argv": ["x"]})
        localfs.write_json_atomic(layout.job_state(job), {"state": "failed", "run": run,
                                                          "last_reason": f"crashed {ESCAPES}"})
        layout.job_log(job).write_text(f"line {ESCAPES}\n" * 3)
        for cmd in (["status"], ["jobs"], ["logs", job], ["logs", job, "--tail", "2"]):
            out = subprocess.run([PY, "-m", "rltui.cli", "--batch", *cmd, "--root", str(layout.root)],
                                 capture_output=True, cwd=REPO, timeout=120).stdout
            leaked += sum(out.count(b) for b in (b"\x1b", b"\x07", "\x9b".encode()))
            shown += 1
        row.runs += 1
    row.notes.append(f"{leaked} escape/control bytes in {shown} outputs")
    if leaked:
        row.lost_bytes += leaked  # counted as a failure of the campaign
    return row


CASES = {
    "stray-groups": (case_stray_groups, 3),
    "sigkill-trainer": (case_sigkill_trainer, 4),
    "sigkill-keeper": (case_sigkill_keeper, 3),
    "two-writers": (case_two_writers, 1),
    "full-disk": (case_full_disk, 1),
    "eval-ownership": (case_eval_ownership, 2),
    "escapes": (case_escapes, 1),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", help="localfs root (default: a new temporary folder, removed after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one run of each case")
    p.add_argument("--skip", default="", help="cases to leave out, comma-separated")
    args = p.parse_args()
    rng = random.Random(args.seed)
    tmp = None if args.root else tempfile.mkdtemp(prefix="faults_")
    layout = localfs.Layout(Path(args.root or tmp) / "localfs").ensure()
    decoys = Decoys()
    rows = []
    started = time.monotonic()
    try:
        for name, (fn, runs) in CASES.items():
            if name in args.skip.split(","):
                continue
            dead_before, refused_before = decoys.dead(), ownership.tally.refused
            t0 = time.monotonic()
            try:
                row = fn(layout, decoys, rng, 1 if args.quick else runs)
            except Exception as e:  # a case that breaks is reported, the others still run
                row = Row(name, notes=[f"broke: {type(e).__name__}: {e}"])
            row.stray = decoys.dead() - dead_before
            row.refused = ownership.tally.refused - refused_before
            row.notes.insert(0, f"{time.monotonic() - t0:.0f}s")
            rows.append(row)
            print(f"{row.case}: done ({row.notes[0]})", file=sys.stderr, flush=True)
    finally:
        decoys.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"fault campaign on {machine.this_host()}, {os.cpu_count()} CPUs, seed {args.seed}, "
          f"{time.monotonic() - started:.0f}s")
    print("| case | runs | checkpoints verified (sha256) | bytes lost | stray signals | refused (not the job's) | notes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.case} | {r.runs} | {r.verified} | {r.lost_bytes} | {r.stray} | {r.refused} | "
              f"{'; '.join(r.notes)} |")
    return 0 if all(r.lost_bytes == 0 and r.stray == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
