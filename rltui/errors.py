"""Errors that the command line turns into one line on stderr and an exit code."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (a flag, a name, a path, a config value): one line, exit code 2."""

    exit_code = 2


class WorkFailed(Exception):
    """The work itself failed (a server gone, a job failed): one line, exit code 1."""

    exit_code = 1
