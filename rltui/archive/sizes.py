"""Sizes and rates given on the command line: '500M', '20G', '1.5TiB', '1024' (bytes)."""

from __future__ import annotations

from rltui.errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, flag: str) -> int:
    """Bytes; UsageError naming the flag and the value when it is not a size above 0."""
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    try:
        value = float(raw[:-1] if unit else raw)
    except ValueError:
        raise UsageError(f"bad {flag}: {text!r} (use a size such as 500M, 20G or 1T)") from None
    if not value > 0:
        raise UsageError(f"bad {flag}: {text!r} (must be more than 0)")
    return int(value * _UNITS[unit])
