"""Time from process start to the first complete frame with the runs listed, against a minimal
Textual app showing an empty table, in a real pseudo-terminal, on the same machine.

Usage:
    python bench/tui_start.py [--runs 100,1000] [--repeats 5] [--checkpoints 5] [--keep DIR]

For each size a localfs is written by bench/make_localfs.py. Each measurement is a fresh
process in a 100x30 pty: the parent notes the time before spawning; the child notes when the
first frame listing the runs has been drawn (the top FIRST_ROWS of the sorted list, from
status.json alone; the other rows join right after that frame), and when every column of every
row is filled after the index's full scan, then exits. The minimal app notes its first frame. The
apps alternate; medians of `--repeats` runs are reported, wall time and CPU time, with ratios.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLS, ROWS = 100, 30


# ---------------------------------------------------------------- the child side


def child_minimal(stamp: Path) -> None:
    """The baseline: a Textual app with an empty table and a footer."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable, Footer

    class Minimal(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable()
            yield Footer()

        def on_mount(self) -> None:
            self.query_one(DataTable).add_columns("status", "run", "step")
            self.call_after_refresh(self.done)

        def done(self) -> None:
            cpu = time.process_time()
            stamp.write_text(f"{time.time()} 0 {cpu} {time.time()} 0 {cpu}")
            self.exit()

    Minimal().run()


def child_rltui(stamp: Path, root: Path) -> None:
    from rltui.tui.app import RlTuiApp
    from rltui.tui.messages import QuickListReady, SnapshotReady
    from rltui.tui.runs_table import RunsTable

    class Timed(RlTuiApp):
        """The real app; it only notes when the frames with the runs have been drawn: the first
        (status.json of every run) and the full one (after the index's whole scan)."""

        first: tuple[float, int, float] | None = None

        # Textual calls the handler of every class in the MRO, this one first and then the app's
        # own: calling super() here too would list the runs twice, which the real app does not.
        def on_quick_list_ready(self, message: QuickListReady) -> None:
            self.call_after_refresh(self.drawn_first)

        def on_snapshot_ready(self, message: SnapshotReady) -> None:
            if not self.loaded:
                self.call_after_refresh(self.drawn_full)

        def drawn_first(self) -> None:
            if self.first is None:
                self.first = (time.time(), self.query_one(RunsTable).row_count, time.process_time())

        def drawn_full(self) -> None:
            table = self.query_one(RunsTable)
            if table.row_count < len(table.shown):  # rows past the first screenful still coming
                self.call_after_refresh(self.drawn_full)
                return
            full = (time.time(), table.row_count, time.process_time())
            first = self.first or full
            stamp.write_text(" ".join(str(v) for v in (*first, *full)))
            self.exit()

    Timed(root).run()


# ---------------------------------------------------------------- the parent side


def run_in_pty(args: list[str]) -> list[float]:
    """For each of the child's two stamps: wall seconds from spawn, rows listed, CPU seconds
    the child had used (all its threads; a fairer comparison on a busy shared machine)."""
    stamp = Path(tempfile.mktemp(prefix="tui_start_"))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    output: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(master, output), daemon=True)
    drain.start()
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--stamp", str(stamp)],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
                            start_new_session=True)
    os.close(slave)
    code = proc.wait(timeout=120)
    drain.join(timeout=5)
    os.close(master)
    if code != 0 or not stamp.exists():
        tail = b"".join(output)[-2000:].decode("utf-8", "replace")
        raise SystemExit(f"child {args} failed with exit code {code}:\n{tail}")
    values = [float(v) for v in stamp.read_text().split()]
    stamp.unlink()
    return [v - t0 if i % 3 == 0 else v for i, v in enumerate(values)]


def _drain(fd: int, output: list[bytes]) -> None:
    """Read the child's terminal output (a full pty would block it); keep the end for errors."""
    try:
        while chunk := os.read(fd, 65536):
            output.append(chunk)
            del output[:-8]
    except OSError:
        pass


def make_root(base: Path, runs: int, checkpoints: int) -> Path:
    root = base / f"localfs_{runs}"
    if not root.exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "make_localfs.py"), str(root),
                        "--runs", str(runs), "--checkpoints", str(checkpoints)], check=True)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="100,1000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--keep", type=Path, default=None, help="write the localfs here and keep it")
    p.add_argument("--child", choices=["minimal", "rltui"], help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--stamp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "minimal":
        child_minimal(args.stamp)
        return 0
    if args.child == "rltui":
        child_rltui(args.stamp, args.root)
        return 0

    sys.path.insert(0, str(REPO))
    from rltui.tui.runs_table import FIRST_ROWS  # here, not at the top: children stay lean

    base = args.keep or Path(tempfile.mkdtemp(prefix="tui_start_"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"pty {COLS}x{ROWS}, {args.repeats} runs each, median; localfs by bench/make_localfs.py "
          f"(--checkpoints {args.checkpoints})")
    try:
        for n in (int(x) for x in args.runs.split(",")):
            root = make_root(base, n, args.checkpoints)
            run_in_pty(["--child", "rltui", "--root", str(root)])  # warm the page cache once
            samples: dict[str, list[float]] = {k: [] for k in ("m", "mc", "f", "fc", "a", "ac")}
            for _ in range(args.repeats):
                m = run_in_pty(["--child", "minimal"])
                t_first, rows_first, c_first, t_full, rows_full, c_full = run_in_pty(
                    ["--child", "rltui", "--root", str(root)])
                if rows_first != min(n, FIRST_ROWS) or rows_full != n:
                    raise SystemExit(f"rltui listed {rows_first}/{rows_full} runs, expected {n}")
                for key, value in zip(samples, (m[0], m[2], t_first, c_first, t_full, c_full)):
                    samples[key].append(value)
            med = {k: statistics.median(v) for k, v in samples.items()}
            print(f"{n:>5} runs, wall: minimal {med['m']:.3f} s | rltui first frame (top "
                  f"{min(n, FIRST_ROWS)} runs) "
                  f"{med['f']:.3f} s = {med['f'] / med['m']:.2f}x | every column filled (full scan) "
                  f"{med['a']:.3f} s = {med['a'] / med['m']:.2f}x (every row in the table)")
            print(f"{n:>5} runs, CPU:  minimal {med['mc']:.3f} s | rltui first frame "
                  f"{med['fc']:.3f} s = {med['fc'] / med['mc']:.2f}x | every column filled "
                  f"{med['ac']:.3f} s = {med['ac'] / med['mc']:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
