"""The app's actions as the user sees them: key, Footer label, palette title and help.

Usage:
    for c in COMMANDS: Binding(c.key, c.action, c.label, show=c.footer, tooltip=c.help)

One list read by the app (bindings, command palette) and by the help screen, so neither reaches
into the other for it. Each `action` names an `action_*` method of RlTuiApp or ActionsMixin.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One action: its key, the Footer's label, and its title and help in the command palette."""

    key: str
    action: str
    label: str
    title: str
    help: str
    footer: bool = True


COMMANDS: list[Command] = [
    Command("n", "new_training", "New", "New training run", "Start a new training run (a form)"),
    Command("r", "resume", "Resume", "Resume run",
            "Resume the selected run from latest or the selected checkpoint"),
    Command("e", "evaluate", "Eval", "Evaluate run", "Evaluate the selected run's checkpoints"),
    # footer=False: what 80 columns cannot also hold with Help and Quit (the palette lists all)
    Command("a", "archive", "Archive", "Archive to S3", "Back up, restore or list backups in S3",
            footer=False),
    Command("x", "stop_job", "Stop", "Stop job", "Stop the selected job gracefully (asks first)"),
    Command("k", "kill_job", "Kill", "Kill job", "Kill the selected job's processes (asks first)",
            footer=False),
    Command("t", "toggle_auto_resume", "Auto-resume", "Toggle auto-resume",
            "Turn auto-resume on or off for the selected run's training job", footer=False),
    Command("slash", "filter", "Filter", "Filter runs", "Filter runs by name, status or dataset"),
    Command("l", "open_log", "Log", "Open log full screen", "Open the log pane full screen"),
    Command("m", "cycle_metric", "Metric", "Plot next metric",
            "Plot the next metric (reward, loss, ..., eval accuracy)", footer=False),
    Command("M", "cycle_metric(-1)", "Metric back", "Plot previous metric",
            "Plot the previous metric", footer=False),
    Command("p", "pick_metric", "Pick metric", "Pick the plotted metric",
            "Choose the plotted metric from a list", footer=False),
    Command("space", "toggle_mark", "Mark", "Mark run",
            "Mark or unmark the selected run (marked runs are compared with c)", footer=False),
    Command("plus", "mark_shown", "Mark shown", "Mark every shown run",
            "Mark every run the filter shows", footer=False),
    Command("minus", "clear_marks", "Unmark all", "Unmark every run", "Clear the marks", footer=False),
    Command("c", "compare", "Compare", "Compare runs",
            "The marked runs' curves overlaid, best/min/max and the config keys that differ",
            footer=False),
    Command("A", "toggle_live_archive", "Live archive", "Toggle live archive",
            "Turn the live S3 archive of the selected run's running training job on or off",
            footer=False),
    Command("R", "restore_run", "Restore", "Restore from the bucket",
            "Bucket tab: restore the run under the cursor; elsewhere: list the bucket now",
            footer=False),
    Command("1", "show_tab('runs')", "Runs", "Show runs", "Show the runs", footer=False),
    Command("2", "show_tab('jobs')", "Jobs", "Show jobs", "Show the jobs", footer=False),
    Command("3", "show_tab('gpus')", "GPUs", "Show GPUs", "Show the GPUs", footer=False),
    Command("4", "show_tab('bucket')", "Bucket", "Show the bucket",
            "Live archives and the runs only the S3 bucket holds", footer=False),
    Command("f", "fetch", "Fetch", "Fetch from the Hub",
            "Download a model or a dataset (GSM8K) from the Hugging Face Hub, as a job", footer=False),
    Command("question_mark", "help", "Help", "Help", "Keys, symbols and what each action does"),
    Command("q", "quit_app", "Quit", "Quit rltui", "Quit; running jobs keep running"),
]
