"""The batch script of a Slurm job: written to `jobs/JOB_ID/slurm.sh` before sbatch, and kept.

    text = batch_script(layout, spec)     # spec.slurm says what to ask Slurm for

Every start of the allocation (the first, and each requeue) runs the whole script again:
1. `slurm_attempt begin` decides what to run this time: a new training run trains, every later
   start resumes from the run's newest complete checkpoint; nothing once the run holds its final
   checkpoint, the restart budget is spent or the user asked to stop (rltui.jobs.backends.slurm_attempt).
2. One srun task per node runs torchrun with c10d rendezvous on the allocation's first node
   (`--rdzv-id` = the Slurm job id, so a requeued allocation forms a new group). An evaluation is
   one task without torchrun.
3. TERM reaches the batch shell only (`--signal=B:TERM@S` before the time limit, `rltui stop`
   through `scancel --batch --signal=TERM`): the trap writes the run's STOP file, which every
   rank reads at the next step boundary, so all ranks save the same step and exit 0. torchrun
   itself is not signalled: it would kill its workers 30 s later, mid-step on a GPU.
   A user's stop also starts the grace timer: past it, the job cancels itself.
4. `slurm_attempt end` records the outcome and, within the restart budget and with auto-resume,
   requeues the job (`scontrol requeue`) after a crash or a save at the time limit.
Output of every start is appended to the job's output.log.
"""

from __future__ import annotations

import shlex

from rltui.jobs.backends.slurm_spec import SlurmSpec
from rltui.jobs.records import JobKind, JobSpec, with_code_root
from rltui.runs.localfs import Layout

BEGIN_NOTHING_TO_DO = 100  # `slurm_attempt begin`: the run is done or stopped; end the job (success)


def procs_per_node(spec: JobSpec) -> int:
    """torchrun's --nproc-per-node: one process per GPU asked for; else a resume splits the
    checkpoint's world size over the nodes, and a new run takes --nproc per node."""
    s = spec.slurm
    assert s is not None
    if spec.kind.trains and s.gpus_per_node:
        return s.gpus_per_node
    if spec.kind is JobKind.RESUME:
        return max(1, spec.nproc // s.nodes)
    return max(1, spec.nproc)


def sbatch_directives(layout: Layout, spec: JobSpec) -> list[str]:
    s: SlurmSpec = spec.slurm  # type: ignore[assignment]
    log = str(layout.job_log(spec.id)).replace("%", "%%")
    out = [f"--job-name=rltui-{spec.id}", f"--output={log}", "--open-mode=append"]
    if spec.kind.trains:
        out += [f"--nodes={s.nodes}", "--ntasks-per-node=1", "--requeue"]
        if s.gpus_per_node:
            out.append(f"--gpus-per-node={s.gpus_per_node}")
        if s.signal_before_s:
            out.append(f"--signal=B:TERM@{s.signal_before_s}")
    else:
        out += ["--nodes=1", "--ntasks=1", "--no-requeue"]
        if s.gpus_per_node:
            out.append("--gpus-per-node=1")
    for flag, value in (("partition", s.partition), ("time", s.time), ("account", s.account)):
        if value:
            out.append(f"--{flag}={value}")
    return out + list(s.sbatch_args)


def batch_script(layout: Layout, spec: JobSpec, python: str) -> str:
    s: SlurmSpec = spec.slurm  # type: ignore[assignment]
    env = with_code_root(dict(spec.env))
    q = shlex.quote
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in sbatch_directives(layout, spec)]
    lines += [
        f"# rltui job {spec.id} ({spec.kind.value}{', run ' + spec.run if spec.run else ''}): written by",
        "# rltui before submission and kept. Every start of the allocation runs it again from the top.",
        "set -u",
        f"PY={q(python)}",
        f"JOB_DIR={q(str(layout.job_dir(spec.id)))}",
        f"KIND={spec.kind.value}",
        *(f"export {k}={q(v)}" for k, v in sorted(env.items())),
        f"cd {q(spec.cwd or str(layout.root))} || exit 1",
        'attempt() { "$PY" -m rltui.jobs.backends.slurm_attempt "$@"; }',
        "",
        "# What to run this time (the first start trains, later starts resume from step_latest).",
        'attempt begin "$JOB_DIR"; B=$?',
        f"[ $B -eq {BEGIN_NOTHING_TO_DO} ] && exit 0",
        "[ $B -ne 0 ] && exit $B",
        'mapfile -d "" -t CMD < "$JOB_DIR/attempt.argv"',
        "",
        "# TERM (the time limit's warning, or `rltui stop`) comes to this shell only: ask the",
        "# trainer to save at its next step boundary; a user's stop cancels the job after its grace.",
        "STEP=",
        f"STOP_FILE={q(str(layout.stop_request(spec.run))) if spec.kind.trains and spec.run else ''}",
        "on_term() {",
        '  GRACE=$(attempt term "$JOB_DIR")',
        '  if [ "$KIND" = eval ] && [ -n "$STEP" ]; then kill -TERM "$STEP" 2>/dev/null; fi',
        "  # a trainer still starting removes a stale STOP file when its session begins: write it again",
        '  if [ -n "$STOP_FILE" ] && [ -n "$STEP" ]; then',
        '    ( while kill -0 "$STEP" 2>/dev/null; do [ -e "$STOP_FILE" ] || : > "$STOP_FILE"; sleep 5; done ) &',
        "  fi",
        '  if [ -n "$GRACE" ]; then ( sleep "$GRACE"; scancel "$SLURM_JOB_ID" ) & fi',
        "}",
        "trap on_term TERM",
        "",
    ]
    if spec.kind.trains:
        lines += [
            "# torchrun's c10d rendezvous on the allocation's first node; one srun task per node.",
            'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            'ADDR=$(scontrol show node "$HEAD" 2>/dev/null | grep -o "NodeAddr=[^ ]*" | cut -d= -f2)',
            f"PORT=$(( {s.rdzv_port} + SLURM_JOB_ID % 1000 ))",
            'srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\',
            '  "$PY" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" '
            f"--nproc-per-node={procs_per_node(spec)} \\",
            '  --rdzv-backend=c10d --rdzv-endpoint="${ADDR:-$HEAD}:$PORT" --rdzv-id="$SLURM_JOB_ID" \\',
            '  "${CMD[@]}" &',
        ]
    else:
        lines += ['srun --ntasks=1 "$PY" "${CMD[@]}" &']
    lines += [
        "STEP=$!",
        'while kill -0 "$STEP" 2>/dev/null; do wait "$STEP"; done',
        'wait "$STEP"; RC=$?',
        "",
        "# Record the outcome; requeue within the restart budget (auto-resume).",
        'attempt end "$JOB_DIR" "$RC"',
        "exit $?",
        "",
    ]
    return "\n".join(lines)
