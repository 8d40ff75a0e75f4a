"""One writer per record (issue 15): every change of a job's state.json goes through
records.update_state, which holds the job's lock, and transitions made at once are all kept."""

from __future__ import annotations

import ast
import multiprocessing
from pathlib import Path

from jobs_helpers import fake_train_spec
from rltui.jobs import records
from rltui.jobs.records import JobState, StateFile, create_job, read_state, update_state

RLTUI = Path(records.__file__).resolve().parents[1]
WRITERS = {"write_json_atomic", "write_text_atomic", "write_bytes_atomic", "open", "replace", "rename",
           "write_text", "write_bytes"}


def _writes_a_state_file(call: ast.Call) -> bool:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name not in WRITERS:
        return False
    for arg in call.args:
        for node in ast.walk(arg):
            if isinstance(node, ast.Attribute) and node.attr == "job_state":
                return True
            if isinstance(node, ast.Constant) and node.value == "state.json":
                return True
    return False


def test_only_update_state_writes_a_jobs_state_file():
    found = []
    for path in sorted(RLTUI.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and _writes_a_state_file(node):
                    found.append(f"{path.relative_to(RLTUI.parent)}:{fn.name}")
    # create_job writes the first state.json into a hidden folder nobody else sees yet
    assert sorted(set(found)) == ["rltui/jobs/records.py:create_job", "rltui/jobs/records.py:update_state"]


def _note_many(root: str, job_id: str, who: int, n: int) -> None:
    from rltui.runs.localfs import Layout

    layout = Layout(root)
    for i in range(n):
        def change(current: StateFile | None, i: int = i) -> StateFile:
            current.note(f"writer {who} note {i}")
            return current

        update_state(layout, job_id, change, durable=False)


def test_transitions_made_at_once_are_all_kept(layout):
    spec = fake_train_spec(layout)
    create_job(layout, spec, StateFile(JobState.RUNNING, run=spec.run))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_note_many, args=(str(layout.root), spec.id, w, 25)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    reasons = read_state(layout, spec.id).reasons
    assert len(reasons) == 150 and len(set(reasons)) == 150  # none lost, none twice


def test_create_job_appears_whole_or_not_at_all(layout, monkeypatch):
    spec = fake_train_spec(layout)
    calls = []

    def failing(path, data, **kw):  # the second file (state.json) meets a full disk
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    real = records.write_json_atomic
    monkeypatch.setattr(records, "write_json_atomic", failing)
    try:
        create_job(layout, spec, StateFile(JobState.QUEUED))
    except OSError:
        pass
    else:
        raise AssertionError("create_job did not fail")
    assert list(layout.jobs.iterdir()) == []  # no job folder, no temporary left
    monkeypatch.setattr(records, "write_json_atomic", real)
    create_job(layout, spec, StateFile(JobState.QUEUED))
    assert read_state(layout, spec.id).state is JobState.QUEUED
    assert records.read_spec(layout, spec.id) == spec
