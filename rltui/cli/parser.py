"""The argument parser every entry point shares: a usage error is one line naming the bad value.

Usage:
    from rltui.cli.parser import OneLineParser
    parser = OneLineParser(prog="python -m rltui.sync_to_s3")

Imports only the standard library, so any entry point (`rltui`, `python -m rltui.sync_to_s3`)
can use it without importing the others.
"""

from __future__ import annotations

import argparse
import os
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the bad value, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        """After --help: flush here, where a reader that left (`-h | head -1`) is no error."""
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        super().exit(status, message)

