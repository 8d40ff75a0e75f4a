"""Errors that the command line turns into one line on stderr and an exit code."""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable


class UsageError(Exception):
    """Bad input (a flag, a name, a path, a config value): one line, exit code 2."""

    exit_code = 2


class WorkFailed(Exception):
    """The work itself failed (a server gone, a job failed): one line, exit code 1."""

    exit_code = 1


def run_reporting(prog: str, work: Callable[[], int | None]) -> int:
    """Run `work` and return its exit code; errors become one line on stderr, no traceback:
    bad input 2, failed work 1 (a full disk too, naming it), Ctrl-C 130. A reader that left (`... | head -1`) is no error."""
    from rltui.runs.localfs import BadName

    try:
        code = int(work() or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except BrokenPipeError:
        # stdout's reader is gone: nothing more can be shown; silence the final flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, BadName) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except WorkFailed as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: stopped\n")
        return 130
    except OSError as e:
        from rltui.runs import disk

        if e.errno == errno.ENAMETOOLONG:  # a name or path from the user past the filesystem's limit
            where = str(e.filename)
            where = where if len(where) <= 80 else where[:60] + "…" + where[-10:]
            sys.stderr.write(f"{prog}: error: name too long for the filesystem: {where!r}\n")
            return 2
        if not disk.is_full(e):
            raise
        where = e.filename if isinstance(e.filename, str) else "."
        sys.stderr.write(f"{prog}: {disk.describe(where)}\n")  # a full disk: one line, no traceback
        return 1
