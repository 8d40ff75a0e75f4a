"""The log pane: the fields people read first, the latest entry per step, and a live step line
from the trainer's output."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rltui.runs.localfs import Layout
from rltui.tui.log_pane import LogPane, step_line
from tui_kit import RUNS, make_test_app, pilot_test, started, wait_until

RECORD = {"step": 7, "loss": 0.02134, "kl": 0.0012, "clip_high": 0.0, "reward_mean": 0.4125,
          "learning_rate": 1e-5, "grad_norm": 0.5, "time_generation": 2.0, "time_scoring": 0.1,
          "time_training": 1.0, "time_saving": 0.1, "session": "abc", "time": 1.0}


def test_a_train_log_line_starts_with_step_reward_loss_kl_lr_and_time():
    step, text = step_line(json.dumps(RECORD))
    assert step == 7
    assert text.startswith("step 7  reward 0.412  loss 0.02134  kl 0.0012  lr 1.00e-05  3.20s  │ ")
    assert "grad_norm=0.5" in text and "clip_high=0" in text
    assert step_line("plain output") == (None, "plain output")


async def log_tab(pilot, run: str) -> LogPane:
    app = pilot.app
    await pilot.press("slash", *run, "enter")
    assert await wait_until(pilot, lambda: app.query_one("RunDetail").run is not None
                            and app.query_one("RunDetail").run.name == run)
    app.query_one("#detail-tabs").active = "tab-log"
    await pilot.pause()
    return app.query_one("#run-log", LogPane)


def lines_of(pane: LogPane) -> list[str]:
    return [str(x) for x in pane.lines]


@pilot_test
async def test_a_step_logged_again_after_a_resume_shows_once_with_its_latest_numbers(tui_root: Path) -> None:
    run = RUNS["completed"]
    log = Layout(tui_root).train_log(run)
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        pane = await log_tab(pilot, run)
        assert await wait_until(pilot, lambda: any(x.startswith("step 30 ") for x in lines_of(pane)))
        with open(log, "a") as f:
            f.write(json.dumps(dict(RECORD, step=31, reward_mean=0.1)) + "\n")
            f.write(json.dumps(dict(RECORD, step=31, reward_mean=0.987)) + "\n")  # the resumed one
        assert await wait_until(pilot, lambda: any("reward 0.987" in x for x in lines_of(pane)))
        step31 = [x for x in lines_of(pane) if x.startswith("step 31 ")]
        assert len(step31) == 1 and "reward 0.987" in step31[0]
        assert len([x for x in lines_of(pane) if x.startswith("step 30 ")]) == 1


@pilot_test
async def test_the_live_log_shows_the_trainers_step_line_with_reward_and_loss(tui_root: Path) -> None:
    from trainer.progress import Progress

    layout = Layout(tui_root)
    output = layout.job_dir("20261121-100000-train-aaaa") / "output.log"  # the running run's job
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        pane = await log_tab(pilot, RUNS["running"])
        assert await wait_until(pilot, lambda: pane.path == output)
        line = io.StringIO()
        Progress(start=12, target=40, stream=line).step(dict(RECORD, step=13))
        with open(output, "a") as f:  # what the trainer prints lands in the job's output.log
            f.write(line.getvalue())
        assert await wait_until(pilot, lambda: any(x.startswith("step 13/40") for x in lines_of(pane)))
        shown = next(x for x in lines_of(pane) if x.startswith("step 13/40"))
        assert "reward 0.412" in shown and "loss 0.02134" in shown


async def newest_ended_jobs_log(pilot, job_id: str) -> LogPane:
    """The jobs tab with the newest ended job (`job_id`) selected: its log pane."""
    await started(pilot)
    await pilot.press("2")
    await pilot.press("down")  # past the running job, which comes first
    pane = pilot.app.query_one("#job-log", LogPane)
    assert await wait_until(pilot, lambda: job_id in str(pane.border_title))
    return pane


@pilot_test
async def test_the_jobs_log_title_gives_an_ended_jobs_whole_reason(tui_root: Path) -> None:
    from tui_kit import write_job

    reason = "exit code 1: " + "a reason longer than the jobs table's column " * 3
    write_job(Layout(tui_root), "20261124-100000-eval-dddd", "eval", RUNS["completed"], "failed",
              reason=reason, created=1_795_608_000.0 - 10)  # the newest ended job: second row
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        pane = await newest_ended_jobs_log(pilot, "20261124-100000-eval-dddd")
        assert f"failed: {reason}" in str(pane.border_title)


@pilot_test
async def test_a_failed_jobs_own_error_leads_its_row_and_the_full_screen_log_wraps_it(tui_root: Path) -> None:
    from tui_kit import write_job

    error = ("rl_runner: error: base model acme/big-model is not in the Hugging Face cache and the Hub "
             "(https://huggingface.co) cannot be reached; fetch it where there is network")
    write_job(Layout(tui_root), "20261124-100000-train-eeee", "train", RUNS["completed"], "failed",
              reason="exit code 2 (bad input: flags, config or paths)", cause=error,
              created=1_795_608_000.0 - 10, log=f"[rltui keeper 10:00:00] starting\n{error}\n")
    app = make_test_app(tui_root)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await newest_ended_jobs_log(pilot, "20261124-100000-train-eeee")
        assert ("failed: base model acme/big-model is not in the Hugging Face cache" in str(pane.border_title))
        row = app.query_one("JobsTable").get_row("20261124-100000-train-eeee")
        assert str(row[6]).startswith("base model acme/big-model")
        await pilot.press("l")
        full = app.screen.query_one(LogPane)
        assert await wait_until(pilot, lambda: any("fetch it where" in x for x in lines_of(full)))
        rows = lines_of(full)
        assert max(len(x) for x in rows) <= full.scrollable_content_region.width < len(error)
        assert "".join(x for x in rows if not x.startswith("[rltui")) == error  # wrapped, nothing lost
        await pilot.press("w")  # cut again: one row per line, the pane scrolls sideways
        assert await wait_until(pilot, lambda: error in lines_of(full))
