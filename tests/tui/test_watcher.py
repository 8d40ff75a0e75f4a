"""The localfs watcher: inotify events reduced to runs/evals/jobs, debounced, and the polling fallback."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from rltui.runs.localfs import Layout, write_json_atomic
from rltui.tui.watcher import (
    Change,
    RootWatcher,
    WatchMode,
    change_for_path,
    events_unreliable_on,
    mount_fstype,
)

RUN = "run_2026-11-26_07-00-00"


class Collector:
    def __init__(self) -> None:
        self.batches: list[set[Change]] = []
        self.got = threading.Event()

    def __call__(self, changes: set[Change]) -> None:
        self.batches.append(set(changes))
        self.got.set()

    def wait_for(self, change: Change, timeout: float = 20.0) -> bool:
        for _ in range(int(timeout * 10)):
            if any(change in b for b in self.batches):
                return True
            self.got.wait(0.1)
            self.got.clear()
        return False


@pytest.fixture
def root(tmp_path: Path) -> Path:
    layout = Layout(tmp_path).ensure()
    (layout.training_state(RUN)).mkdir(parents=True)
    return tmp_path


def test_paths_reduce_to_the_run_eval_or_job_they_belong_to(tmp_path: Path) -> None:
    assert change_for_path(tmp_path, tmp_path / "training_runs" / RUN / "training_state" / "step_3" / "x") == Change("run", RUN)
    assert change_for_path(tmp_path, tmp_path / "eval_runs" / f"{RUN}_arith" / "consolidated_metrics.csv") == Change("eval", f"{RUN}_arith")
    assert change_for_path(tmp_path, tmp_path / "jobs" / "j1" / "state.json") == Change("job", "j1")
    assert change_for_path(tmp_path, tmp_path / "datasets" / "arith" / "train.jsonl") is None
    assert change_for_path(tmp_path, tmp_path / "jobs" / ".j1.json.tmp") is None
    assert change_for_path(tmp_path, "/elsewhere/training_runs/x") is None


def test_mount_fstype_picks_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"server:/export {tmp_path}/nfs nfs4 rw 0 0\n"
        f"sshfs#me@host: {tmp_path}/nfs/deeper fuse.sshfs rw 0 0\n"
    )
    assert mount_fstype(tmp_path / "nfs" / "localfs", str(mounts)) == "nfs4"
    assert mount_fstype(tmp_path / "nfs" / "deeper" / "x", str(mounts)) == "fuse.sshfs"
    assert mount_fstype(tmp_path / "local", str(mounts)) == "ext4"
    assert [events_unreliable_on(t) for t in ("nfs4", "cifs", "fuse.sshfs", "ext4", None)] == [
        True, True, True, False, False,
    ]


def test_a_new_checkpoint_is_reported_once_for_its_run_with_inotify(root: Path) -> None:
    got = Collector()
    watcher = RootWatcher(root, got, debounce_s=0.5, fstype="ext4")
    assert watcher.start() is WatchMode.INOTIFY
    try:
        step = Layout(root).step_dir(RUN, 1)
        step.mkdir()
        for i in range(20):
            (step / f"file_{i}").write_text("x")
        assert got.wait_for(Change("run", RUN))
        # twenty files and a folder arrive as far fewer deliveries than events
        assert len(got.batches) < 5
    finally:
        watcher.stop()


def test_job_state_changes_are_reported_for_that_job(root: Path) -> None:
    got = Collector()
    watcher = RootWatcher(root, got, debounce_s=0.1, fstype="ext4")
    watcher.start()
    try:
        write_json_atomic(Layout(root).job_state("job-1"), {"state": "running"})
        assert got.wait_for(Change("job", "job-1"))
    finally:
        watcher.stop()


def test_exhausted_inotify_falls_back_to_polling_and_still_sees_changes(root: Path) -> None:
    def exhausted() -> object:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    modes: list[tuple[WatchMode, str]] = []
    got = Collector()
    watcher = RootWatcher(
        root, got, debounce_s=0.05, poll_interval_s=0.1, fstype="ext4",
        observer_factory=exhausted, on_mode=lambda m, r: modes.append((m, r)),
    )
    assert watcher.start() is WatchMode.POLLING
    try:
        assert "ENOSPC" in watcher.reason
        assert modes[-1][0] is WatchMode.POLLING
        write_json_atomic(Layout(root).run_status(RUN), {"step": 1})
        assert got.wait_for(Change("run", RUN))
    finally:
        watcher.stop()


def test_network_filesystems_are_polled_without_trying_inotify(root: Path) -> None:
    def must_not_be_called() -> object:
        raise AssertionError("inotify must not be tried on NFS")

    got = Collector()
    watcher = RootWatcher(root, got, poll_interval_s=0.1, fstype="nfs4", observer_factory=must_not_be_called)
    assert watcher.start() is WatchMode.POLLING
    try:
        assert "nfs4" in watcher.reason
        write_json_atomic(Layout(root).job_state("job-2"), {"state": "queued"})
        assert got.wait_for(Change("job", "job-2"))
    finally:
        watcher.stop()


def test_changes_between_a_baseline_and_the_start_are_delivered(root: Path) -> None:
    from rltui.tui.watcher import poll_signatures

    baseline = poll_signatures(root)
    write_json_atomic(Layout(root).run_status(RUN), {"step": 2})  # while the first scan runs
    got = Collector()
    watcher = RootWatcher(root, got, debounce_s=0.05, fstype="ext4")
    watcher.start(baseline)
    try:
        assert got.wait_for(Change("run", RUN))
    finally:
        watcher.stop()


def test_reading_files_reports_nothing(root: Path) -> None:
    write_json_atomic(Layout(root).run_status(RUN), {"step": 1})
    got = Collector()
    watcher = RootWatcher(root, got, debounce_s=0.05, fstype="ext4")
    watcher.start()
    try:
        for _ in range(50):  # the index and the log panes read; that must not look like a change
            Layout(root).run_status(RUN).read_text()
            list(Layout(root).training_state(RUN).iterdir())
        write_json_atomic(Layout(root).job_state("marker"), {"state": "queued"})
        assert got.wait_for(Change("job", "marker"))
        assert all(batch == {Change("job", "marker")} for batch in got.batches)
    finally:
        watcher.stop()
