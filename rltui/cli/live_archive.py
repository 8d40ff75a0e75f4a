"""The live-archive flags of `train` and `resume`, and `resume --restore` on a fresh box.

    rltui --batch train --cfg CFG --archive [--archive-keep-latest] [--archive-keep-every N]
                        [--archive-budget SIZE] [--archive-bandwidth RATE] [--archive-interval S]
    rltui --batch resume --training-run RUN --restore [--from-step latest|N] ...

`--archive` (or `archive: {enabled: true}` in the config) has the job's keeper start a
`sync --action follow` job beside the trainer (rltui.archive.follow). Flags override the config.
`--restore` fetches from the bucket only what the resume needs (that checkpoint, the run's own
files and its logs) when the run or the checkpoint is not on this box, then resumes as usual.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rltui.errors import UsageError
from rltui.jobs.records import ArchivePlan
from rltui.runs import checkpoints, localfs
from rltui.runs.localfs import Layout


def add_archive_flags(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    g = p.add_argument_group("live archive to S3 (settings: see `rltui --batch sync -h`)")
    g.add_argument("--archive", action="store_true",
                   help="upload every new complete checkpoint, the logs and evaluations while it trains")
    g.add_argument("--archive-keep-latest", action="store_true",
                   help="delete archived local checkpoints, keeping the newest")
    g.add_argument("--archive-keep-every", type=int, metavar="N",
                   help="never delete a local checkpoint whose step is a multiple of N")
    g.add_argument("--archive-budget", metavar="SIZE",
                   help="delete the oldest archived local checkpoints while they take more than SIZE")
    g.add_argument("--archive-bandwidth", metavar="RATE", help="cap uploads at RATE bytes/s (e.g. 20M)")
    g.add_argument("--archive-interval", type=float, metavar="S", help="look for new files every S seconds")
    if resume:
        p.add_argument("--restore", action="store_true",
                       help="first fetch the checkpoint, config and logs from the S3 backup if they are "
                            "not here (a fresh box)")


def archive_plan(args: argparse.Namespace, config: dict[str, Any] | None) -> ArchivePlan | None:
    """The job's live archive from the flags over the config's `archive:` section, or None."""
    section = (config or {}).get("archive") if isinstance(config, dict) else None
    section = section if isinstance(section, dict) else {}
    enabled = bool(args.archive or section.get("enabled"))
    flagged = [args.archive_keep_latest, args.archive_keep_every, args.archive_budget,
               args.archive_bandwidth, args.archive_interval]
    if not enabled:
        if any(v not in (None, False) for v in flagged):
            raise UsageError("--archive-* settings need --archive (or archive: {enabled: true} in the config)")
        return None

    def pick(flag: Any, key: str) -> Any:
        return flag if flag not in (None, False) else section.get(key)

    plan = ArchivePlan(
        interval_s=pick(args.archive_interval, "interval_s"),
        keep_latest=bool(pick(args.archive_keep_latest, "keep_latest")),
        keep_every=pick(args.archive_keep_every, "keep_every"),
        local_budget=pick(args.archive_budget, "local_budget"),
        bandwidth=pick(args.archive_bandwidth, "bandwidth"),
    )
    from rltui.archive.flags import check_flags
    from rltui.archive.settings import load_settings

    check_flags("follow", training_run="run", keep_latest=plan.keep_latest, interval=plan.interval_s,
                keep_every=plan.keep_every, local_budget=plan.local_budget, bandwidth=plan.bandwidth)
    load_settings()  # no bucket set: one line now, not a failed archive job later
    return plan


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The YAML config as a mapping, or None when it cannot be read (the builder says why)."""
    try:
        data = localfs.read_yaml(Path(path))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def restore_for_resume(layout: Layout, run: str, from_step: str) -> None:
    """Fetch what resuming `run` from `from_step` needs from the bucket, unless it is all here."""
    localfs.validate_run_name(run)
    if _have_checkpoint(layout, run, from_step):
        sys.stderr.write(f"{run}: the checkpoint is here; nothing to restore\n")
        return
    from rltui.archive.restore import restore_run
    from rltui.archive.settings import load_settings, make_client
    from rltui.archive.store import RemoteStore, translate

    settings = load_settings()
    step: str | int = "latest" if from_step == "latest" else _step(from_step)
    try:
        restore_run(layout, RemoteStore(make_client(settings), settings), run, for_resume=step,
                    out=sys.stderr)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise translate(e, settings, "restore") from None


def _step(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"bad --from-step: {text!r} (use 'latest' or a step number)") from None


def _have_checkpoint(layout: Layout, run: str, from_step: str) -> bool:
    training_state = layout.training_state(run)
    if not layout.run_config(run).is_file():
        return False
    if from_step == "latest":
        try:
            checkpoints.latest_complete_step(training_state)
            return True
        except FileNotFoundError:
            return False
    return not checkpoints.checkpoint_problems(layout.step_dir(run, _step(from_step)))
