"""Errors of the training and evaluation processes that map to exit codes."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input (a config key, a path, a flag): one line naming it on stderr, exit code 2."""

    exit_code = 2


class HubUnreachable(ConfigError):
    """The Hub did not answer (no route, a refused or silent connection, a 5xx): bad input to a
    trainer whose config names a model it must download (exit 2), but a download to retry for
    `rltui --batch fetch` (exit 1: `retry_line`)."""

    def __init__(self, line: str, retry_line: str) -> None:
        super().__init__(line)
        self.retry_line = retry_line


class DownloadFailed(Exception):
    """A download from the Hub failed midway (the network, the disk): one line, exit code 1.

    Nothing partial is left where a reader looks; running the same command again continues,
    keeping the files already downloaded whole."""

    exit_code = 1
