"""The on-disk contract: layout paths, names, atomic writers, checkpoint completeness, step_latest."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rltui.runs import checkpoints, localfs
from rltui.runs.localfs import BadName, Layout

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the layout and the root


def test_layout_paths_follow_the_design(tmp_path):
    L = Layout(tmp_path)
    run = "run_2026-03-04_05-06-07"
    assert L.run_dir(run) == tmp_path / "training_runs" / run
    assert L.run_config(run) == L.run_dir(run) / "config.yaml"
    assert L.run_status(run) == L.run_dir(run) / "status.json"
    assert L.step_dir(run, 12) == L.run_dir(run) / "training_state" / "step_12"
    assert L.step_latest(run) == L.run_dir(run) / "training_state" / "step_latest"
    assert L.train_log(run) == L.run_dir(run) / "logs" / "train_log.jsonl"
    assert L.rollouts_log(run).name == "rollouts.jsonl" and L.ratios_log(run).name == "ratios.jsonl"
    assert L.tensorboard_dir(run) == L.run_dir(run) / "tensorboard"
    assert L.eval_dir(run, "gsm8k") == tmp_path / "eval_runs" / f"{run}_gsm8k"
    assert L.eval_step_dir(run, "gsm8k", 5) == L.eval_dir(run, "gsm8k") / "step_5_gsm8k"
    assert L.consolidated_metrics(run, "gsm8k") == L.eval_dir(run, "gsm8k") / "consolidated_metrics.csv"
    assert L.eval_config(run, "gsm8k").name == "eval_config.yaml"
    assert L.job_spec("j1") == tmp_path / "jobs" / "j1" / "job.json"
    assert L.job_state("j1").name == "state.json" and L.job_log("j1").name == "output.log"
    assert L.dataset_dir("gsm8k") == tmp_path / "datasets" / "gsm8k"
    assert L.model_dir("tiny") == tmp_path / "models" / "tiny"
    assert L.legacy_run_dir("old") == tmp_path / "rl_runs" / "old"
    assert L.completed_archive == tmp_path / "archive" / "completed_runs"
    assert L.important_checkpoints == tmp_path / "archive" / "important_checkpoints"
    assert localfs.eval_dir_dataset(run, f"{run}_gsm8k") == "gsm8k"
    assert localfs.eval_dir_dataset(run, f"{run}_2_gsm8k") is None  # another run's folder


def test_root_is_the_flag_else_the_environment_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(localfs.ROOT_ENV, raising=False)
    assert localfs.resolve_root(None) == tmp_path / "home" / "localfs"
    monkeypatch.setenv(localfs.ROOT_ENV, str(tmp_path / "env"))
    assert localfs.resolve_root(None) == tmp_path / "env"
    assert localfs.resolve_root(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.chdir(tmp_path)
    assert localfs.resolve_root("rel") == tmp_path / "rel"  # made absolute


def test_run_names_are_unique_even_in_the_same_second(tmp_path):
    L = Layout(tmp_path)
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    names = [localfs.create_run_dir(L, when) for _ in range(3)]
    assert names == ["run_2026-01-02_03-04-05", "run_2026-01-02_03-04-05_2", "run_2026-01-02_03-04-05_3"]
    assert all(localfs.is_run_name(n) and L.run_dir(n).is_dir() for n in names)


def test_processes_starting_runs_in_the_same_second_get_different_names(tmp_path):
    code = textwrap.dedent(f"""
        import datetime, sys
        sys.path.insert(0, {str(REPO)!r})
        from rltui.runs import localfs
        print(localfs.create_run_dir(localfs.Layout({str(tmp_path)!r}), datetime.datetime(2026, 1, 1)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    names = [p.communicate()[0].strip() for p in procs]
    assert len(set(names)) == 6 and all(localfs.is_run_name(n) for n in names)


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\x00b", ".hidden",
                                 "-rf", "a..b", "sp ace", "tab\t"])
def test_names_that_could_escape_the_root_are_refused(tmp_path, bad):
    L = Layout(tmp_path)
    with pytest.raises(BadName) as e:
        L.run_dir(bad)
    assert repr(bad) in str(e.value)  # the message names the bad value
    for join in (L.job_dir, L.dataset_dir, L.model_dir, L.legacy_run_dir):
        with pytest.raises(BadName):
            join(bad)
    with pytest.raises(BadName):
        L.eval_dir("run_2026-01-01_00-00-00", bad)


def test_good_names_pass_and_dataset_names_start_with_a_letter():
    assert localfs.validate_name("run_2026-01-01_00-00-00_2") == "run_2026-01-01_00-00-00_2"
    assert localfs.validate_dataset_name("gsm8k") == "gsm8k"
    with pytest.raises(BadName):
        localfs.validate_dataset_name("8k")
    with pytest.raises(BadName):
        localfs.step_dir_name(-1)
    with pytest.raises(BadName):
        checkpoints.resolve_step(Path("/nonexistent"), "newest")


# ---------------------------------------------------------------- checkpoints


def _checkpoint(tmp_path: Path, step: int = 3) -> Path:
    ts = tmp_path / "training_state"
    staging = checkpoints.staging_dir(ts, step)
    (staging / "model").mkdir()
    (staging / "model" / "adapter_model.safetensors").write_bytes(os.urandom(1000))
    (staging / "optimizer.pt").write_bytes(os.urandom(500))
    final = ts / localfs.step_dir_name(step)
    checkpoints.finalize_checkpoint(staging, final, {"step": step})
    return final


def test_a_finalized_checkpoint_is_complete_and_lists_every_file(tmp_path):
    final = _checkpoint(tmp_path)
    assert checkpoints.checkpoint_problems(final, verify_hash=True) == []
    info = checkpoints.read_checkpoint_info(final)
    assert sorted(info["files"]) == ["model/adapter_model.safetensors", "optimizer.pt"]
    assert info["files"]["optimizer.pt"]["size"] == 500 and len(info["files"]["optimizer.pt"]["sha256"]) == 64
    assert not list((tmp_path / "training_state").glob(".tmp_*"))


def test_missing_file_is_reported(tmp_path):
    final = _checkpoint(tmp_path)
    (final / "optimizer.pt").unlink()
    assert checkpoints.checkpoint_problems(final) == ["missing file optimizer.pt"]


def test_wrong_size_is_reported(tmp_path):
    final = _checkpoint(tmp_path)
    with open(final / "model" / "adapter_model.safetensors", "ab") as f:
        f.write(b"x")
    assert checkpoints.checkpoint_problems(final) == [
        "wrong size model/adapter_model.safetensors: 1001 bytes, expected 1000"]


def test_missing_training_info_is_reported(tmp_path):
    final = _checkpoint(tmp_path)
    (final / localfs.CHECKPOINT_INFO).unlink()
    assert checkpoints.checkpoint_problems(final) == ["missing training_info.json (save did not finish)"]
    assert not checkpoints.is_complete(final)


def test_half_written_temp_folder_is_never_complete(tmp_path):
    ts = tmp_path / "training_state"
    staging = checkpoints.staging_dir(ts, 4)
    (staging / "optimizer.pt").write_bytes(b"x" * 10)
    assert checkpoints.checkpoint_problems(staging)[0].startswith("unfinished save")
    assert checkpoints.list_step_dirs(ts) == []  # never offered as a step
    assert checkpoints.list_staging_dirs(ts) == [staging]


def test_same_size_corruption_is_found_only_with_the_hash(tmp_path):
    final = _checkpoint(tmp_path)
    (final / "optimizer.pt").write_bytes(b"\x00" * 500)
    assert checkpoints.checkpoint_problems(final) == []
    assert checkpoints.checkpoint_problems(final, verify_hash=True) == ["wrong sha256 optimizer.pt"]


def test_damaged_or_hostile_training_info_is_reported(tmp_path):
    final = _checkpoint(tmp_path)
    info_path = final / localfs.CHECKPOINT_INFO
    info_path.write_text('{"files": {"optimizer.pt": ')
    assert checkpoints.checkpoint_problems(final)[0].startswith("damaged training_info.json: not valid JSON")
    info_path.write_text(json.dumps({"files": {"../../../etc/passwd": {"size": 1}}}))
    assert "leaves the checkpoint" in checkpoints.checkpoint_problems(final)[0]
    info_path.write_text(json.dumps({"step": 3}))
    assert checkpoints.checkpoint_problems(final) == ["damaged training_info.json: no file list"]


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    first = _checkpoint(tmp_path, 5)
    again = _checkpoint(tmp_path, 5)
    assert first == again and checkpoints.checkpoint_problems(again, verify_hash=True) == []
    assert [p.name for p in (tmp_path / "training_state").iterdir()] == ["step_5"]


# ---------------------------------------------------------------- step_latest


def test_step_latest_is_replaced_and_resolves_to_a_complete_step(tmp_path):
    ts = tmp_path / "training_state"
    _checkpoint(tmp_path, 1)
    checkpoints.update_step_latest(ts, 1)
    _checkpoint(tmp_path, 2)
    checkpoints.update_step_latest(ts, 2)
    assert os.readlink(ts / "step_latest") == "step_2"
    assert checkpoints.read_step_latest(ts) == 2 and checkpoints.resolve_step(ts, "latest") == 2
    assert sorted(p.name for p in ts.iterdir()) == ["step_1", "step_2", "step_latest"]
    (ts / "step_2" / localfs.CHECKPOINT_INFO).unlink()  # step_latest now points at a broken step
    assert checkpoints.resolve_step(ts, "latest") == 1
    assert checkpoints.latest_complete_step(ts) == 1


def test_step_latest_never_disappears_while_it_is_replaced(tmp_path):
    """A reader polls the link while another process flips it between two steps."""
    ts = tmp_path / "training_state"
    for s in (1, 2):
        _checkpoint(tmp_path, s)
    checkpoints.update_step_latest(ts, 1)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from rltui.runs import checkpoints
        for i in range(800):
            checkpoints.update_step_latest(__import__("pathlib").Path({str(ts)!r}), 1 + i % 2)
    """)
    writer = subprocess.Popen([sys.executable, "-c", code])
    seen = set()
    while writer.poll() is None:
        seen.add(os.readlink(ts / "step_latest"))  # raises if the link is ever missing
    assert writer.returncode == 0
    assert seen <= {"step_1", "step_2"} and len(seen) == 2


# ---------------------------------------------------------------- atomic writers

WRITER = textwrap.dedent("""
    import hashlib, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from rltui.runs import localfs
    kind, path = sys.argv[1], Path(sys.argv[2])
    body = "x" * 200_000
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        payload = body[: 100_000 + (i * 7919) % 100_000]
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if kind == "json":
            localfs.write_json_atomic(path, {{"seq": i, "payload": payload, "digest": digest}})
        elif kind == "yaml":
            localfs.write_yaml_atomic(path, {{"seq": i, "payload": payload, "digest": digest}})
        elif kind == "csv":
            localfs.write_csv_atomic(path, ["seq", "payload", "digest"], [[i, payload, digest]])
        else:
            localfs.write_text_atomic(path, f"{{i}}\\n{{payload}}\\n{{digest}}\\n")
""")


def _check_whole(kind: str, path: Path) -> int:
    """Parse the file as a reader would; return its sequence number; fail on a partial file."""
    import csv
    import hashlib

    import yaml

    text = path.read_text()
    if kind == "json":
        d = json.loads(text)
    elif kind == "yaml":
        d = yaml.safe_load(text)
    elif kind == "csv":
        csv.field_size_limit(10_000_000)
        rows = list(csv.DictReader(text.splitlines()))
        assert len(rows) == 1
        d = rows[0]
    else:
        seq, payload, digest = text.split("\n")[:3]
        d = {"seq": seq, "payload": payload, "digest": digest}
    assert hashlib.sha256(d["payload"].encode()).hexdigest() == d["digest"]
    return int(d["seq"])


@pytest.mark.parametrize("kind", ["json", "yaml", "csv", "text"])
def test_a_reader_never_sees_a_partial_file_even_when_the_writer_is_killed(tmp_path, kind):
    path = tmp_path / f"out.{kind}"
    killed_mid_write = 0
    last_seq = 0
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(repo=str(REPO)), kind, str(path)],
            stdout=subprocess.PIPE, text=True,
        )
        assert writer.stdout.readline().strip() == "ready"
        give_up = time.monotonic() + 60
        while not path.exists() and time.monotonic() < give_up:
            time.sleep(0.005)
        deadline = time.monotonic() + 0.2 + 0.1 * round_
        while time.monotonic() < deadline:  # read while it writes, as the TUI would
            if path.exists():
                last_seq = _check_whole(kind, path)
        while writer.poll() is None and not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            pass  # kill it while a write is under way
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL  # it was still writing, not dead of its own
        writer.stdout.close()
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        killed_mid_write += bool(temps)
        for t in temps:
            t.unlink()  # what a cleanup would do; the real file is untouched by it
        assert _check_whole(kind, path) >= 1
    assert last_seq >= 1
    assert killed_mid_write >= 1, "no kill landed during a write; the test proved nothing"


def test_append_jsonl_writes_whole_lines_and_readers_skip_a_torn_one(tmp_path):
    log = tmp_path / "logs" / "train_log.jsonl"
    for i in range(5):
        localfs.append_jsonl(log, {"step": i})
    with open(log, "ab") as f:
        f.write(b'{"step": 5, "tor')  # a writer killed halfway through a line
    assert [d["step"] for d in localfs.iter_jsonl(log)] == [0, 1, 2, 3, 4]
    assert localfs.read_last_jsonl(log) == {"step": 4}


def test_read_json_names_the_damaged_file(tmp_path):
    p = tmp_path / "status.json"
    p.write_text("{nope")
    with pytest.raises(localfs.DamagedFile) as e:
        localfs.read_json(p)
    assert e.value.path == p and "not valid JSON" in e.value.reason
    assert localfs.read_json_or_none(tmp_path / "absent.json") is None


@pytest.mark.parametrize("n, shown", [
    (None, "?"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_500_000, "1.4 MiB"),
    (3_090_000_000, "2.9 GiB"), (5 * 2**40, "5.0 TiB"), (2**60, "1024.0 PiB"),
])
def test_every_byte_count_is_shown_in_binary_units(n, shown):
    # one helper for the TUI, the archive, `models`, a download's progress and a full disk's line
    from rltui.runs.disk import human_bytes

    assert human_bytes(n) == shown
    assert human_bytes(None, "–") == "–"
