"""Every action, driven by its key or from the command palette, creates the right job record.

The launcher here writes job.json exactly as rltui.jobs.launch does but starts nothing (these
tests are about the record); stop and kill act on a real keeper running a real process, and
tests/tui/test_e2e_tmux.py launches a real evaluation from the keyboard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from textual.widgets import Input

from rltui.runs.localfs import Layout
from tui_kit import (
    RUNS, Recorded, make_test_app, pilot_test, read_job_json, record_only_launcher, started, wait_until,
)

PY = sys.executable


async def select_run(pilot, name: str) -> None:
    """Filter the table down to one run (keyboard only), which selects it."""
    await pilot.press("slash", *name, "enter")
    detail = pilot.app.query_one("RunDetail")
    assert await wait_until(pilot, lambda: pilot.app.query_one("RunsTable").selected == name
                            and detail.run is not None and detail.run.name == name)


def form_error(app) -> str:
    errors = app.screen.query("#form-error")
    return str(errors.first().render()) if errors else ""


async def launched(pilot, recorded: Recorded) -> dict:
    assert await wait_until(pilot, lambda: bool(recorded.specs)), "nothing was launched"
    layout = Layout(pilot.app.root)
    return read_job_json(layout, recorded.specs[-1].id)


@pilot_test
async def test_evaluate_key_writes_an_eval_job_with_the_form_values(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        run = RUNS["completed"]
        await select_run(pilot, run)
        await pilot.press("e")
        assert type(app.screen).__name__ == "EvalForm"
        await pilot.press("tab", *"10,30", "tab", *"0.5", "enter")
        job = await launched(pilot, recorded)
    assert job["kind"] == "eval" and job["run"] == run
    assert job["argv"] == [PY, "-m", "evaluator.eval_batch", "--training-run", run,
                           "--eval-dataset", "arith_r1_template", "--steps", "10,30", "--subset-frac", "0.5",
                           "--root", str(tui_root)]


@pilot_test
async def test_evaluate_from_the_command_palette(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["stopped"])
        await pilot.press("ctrl+p", *"Evaluate run")
        await pilot.pause(0.5)
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: type(app.screen).__name__ == "EvalForm")
        await pilot.press("enter")
        job = await launched(pilot, recorded)
    assert job["argv"][3:7] == ["--training-run", RUNS["stopped"], "--eval-dataset", "arith_r1_template"]


@pilot_test
async def test_resume_key_offers_the_selected_checkpoint(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        run = RUNS["completed"]
        await select_run(pilot, run)
        app.query_one("#checkpoints").focus()
        await pilot.press("down")  # checkpoints are newest first: 30, then 20
        await pilot.press("r")
        assert app.screen.query_one("#f-from_step", Input).value == "20"
        await pilot.press("tab", *"5", "enter")
        job = await launched(pilot, recorded)
    assert job["kind"] == "resume"
    assert job["argv"][:7] == [PY, "-m", "trainer.resume_training", "--training-run", run,
                               "--from-step", "20"]
    assert job["argv"][-2:] == ["--additional-steps", "5"]  # builders.resume_command appends it


@pilot_test
async def test_a_resume_refused_for_want_of_more_steps_names_and_focuses_that_field(tui_root: Path) -> None:
    # the builder's line says "pass --additional-steps K": in the form, that field is "more steps"
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        run = RUNS["completed"]  # at its target step 30
        await select_run(pilot, run)
        await pilot.press("r", "enter")  # from the latest step, no more steps
        assert await wait_until(pilot, lambda: "already reached" in form_error(app))
        assert form_error(app).startswith(f"✗ more steps: run {run} already reached its target step 30 at step 30")
        assert app.focused is app.screen.query_one("#f-additional_steps", Input)  # moved from "from step"
        assert recorded.specs == []
        await pilot.press(*"5", "enter")
        job = await launched(pilot, recorded)
    assert job["argv"][-2:] == ["--additional-steps", "5"]


@pilot_test
async def test_resume_from_palette_defaults_to_latest(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["crashed"])
        await pilot.press("ctrl+p", *"Resume run")
        await pilot.pause(0.5)
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: type(app.screen).__name__ == "ResumeForm")
        await pilot.press("enter")
        job = await launched(pilot, recorded)
    assert job["argv"][3:6] == ["--training-run", RUNS["crashed"], "--from-step"]
    assert job["argv"][6].isdigit()  # "latest" resolved once where the job is built


@pilot_test
async def test_new_training_form_writes_train_job_with_auto_resume_and_eval_after(
    tui_root: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "my.yaml"
    cfg.write_text("model: {base: models/tiny}\n")
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("n")
        await pilot.press("ctrl+u", *str(cfg), "tab", "tab", *"7", "tab", "tab", "tab", *"arith",
                          "tab", "space")
        await pilot.press("ctrl+s")
        job = await launched(pilot, recorded)
    assert job["kind"] == "train"
    assert job["argv"] == [PY, "-m", "trainer.rl_runner", "--cfg", str(cfg), "--steps", "7",
                           "--root", str(tui_root)]
    assert job["restart"]["auto_resume"] is True
    assert job["followups"] == [{"kind": "eval", "dataset": "arith_r1_template"}]  # short name resolved


@pilot_test
async def test_archive_key_writes_a_backup_job_for_the_selected_run(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["completed"])
        await pilot.press("a")
        assert type(app.screen).__name__ == "ArchiveForm"
        await pilot.press("tab", "tab", "space", "tab", "space", "ctrl+s")
        job = await launched(pilot, recorded)
    assert job["kind"] == "sync"
    assert job["argv"] == [PY, "-m", "rltui.sync_to_s3", "--action", "backup", "--training-run",
                           RUNS["completed"], "--cleanup", "--keep-latest", "--root", str(tui_root)]


@pytest.mark.parametrize("field,bad,message", [
    ("subset_frac", "abc", "✗ subset: bad --subset-frac: 'abc'"),
    ("subset_frac", "2", "✗ subset: bad --subset-frac: 2.0"),
    ("dataset", "../etc", "✗ dataset: bad --eval-dataset"),
    ("steps", "1,x", "✗ steps: bad --steps: '1,x'"),
])
@pilot_test
async def test_a_bad_form_value_is_named_in_place_and_nothing_is_launched(
    tui_root: Path, field: str, bad: str, message: str
) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    jobs_before = sorted(p.name for p in Layout(tui_root).jobs.iterdir())
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["completed"])
        await pilot.press("e")
        app.screen.query_one(f"#f-{field}", Input).focus()
        await pilot.press("ctrl+u", *bad, "enter")
        assert await wait_until(pilot, lambda: message in form_error(app))
        assert type(app.screen).__name__ == "EvalForm"  # still open
    assert recorded.specs == []
    assert sorted(p.name for p in Layout(tui_root).jobs.iterdir()) == jobs_before


@pilot_test
async def test_a_missing_config_file_is_named_and_nothing_is_launched(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("n", "ctrl+u", *"/nope/missing.yaml", "enter")
        assert await wait_until(pilot, lambda: "bad --cfg: '/nope/missing.yaml' is not a file" in form_error(app))
    assert recorded.specs == []


@pilot_test
async def test_every_action_is_in_the_command_palette_and_the_footer_bindings(tui_root: Path) -> None:
    from rltui.tui.app import COMMANDS

    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        bound = {b.binding.action for b in app.active_bindings.values()}
    for command in COMMANDS:
        assert command.action in bound
        assert command.title in titles


@pilot_test
async def test_toggle_auto_resume_key_flips_the_runs_training_job(tui_root: Path) -> None:
    from rltui.jobs.records import auto_resume_override_path

    job_id = "20261121-100000-train-aaaa"
    override = auto_resume_override_path(Layout(tui_root), job_id)
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["running"])
        await pilot.press("t")
        assert await wait_until(pilot, lambda: override.exists())
        assert json.loads(override.read_text()) == {"auto_resume": True}
        await pilot.press("ctrl+p", *"Toggle auto-resume")
        await pilot.pause(0.5)
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: json.loads(override.read_text()) == {"auto_resume": False})


@pilot_test
async def test_toggle_auto_resume_on_a_run_without_a_training_job_writes_nothing(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    jobs_before = sorted(str(p) for p in Layout(tui_root).jobs.rglob("*"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await select_run(pilot, RUNS["completed"])  # only an eval job
        await pilot.press("t")
        await pilot.pause(0.3)
    assert sorted(str(p) for p in Layout(tui_root).jobs.rglob("*")) == jobs_before


@pilot_test
async def test_archive_form_can_list_backups_without_a_run(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("a")
        await pilot.press("enter", "down", "down", "enter")  # the action list: backup-all, list-backups
        assert await wait_until(pilot, lambda: app.screen.query_one("#f-action").value == "list-backups")
        await pilot.press("ctrl+s")
        job = await launched(pilot, recorded)
    assert job["argv"] == [PY, "-m", "rltui.sync_to_s3", "--action", "list-backups", "--root", str(tui_root)]
