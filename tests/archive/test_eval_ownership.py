"""Which run owns an eval folder: what the folder records, never a name prefix (issue 13).

Runs `exp` and `exp_v2` prefix each other: `exp_v2_arith_r1_template` reads as exp's dataset
`v2_arith_r1_template` as well as exp_v2's `arith_r1_template`. Backup, cleanup and restore of
`exp` must leave exp_v2's evaluations alone, and the index must show them under exp_v2 only.
"""

from __future__ import annotations

import io
import json

from rltui.archive.backup import backup_run
from rltui.archive.restore import restore_run
from rltui.runs import checkpoints, folders, localfs
from rltui.runs.index import Index
from rltui.runs.localfs import Layout

from tests.archive.conftest import write_run

FOREIGN = "exp_v2_arith_r1_template"


def _eval_files(layout: Layout, folder: str) -> dict[str, str]:
    top = layout.eval_runs / folder
    return {rel: checkpoints.sha256_file(top / rel) for rel in checkpoints.list_files(top)}


def _record(layout: Layout, run: str, dataset: str) -> None:
    localfs.write_yaml_atomic(layout.eval_config(run, dataset), {"run": run, "dataset": dataset})


def _two_runs(layout: Layout, *, record: bool = True) -> None:
    write_run(layout, "exp", steps=(1,), big=20_000)
    write_run(layout, "exp_v2", steps=(1,), big=20_000)
    d = layout.eval_step_dir("exp_v2", "arith_r1_template", 1)
    d.mkdir(parents=True)
    localfs.write_json_atomic(d / "summary.json", {"step": 1, "accuracy": 0.75})
    if record:
        _record(layout, "exp", "gsm8k")
        _record(layout, "exp_v2", "gsm8k")
        _record(layout, "exp_v2", "arith_r1_template")


def test_backup_cleanup_of_a_run_deletes_nothing_of_a_run_whose_name_it_prefixes(s3):
    layout = Layout(s3.root)
    _two_runs(layout)
    foreign_before = _eval_files(layout, FOREIGN)
    v2_run_before = {p: checkpoints.sha256_file(layout.run_dir("exp_v2") / p)
                     for p in checkpoints.list_files(layout.run_dir("exp_v2"))}

    proc = s3.cli("--action", "backup", "--training-run", "exp", "--cleanup", "--root", str(s3.root))

    assert proc.returncode == 0, proc.stderr
    assert not (layout.eval_runs / "exp_gsm8k").exists()  # exp's own evaluation went
    assert _eval_files(layout, FOREIGN) == foreign_before
    assert _eval_files(layout, "exp_v2_gsm8k")  # exp_v2's other evaluation is untouched
    assert {p: checkpoints.sha256_file(layout.run_dir("exp_v2") / p)
            for p in checkpoints.list_files(layout.run_dir("exp_v2"))} == v2_run_before
    manifest = s3.store().get_manifest("exp")
    assert not [p for p in manifest.files if p.startswith(f"eval_runs/{FOREIGN}/")]
    assert not [p for p in manifest.files if p.startswith("eval_runs/exp_v2_gsm8k/")]


def test_cleanup_and_restore_leave_alone_another_runs_folder_an_older_backup_listed(s3):
    """An older backup of `exp` took exp_v2's folder (no record, exp_v2 not here yet); once
    exp_v2 exists, exp's cleanup keeps that folder and exp's restore does not write into it."""
    layout = Layout(s3.root)
    write_run(layout, "exp", steps=(1,), big=20_000)
    d = layout.eval_step_dir("exp_v2", "arith_r1_template", 1)
    d.mkdir(parents=True)
    localfs.write_json_atomic(d / "summary.json", {"step": 1, "accuracy": 0.75})
    store = s3.store()
    backup_run(layout, store, "exp", out=io.StringIO(), err=io.StringIO())
    assert any(p.startswith(f"eval_runs/{FOREIGN}/") for p in store.get_manifest("exp").files)

    write_run(layout, "exp_v2", steps=(1,), big=20_000)  # now both names fit the folder
    foreign_before = _eval_files(layout, FOREIGN)
    out = io.StringIO()
    result = backup_run(layout, store, "exp", cleanup=True, out=out, err=io.StringIO())

    assert _eval_files(layout, FOREIGN) == foreign_before
    assert FOREIGN in result.cleanup.foreign
    assert f"kept eval_runs/{FOREIGN}/" in out.getvalue()
    assert not any(p.startswith(f"eval_runs/{FOREIGN}/") for p in result.cleanup.deleted)

    # exp_v2's folder changed since; restoring exp must neither overwrite nor refuse over it
    localfs.write_json_atomic(d / "summary.json", {"step": 1, "accuracy": 0.9})
    changed = _eval_files(layout, FOREIGN)
    res = restore_run(layout, store, "exp", out=io.StringIO(), err=io.StringIO())
    assert FOREIGN in res.foreign
    assert _eval_files(layout, FOREIGN) == changed
    assert (layout.eval_runs / "exp_gsm8k" / "consolidated_metrics.csv").is_file()


def test_the_index_and_the_metrics_store_file_each_eval_folder_under_the_run_it_records(tmp_path):
    from rltui.runs.ingest import _eval_folders

    layout = Layout(tmp_path).ensure()
    _two_runs(layout)
    snap = Index(layout).scan()
    assert sorted(snap.runs["exp"].evals) == ["gsm8k"]
    assert sorted(snap.runs["exp_v2"].evals) == ["arith_r1_template", "gsm8k"]
    assert not snap.orphan_evals
    stored = _eval_folders(layout, {"exp": "", "exp_v2": ""})
    assert sorted(stored["exp"]) == ["gsm8k"] and sorted(stored["exp_v2"]) == ["arith_r1_template", "gsm8k"]


def test_a_folder_two_run_names_fit_and_that_records_nothing_belongs_to_neither(tmp_path):
    layout = Layout(tmp_path).ensure()
    _two_runs(layout, record=False)
    snap = Index(layout).scan()
    assert "v2_arith_r1_template" not in snap.runs["exp"].evals
    assert "arith_r1_template" not in snap.runs["exp_v2"].evals
    assert FOREIGN in snap.orphan_evals
    assert "exp, exp_v2" in (snap.orphan_evals[FOREIGN].owner_note or "")
    # exp_gsm8k only exp fits; exp_v2_gsm8k both names fit (exp's dataset would be v2_gsm8k)
    assert "gsm8k" in snap.runs["exp"].evals and not snap.runs["exp_v2"].evals
    assert "exp_v2_gsm8k" in snap.orphan_evals
    owner = folders.eval_owner(layout, FOREIGN)
    assert owner.run is None


def test_a_refresh_moves_a_folder_when_a_run_whose_name_fits_appears(tmp_path):
    layout = Layout(tmp_path).ensure()
    write_run(layout, "exp", steps=(1,), big=1_000)
    d = layout.eval_step_dir("exp_v2", "arith", 1)
    d.mkdir(parents=True)
    localfs.write_json_atomic(d / "summary.json", {"step": 1, "accuracy": 0.5})
    index = Index(layout)
    assert "v2_arith" in index.scan().runs["exp"].evals  # only exp fits: by name, it is exp's
    _record(layout, "exp_v2", "arith")
    write_run(layout, "exp_v2", steps=(1,), big=1_000)
    snap = index.refresh_run("exp_v2")
    assert "v2_arith" not in snap.runs["exp"].evals
    assert "arith" in snap.runs["exp_v2"].evals


def test_the_record_wins_over_the_name_and_a_contradicting_record_claims_nothing():
    runs = {"exp", "exp_v2"}
    assert folders.decide_eval_owner("exp_v2_a", ("exp", "v2_a"), runs).run == "exp"
    assert folders.decide_eval_owner("exp_v2_a", ("exp_v2", None), runs).run == "exp_v2"
    assert folders.decide_eval_owner("exp_v2_a", ("other", "a"), runs).run is None
    assert folders.decide_eval_owner("exp_v2_a", ("exp", "gsm8k"), runs).run is None
    assert folders.decide_eval_owner("exp_gsm8k", None, runs).run == "exp"
    assert folders.decide_eval_owner("exp_v2_a", None, {"exp"}).run == "exp"
    assert folders.parse_eval_record("settings:\n  run: x\nrun: 'exp'\ndataset: gsm8k\n") == ("exp", "gsm8k")
    assert folders.parse_eval_record(json.dumps({"run": "exp", "dataset": "d"}, indent=2)) == ("exp", "d")
    assert folders.parse_eval_record("dataset: d\n") is None
