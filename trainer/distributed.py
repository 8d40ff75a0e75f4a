"""One process or many under torchrun: process group, DDP over the LoRA parameters, small
collectives. Every collective here is called by every rank at the same point of the loop, so no
rank ever waits on one that another rank skips.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a small picklable object)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any rank (one small all-reduce)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks of a short list of floats."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> Dist:
    """Read torchrun's environment; gloo on a CPU, NCCL on GPUs; one process without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # The keeper sets RLTUI_NCCL_TIMEOUT_S below its hang timeout, so a stuck collective
        # becomes an error (and a restart) before the job is declared hung.
        timeout_s = float(os.environ.get("RLTUI_NCCL_TIMEOUT_S", "1800"))
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def exit_process(code: int) -> NoReturn:
    """End this process with `code`; a rank of a multi-process job skips the interpreter's
    finalization.

    A gloo worker thread can still be dropping a finished collective's tensors when the main
    thread has already begun to finalize. The thread needs the GIL to release them, and taking it
    during finalization ends the thread in the middle of a C++ destructor: the process aborts
    ("terminate called without an active exception", SIGABRT) after the run was saved and
    closed, and torchrun reports the job failed (seen in a core dump of a test_torchrun failure;
    measured in docs/ARCHITECTURE.md, "Exit"). destroy_process_group does not stop those
    threads: once DDP has wrapped a model the group stays referenced from C++ until the process
    ends. So a rank runs the exit handlers (the writer lock's among them), flushes its streams
    and leaves with os._exit.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader is gone: nothing more to say
            pass
    os._exit(code)


def wrap_ddp(model: torch.nn.Module, d: Dist) -> tuple[torch.nn.Module, Callable[[], Any]]:
    """The module to train through and its `no_sync` (DDP syncs only parameters with grads: LoRA)."""
    if not d.enabled:
        return model, contextlib.nullcontext
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.local_rank] if d.device.type == "cuda" else None
    wrapped = DDP(model, device_ids=ids, find_unused_parameters=False)
    return wrapped, wrapped.no_sync
