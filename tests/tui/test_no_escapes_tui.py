"""No escape sequence from a file reaches the TUI's screen (issue 13): a run's error, a job's
reason, config values, output.log lines and train-log keys, each carrying OSC, CSI and DCS
sequences, are shown as plain text in the runs table, run detail, jobs pane, log pane and plot."""

from __future__ import annotations

import json
from pathlib import Path

from rltui.runs import localfs
from rltui.runs.localfs import Layout
from rltui.text import has_controls
from tui_kit import NOW, RUNS, make_test_app, pilot_test, started, wait_until, write_job

ESC = "\x1b]0;pwned\x07\x1b[2J\x1bP1$r\x1b\\\x9b31m"


def _poison(root: Path) -> str:
    layout = Layout(root)
    run = RUNS["crashed"]
    status = json.loads(layout.run_status(run).read_text())
    status.update(phase="failed", error=f"boom {ESC}end")
    localfs.write_json_atomic(layout.run_status(run), status)
    localfs.write_yaml_atomic(layout.run_config(run), {
        "model": {"base": f"models/ti{ESC}ny"}, "dataset": {"name": f"gs{ESC}m8k"},
        "training": {"max_steps": 40}})
    localfs.append_jsonl(layout.train_log(run), {"step": 8, f"evil{ESC}key": 1.5, "reward_mean": 0.3})
    write_job(layout, "20261125-110000-train-eeee", "train", run, "failed",
              reason=f"crashed {ESC}here [/] [bold]", created=NOW - 100,
              log=f"plain line\nbad {ESC}line\n10%\r100%\n")
    return run


def _screen_text(app) -> str:
    return app.export_screenshot()


@pilot_test
async def test_no_escape_sequence_from_any_file_reaches_the_screen(tui_root: Path) -> None:
    run = _poison(tui_root)
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot)
        await pilot.press("slash", *run, "enter")
        detail = app.query_one("RunDetail")
        assert await wait_until(pilot, lambda: detail.run is not None and detail.run.name == run)
        await pilot.pause()
        summary = str(app.query_one("#run-summary").render())
        assert "boom end" in " ".join(summary.split()) and not has_controls(summary.replace("\n", ""))
        for row_key in app.query_one("RunsTable").rows:
            for cell in app.query_one("RunsTable").get_row(row_key):
                assert not has_controls(str(cell)), repr(cell)
        names = detail.series_names()
        assert any(n == "evilkey" for n in names) and not any(has_controls(n) for n in names)
        screen = _screen_text(app)
        assert "\x1b" not in screen and "\x07" not in screen and "pwned" not in screen

        await pilot.press("2")  # the jobs pane, over the selected job's output
        pane = app.query_one("JobsPane")
        assert await wait_until(pilot, lambda: "20261125-110000-train-eeee" in pane.jobs)
        for row_key in pane.table.rows:
            for cell in pane.table.get_row(row_key):
                assert not has_controls(str(cell)), repr(cell)
        reason = str(pane.table.get_row("20261125-110000-train-eeee")[6])
        assert reason.startswith("crashed here [/] [bold]")  # shown as written, not parsed as markup
        log = pane.query_one("LogPane")
        log.follow(tui_root / "jobs" / "20261125-110000-train-eeee" / "output.log", "job output")
        assert await wait_until(pilot, lambda: any("bad line" in line for line in log.lines))
        assert not any(has_controls(line) for line in log.lines)
        assert "100%" in log.lines
        screen = _screen_text(app)
        assert "\x1b" not in screen and "\x07" not in screen and "pwned" not in screen


@pilot_test
async def test_a_notification_and_a_confirmation_show_no_escape_sequence(tui_root: Path) -> None:
    from rltui.tui.confirm import Confirm

    app = make_test_app(tui_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot)
        app.notify(f"note {ESC}here")
        await pilot.pause()
        messages = [n.message for n in app._notifications]  # what the toasts show
        assert "note here" in messages and not any(has_controls(m) for m in messages)
        app.push_screen(Confirm(f"Stop {ESC}job?", f"reason {ESC}x"))
        await pilot.pause()
        shown = [str(w.render()) for w in app.screen.query("Label, Static")]
        assert "Stop job?" in shown and not any(has_controls(t.replace("\n", "")) for t in shown)
        screen = _screen_text(app)
        assert "pwned" not in screen and "\x1b" not in screen and "\x07" not in screen
