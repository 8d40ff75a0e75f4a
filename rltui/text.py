"""Text from files and child processes made safe to show on a terminal.

Usage:
    from rltui.text import clean, clean_lines
    label = clean(status["error"])          # one line: every control and escape sequence gone
    shown = clean_lines(output_log_text)    # many lines: newlines and tabs kept

A run's error, a job's reason, a config value or a log line can carry escape sequences, written
by accident (a colour library) or on purpose. Raw, they retitle the terminal (OSC), clear it
(`ESC[2J`), move the cursor over other text, or answer back into the input (DCS). Everything
rltui shows that came from a file or a child process goes through here first; only
`logs --raw` passes bytes through, on request.

Removed: ECMA-48 sequences, 7-bit and 8-bit (CSI `ESC[`/0x9B ... final byte; OSC `ESC]`/0x9D,
DCS `ESCP`/0x90, SOS, PM, APC up to BEL or ST; two- and three-byte ESC sequences), every other
C0 and C1 control and DEL, and the Unicode bidirectional overrides (text that reads differently
from what it is). Standard library only.
"""

from __future__ import annotations

import re

# String sequences (OSC, DCS, SOS, PM, APC): up to ST (ESC \ or 0x9C) or BEL, or to the end
# when cut short, so an unterminated one hides nothing after it from this function's caller.
_STRING = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c|$)"
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
_ESC = r"\x1b[\x20-\x2f]*[\x30-\x7e]?"
_SEQUENCE = re.compile(f"{_STRING}|{_CSI}|{_ESC}")
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x20), *range(0x7f, 0xa0)]) + _BIDI
_DROP = {ord(c): None for c in _CONTROLS}
_DROP_KEEP_LINES = {ord(c): None for c in _CONTROLS if c not in "\n\t"}
_ONE_LINE = {**_DROP, ord("\n"): " ", ord("\t"): " ", ord("\r"): " "}
_NEEDS_WORK = re.compile(f"[{re.escape(_CONTROLS)}]")


def clean(value: object) -> str:
    """One line of display text: sequences removed, newlines and tabs made spaces."""
    text = value if isinstance(value, str) else str(value)
    if not _NEEDS_WORK.search(text):
        return text  # the common case: nothing to do, no copy
    return _SEQUENCE.sub("", text).translate(_ONE_LINE)


def clean_lines(value: object) -> str:
    """Text of many lines (a log): sequences and controls removed, newlines and tabs kept.

    A carriage return inside a line (a progress bar redrawing itself) keeps what the terminal
    would finally show: the text after the last one."""
    text = value if isinstance(value, str) else str(value)
    if not _NEEDS_WORK.search(text):
        return text
    text = _SEQUENCE.sub("", text)
    if "\r" in text:
        text = "\n".join(_after_last_cr(line) for line in text.split("\n"))
    return text.translate(_DROP_KEEP_LINES)


def _after_last_cr(line: str) -> str:
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


def has_controls(text: str) -> bool:
    """True if `text` holds anything `clean` would remove (for tests and assertions)."""
    return bool(_NEEDS_WORK.search(text))
