"""Errors of the training and evaluation processes that map to exit codes."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input (a config key, a path, a flag): one line naming it on stderr, exit code 2."""

    exit_code = 2


class DownloadFailed(Exception):
    """A download from the Hub failed midway (the network, the disk): one line, exit code 1.

    Nothing partial is left where a reader looks; running the same command again continues,
    keeping the files already downloaded whole."""

    exit_code = 1
