"""The backend flags of `rltui --batch train|resume|eval`: where the job runs.

    --backend local|slurm  [--nodes N] [--gpus-per-node G] [--partition P] [--time T]
                           [--account A] [--sbatch-arg ARG]... [--signal-before S]

`local` (the default) runs the job under a keeper on this machine. `slurm` writes a batch script
to jobs/JOB_ID/slurm.sh and submits it with sbatch; defaults for the Slurm flags come from
ROOT/settings/slurm.yaml (rltui.jobs.backends.slurm_spec), a flag wins over the file.
"""

from __future__ import annotations

import argparse

from rltui.jobs.records import JobSpec
from rltui.runs.localfs import Layout

SLURM_FLAGS = ("nodes", "gpus_per_node", "partition", "time", "account", "sbatch_args", "signal_before_s")


def add_backend_flags(p: argparse.ArgumentParser, *, training: bool) -> None:
    g = p.add_argument_group("backend", "where the job runs (defaults: ROOT/settings/slurm.yaml)")
    g.add_argument("--backend", choices=("local", "slurm"), default=None,
                   help="local: a keeper on this machine (default); slurm: submit with sbatch")
    if training:
        g.add_argument("--nodes", type=int, metavar="N", help="Slurm nodes, one torchrun each (default 1)")
    g.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="Slurm GPUs per node; training runs one process per GPU")
    g.add_argument("--partition", metavar="P", help="Slurm partition")
    g.add_argument("--time", metavar="T", help="Slurm time limit (e.g. 4:00:00)")
    g.add_argument("--account", metavar="A", help="Slurm account")
    g.add_argument("--sbatch-arg", dest="sbatch_args", action="append", metavar="ARG",
                   help="one more sbatch option, as it is (repeatable), e.g. --sbatch-arg=--qos=high")
    if training:
        g.add_argument("--signal-before", dest="signal_before_s", type=int, metavar="S",
                       help="Slurm sends TERM S seconds before the time limit: the run saves (default 300)")


def apply_backend(layout: Layout, spec: JobSpec, args: argparse.Namespace) -> JobSpec:
    """`spec` with its Slurm part when `--backend slurm` (or any Slurm flag) was given."""
    from rltui.jobs.backends.slurm import spec_from_flags

    flags = {k: getattr(args, k, None) for k in SLURM_FLAGS}
    slurm = spec_from_flags(layout, getattr(args, "backend", None), **flags)
    return spec if slurm is None else spec.with_changes(slurm=slurm)
