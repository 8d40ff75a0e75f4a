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
