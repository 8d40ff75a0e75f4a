"""One rule for "what is a run folder" (issue 15): the index, the TUI's quick list and watcher,
the metrics store's ingestion and the archive's backup-all list the same runs of a tricky tree."""

from __future__ import annotations

import io
import os

from rltui.archive.backup import backup_all
from rltui.runs import folders
from rltui.runs.index import Index
from rltui.runs.localfs import Layout
from rltui.tui.live import quick_runs
from rltui.tui.watcher import Change, change_for_path, poll_signatures

from tests.archive.conftest import write_run


def _tricky_tree(layout: Layout, elsewhere) -> None:
    write_run(layout, "run_2026-01-01_00-00-00", steps=(1,), big=1_000)
    # a run moved to another disk and linked back
    moved = Layout(elsewhere)
    write_run(moved, "run_2026-01-02_00-00-00", steps=(1,), big=1_000)
    os.symlink(moved.run_dir("run_2026-01-02_00-00-00"), layout.training_runs / "run_2026-01-02_00-00-00")
    # names no writer of ours makes, a file, a dangling link, a hidden folder
    (layout.training_runs / "bad name").mkdir()
    (layout.training_runs / "-dash").mkdir()
    (layout.training_runs / ".hidden").mkdir()
    (layout.training_runs / "a_file").write_text("x")
    os.symlink(elsewhere / "nowhere", layout.training_runs / "dangling")
    # a legacy run: listed read-only by the index, never a training run
    (layout.rl_runs / "old_run" / "step_1").mkdir(parents=True)


def test_index_watcher_quick_list_and_backup_all_agree_on_the_run_folders(s3, tmp_path):
    layout = Layout(s3.root)
    _tricky_tree(layout, tmp_path / "other_disk")
    expected = ["run_2026-01-01_00-00-00", "run_2026-01-02_00-00-00"]

    snap = Index(layout).scan()
    assert sorted(snap.runs) == expected
    assert sorted(snap.legacy_runs) == ["old_run"]
    assert [n for n, _p in folders.run_folders(layout)] == expected
    assert sorted(r.name for r in quick_runs(layout, now=0.0)) == expected
    assert sorted(c.name for c in poll_signatures(layout.root) if c.kind == "run") == expected
    for name in ("bad name", "-dash", ".hidden"):
        assert change_for_path(layout.root, layout.training_runs / name / "status.json") is None
    assert change_for_path(layout.root, layout.training_runs / expected[1] / "status.json") == \
        Change("run", expected[1])

    from rltui.runs.ingest import ingest
    from rltui.runs.store import Store

    with Store.open(layout.root) as store:  # the metrics store's ingestion
        ingest(store, layout)
        assert store.run_names() == expected

    out = io.StringIO()
    results = backup_all(layout, s3.store(), out=out, err=io.StringIO())
    assert sorted(r.run for r in results) == expected
    linked = s3.store().get_manifest(expected[1])
    assert any(p.startswith(f"training_runs/{expected[1]}/training_state/step_1/") for p in linked.files)
