"""Text from files never drives the terminal (issue 13): escape sequences written into every kind
of file rltui reads come out of `status` (and the sanitiser) as plain text."""

from __future__ import annotations

import json

from rltui.runs import localfs
from rltui.text import clean, clean_lines, has_controls

from tests.rltui.test_status_cli import rltui

OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
DCS = "\x1bP1$r\x1b\\"
C1_CSI = "\x9b31m"
NASTY = f"{OSC_TITLE}{CLEAR}bad{DCS}{C1_CSI}\u202e\r\x08\x07"


def _nasty_tree(lfs) -> None:
    lfs.run("run_2026-01-01_00-00-01", phase="failed", error=f"boom {NASTY} end",
            config={"model": {"base": f"models/{NASTY}tiny"}, "dataset": {"name": f"ar{NASTY}ith"},
                    "training": {"max_steps": 2}},
            train_log=[{"step": 1, f"loss{NASTY}": 1.0, "reward_mean": 0.5}])
    lfs.evaluation("run_2026-01-01_00-00-01", "gsm8k", {1: 0.5}, failed={2: f"fail {NASTY}"})
    # a checkpoint whose record lists a file, named with escapes, that is not there
    info = lfs.layout.step_dir("run_2026-01-01_00-00-01", 5) / "training_info.json"
    info.parent.mkdir(parents=True)
    localfs.write_json_atomic(info, {"step": 5, "files": {f"model/x{NASTY}.bin": {"size": 3, "sha256": "0" * 64}}})
    job = lfs.job("job_1", "run_2026-01-01_00-00-01", "failed", exit_code=1)
    state = json.loads((job / "state.json").read_text())
    state["last_reason"] = f"crashed {NASTY} here"
    localfs.write_json_atomic(job / "state.json", state)
    (job / "output.log").write_text(f"line one {NASTY}\nline two\n")
    # a damaged status.json whose bytes hold a sequence too
    lfs.layout.run_dir("run_2026-01-01_00-00-02").mkdir(parents=True)
    lfs.layout.run_status("run_2026-01-01_00-00-02").write_bytes(f"{{{NASTY}".encode())


def test_status_text_holds_no_escape_or_control_from_any_file(lfs):
    _nasty_tree(lfs)
    proc = rltui("--batch", "status", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out and "\u202e" not in out
    assert not has_controls(out.replace("\n", ""))
    words = " ".join(out.split())  # the text itself stays readable
    assert "INCOMPLETE CHECKPOINTS" in out and "step_5" in out
    assert "boom bad end" in words and "crashed bad here" in words


def test_status_json_escapes_every_control_and_names_a_damaged_status_file(lfs):
    _nasty_tree(lfs)
    proc = rltui("--batch", "status", "--root", str(lfs.root), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout  # JSON escapes them
    doc = json.loads(proc.stdout)
    damaged = next(r for r in doc["runs"] if r["name"] == "run_2026-01-01_00-00-02")
    assert damaged["status_reason"].startswith("damaged status.json: not valid JSON")
    assert "no status.json" not in damaged["status_reason"]


def test_clean_removes_every_kind_of_sequence_and_keeps_the_text():
    assert clean(f"a{OSC_TITLE}b") == "ab"
    assert clean(f"{CLEAR}text") == "text"
    assert clean(f"x{DCS}y") == "xy"
    assert clean(f"x{C1_CSI}y") == "xy"
    assert clean("one\ntwo\tthree") == "one two three"
    assert clean("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert clean("cut short \x1b]0;title") == "cut short "
    assert clean("bidi \u202eevil\u202c") == "bidi evil"
    assert clean("plain text, unicode ✓ ▶") == "plain text, unicode ✓ ▶"
    assert clean_lines("10%\r50%\r100%\nnext\tcol\x07\n") == "100%\nnext\tcol\n"
    assert not has_controls(clean(NASTY)) and not has_controls(clean_lines(NASTY).replace("\n", ""))
