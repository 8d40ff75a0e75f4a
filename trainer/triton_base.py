"""What every Triton kernel file of the trainer shares: Triton imported if installed, and where a
kernel may run (CUDA; the CPU only in Triton's interpreter, which the tests use).

    from trainer.triton_base import runs_on, tl, triton
    if triton is not None:
        @triton.jit
        def _kernel(...): ...
    def available(device): return runs_on(device, "RLTUI_MY_KERNEL")

TRITON_INTERPRET must be set before Triton is first imported (the tests run the kernels in a
child process for that).
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: the CUDA image has it, a CPU box may not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is missing
    triton = None
    tl = None


# "1": the decode engine makes no choice by timing (`repeatable`); the evaluator sets it for itself
REPEATABLE_ENV = "RLTUI_DECODE_REPEATABLE"


def repeatable() -> bool:
    """Whether decoding is to be repeatable across processes and machines of one card kind and
    one set of versions (RLTUI_DECODE_REPEATABLE=1): every kernel, configuration and step fixed
    in advance, none picked by timing. Kernels that sum in another order round differently, and
    on random or barely trained weights a greedy near-tie then flips: with timing choosing, two
    evaluations of one checkpoint could differ (docs/benchmarks.md, "Evaluator")."""
    return os.environ.get(REPEATABLE_ENV) == "1"


def decode_repeatably() -> bool:
    """Make this process's decoding repeatable unless RLTUI_DECODE_REPEATABLE=0 says otherwise;
    whether it is."""
    if os.environ.get(REPEATABLE_ENV) == "0":
        return False
    os.environ[REPEATABLE_ENV] = "1"
    return True


def compile_options() -> dict:
    """torch.compile's keywords for the decode's compiled pieces: where decoding is `repeatable`,
    inductor's `deterministic` option (no reduction configuration or padding picked by timing).
    Given per compile because the global switch does not hold: after every compiled frame dynamo
    puts back the caller's torch.use_deterministic_algorithms, which sets inductor's switch to
    it too (False unless the caller turned it on), so only the first frame would have it (torch
    2.11 on an H100 and 2.13 here: docs/benchmarks.md, "Evaluator")."""
    return {"options": {"deterministic": True}} if repeatable() else {}


def runs_on(device: torch.device, switch: str | None = None) -> bool:
    """Whether a Triton kernel may run on `device`: Triton installed, not switched off by the
    environment variable `switch` set to 0, and CUDA (or the CPU under TRITON_INTERPRET=1)."""
    if triton is None or (switch is not None and os.environ.get(switch) == "0"):
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def device_key(device: torch.device | str) -> str:
    """`device` as a tensor on it names itself: "cuda" is the current CUDA device ("cuda:0"), so
    that a workspace kept by a tensor's device is found by the device a caller names."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)
