"""The job forms offer the backend: slurm with its options writes a job.json for Slurm, with the
team's defaults from ROOT/settings/slurm.yaml under what the form says; a bad option stays in the
form as one line."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Select

from rltui.runs.localfs import Layout
from tui_kit import Recorded, make_test_app, pilot_test, read_job_json, record_only_launcher, started, wait_until


async def fill_train_form(pilot, cfg: Path, backend: str, options: str) -> None:
    await pilot.press("n")
    assert await wait_until(pilot, lambda: type(pilot.app.screen).__name__ == "TrainForm")
    screen = pilot.app.screen
    screen.query_one("#f-cfg", Input).value = str(cfg)
    screen.query_one("#f-backend", Select).value = backend
    screen.query_one("#f-slurm_options", Input).value = options
    await pilot.press("ctrl+s")


@pilot_test
async def test_the_training_form_submits_to_slurm_with_its_options(tui_root: Path, tmp_path: Path) -> None:
    (tui_root / "settings").mkdir()
    (tui_root / "settings" / "slurm.yaml").write_text("account: team\ntime: '2:00:00'\n")
    cfg = tmp_path / "my.yaml"
    cfg.write_text("model: {base: tiny}\n")
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 36)) as pilot:
        await started(pilot)
        await fill_train_form(pilot, cfg, "slurm", "nodes=2 partition=gpu time=4:00:00")
        assert await wait_until(pilot, lambda: bool(recorded.specs)), "nothing was launched"
    job = read_job_json(Layout(tui_root), recorded.specs[-1].id)
    assert job["backend"] == "slurm"
    slurm = job["slurm"]
    assert (slurm["nodes"], slurm["partition"], slurm["time"], slurm["account"]) == (2, "gpu", "4:00:00", "team")


@pilot_test
async def test_a_bad_slurm_option_is_shown_and_nothing_is_launched(tui_root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "my.yaml"
    cfg.write_text("model: {base: tiny}\n")
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 36)) as pilot:
        await started(pilot)
        await fill_train_form(pilot, cfg, "slurm", "nodes=two")
        error = lambda: str(pilot.app.screen.query_one("#form-error").render())  # noqa: E731
        assert await wait_until(pilot, lambda: "nodes=two" in error())
        assert "bad Slurm option" in error()
        assert type(pilot.app.screen).__name__ == "TrainForm"
    assert recorded.specs == []
