"""Errors of the training and evaluation processes that map to exit codes."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input (a config key, a path, a flag): one line naming it on stderr, exit code 2."""

    exit_code = 2
