"""Training micro-batches replayed from CUDA graphs: forward, loss and backward as one replay.

    from trainer.train_graph import MicroBatchGraphs, usable
    graphs = MicroBatchGraphs.of(model)           # cached per model
    stats = graphs.run(key, body, inputs)         # body(inputs) runs forward + backward, returns a tensor

On an H200 one GRPO micro-batch of the benchmark (32 sequences through the fast path of
trainer/qwen2_train.py) launches ~4,300 kernels in 180 ms of wall time for 142 ms of GPU work:
the host, not the GPU, sets the pace (docs/benchmarks.md, issue 18). Captured once per input
shape, the same work is one graph launch: the host copies the micro-batch into the graph's input
buffers and replays it.

What the replay relies on, read once per update (`current`) and checked before each replay (a
mismatch captures again):
- the trainable parameters and their `.grad` tensors stay where they were at capture (the
  optimizer steps them in place; gradients are accumulated in place into the same tensors, so
  `optimizer.zero_grad(set_to_none=False)` between updates);
- the frozen parameters are the same tensors, unchanged (`_version`), which also keeps the fast
  path's cached stacked base weights valid (the graph holds a reference to them);
- the adapters are switched the same way (enabled, merged, active: qwen2_decode.adapter_state)
  and the model is in the same mode.
The warm-up that precedes a capture runs the body once eagerly on a side stream with the real
inputs and then puts the gradients back, so every micro-batch's gradient, the first included,
comes from a replay: the result does not depend on when the graph was captured (a resumed run
replays the same kernels as one never stopped).

LoRA dropout draws its masks inside the graph from the default CUDA generator, which PyTorch
makes graph-safe: each replay advances the generator's offset by what the captured kernels
consume, from where an eager run would start, so a replay draws the masks the eager micro-batch
would have drawn from the same generator state, and a different mask at every replay. The
warm-up's eager run would advance the generator too: its state is put back after the warm-up, so
capturing does not move the random stream (a resumed run draws what an uninterrupted one does).

Not used (the eager path runs): off CUDA, with `RLTUI_TRAIN_GRAPHS=0`, with gradient
checkpointing, or past `LIMIT` distinct shapes per model.
"""

from __future__ import annotations

import os
import traceback
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainer.qwen2_decode import adapter_state
from trainer.qwen2_train import checkpointing

ENV = "RLTUI_TRAIN_GRAPHS"
LIMIT = 4  # distinct micro-batch shapes captured per model (each holds its activations' memory)


def usable(model: nn.Module) -> bool:
    """CUDA, not switched off, not DDP, without gradient checkpointing."""
    if os.environ.get(ENV, "1") == "0" or isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cuda":
        return False
    return not checkpointing(model)


def _stamp(model: nn.Module, params: list[nn.Parameter]) -> tuple:
    frozen = tuple((p.data_ptr(), p._version) for p in model.parameters() if not p.requires_grad)
    trained = tuple((p.data_ptr(), p.grad.data_ptr() if p.grad is not None else None) for p in params)
    return frozen, trained, adapter_state(model), model.training


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor
    stamp: tuple
    held: tuple  # tensors the graph reads that nothing else may keep alive (cached stacked weights)


class MicroBatchGraphs:
    """The captured micro-batches of one model, by key (shapes and loss settings)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = weakref.ref(model)
        self.graphs: dict[tuple, _Captured] = {}
        self.failed = False
        self.error = ""  # the failed capture's traceback, for the notes

    @classmethod
    def of(cls, model: nn.Module) -> MicroBatchGraphs:
        found = _GRAPHS.get(model)
        if found is None:
            found = _GRAPHS[model] = cls(model)
        return found

    def current(self) -> tuple[list[nn.Parameter], tuple] | None:
        """(trainable parameters, stamp) of the model now: what `run` checks a graph against. A
        module walk (milliseconds of host time): an update reads it once for all its replays."""
        model = self.model()
        if model is None:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:  # a capture accumulates into these: they exist before it, as after
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return params, _stamp(model, params)

    def run(self, key: tuple, body: Callable[[dict[str, torch.Tensor]], torch.Tensor],
            inputs: dict[str, torch.Tensor], held: Callable[[], tuple] = tuple,
            current: tuple[list[nn.Parameter], tuple] | None = None) -> torch.Tensor | None:
        """Replay the graph of `key` on `inputs` (captured first if needed) and return a copy of
        `body`'s output; None when no graph serves (the caller runs `body` eagerly). `current`:
        `self.current()` read by the caller since the model last changed (default: read here)."""
        model = self.model()
        if model is None or self.failed:
            return None
        params, stamp = current if current is not None else self.current()
        captured = self.graphs.get(key)
        if captured is not None and captured.stamp != stamp:
            del self.graphs[key]
            captured = None
        if captured is None:
            if len(self.graphs) >= LIMIT:
                return None
            try:
                captured = self._capture(model, params, body, inputs, held)
            except Exception as exc:  # noqa: BLE001 - the eager path serves from now on
                warnings.warn(f"capturing the training micro-batch failed ({exc!r:.300}); running it eagerly",
                              stacklevel=2)
                torch.cuda.synchronize()
                self.error = traceback.format_exc()[-3000:]
                self.failed = True
                self.graphs.clear()
                return None
            self.graphs[key] = captured
        for name, tensor in inputs.items():
            captured.inputs[name].copy_(tensor)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, model: nn.Module, params: list[nn.Parameter], body, inputs: dict[str, torch.Tensor],
                 held: Callable[[], tuple]) -> _Captured:
        static = {name: tensor.clone() for name, tensor in inputs.items()}
        saved = [p.grad.clone() for p in params]  # `current()` made every gradient exist
        device = params[0].device if params else torch.device("cuda", torch.cuda.current_device())
        random = torch.cuda.get_rng_state(device)  # the warm-up's dropout draws are put back
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compiles, autotunes, creates handles: not during capture
            body(static)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.set_rng_state(random, device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = body(static)
        with torch.no_grad():
            for p, grad in zip(params, saved):
                p.grad.copy_(grad)
        return _Captured(graph, static, output, _stamp(model, params), held())


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, MicroBatchGraphs] = weakref.WeakKeyDictionary()

