"""A model of the stream kernels' protocol (bench/gpu_gluon_mlp_stream.py,
bench/gpu_gluon_layer_stream.py), run on a CPU with random interleavings.

    python bench/gluon_stream_model.py [SEEDS]     # prints "ok N runs" or raises
    python bench/gluon_stream_model.py --mutations # plants each of ten bugs; exits 1 unless all are caught

Gluon has no interpreter, and a kernel that deadlocks costs a GPU call its timeout. So the
kernels' bookkeeping is written out here once more in Python, for a few programs and small
shapes. Each program's three partitions (weight loader, activation loader, multiplying warp
group) are generators that yield what they wait for, and a scheduler runs a random runnable one
each time. A kernel is a list of phases a layer (`Phase`): ring phases (a product, gate/up) whose
K steps go through the ring, and norm phases that the multiplying warps run alone. Modelled as the
kernels have them:
- the ring's stages and their "ready" (weights and activations apart) and "empty" mbarriers,
  tested by parity as `mbarrier.wait` tests them, each stage handed back one step late;
- an arrival counter per (layer, phase), which the activation loader (and, with `wait`, the
  weight loader) waits on before a phase's input tiles, and the multiplying warps before a norm;
- every buffer's parts (a product's (split, tile) partials, a program's act columns, a row of h)
  with the (layer, phase) that last wrote them;
- one launch for all layers (the rings go on) or one launch a layer (everything starts afresh,
  after the launch before has finished).

It raises on:
- a deadlock (no partition can go on);
- a parity test passing for the wrong phase (a waiter two phases behind);
- a multiply finding another step's tiles in its stage;
- a read of a buffer before every writer of its last writing phase wrote it, which also catches an
  overwrite before the last reader.

TMA reads are taken at issue, the earliest they could happen. It checks the protocol as written
here, not Gluon's lowering of it: the GPU runs check the numbers.
"""
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Phase:
    """One phase of a layer. `kind`: "ring" (K steps through the ring: `steps(p)` of them, 0 for a
    program without work) or "norm" (program p < rows, the multiplying warps alone). `reads` and
    `writes` name buffers; `part(p)` is the part of `writes` program p writes. `wait`: the counter
    (layers back, phase) whose every arrival comes before this phase's inputs (None: nothing, as
    the first phase of a launch); `wait_if_work`: only programs with steps wait. `arrive`: the
    multiplying warps arrive at this phase's counter after it."""

    kind: str
    reads: str
    writes: str
    steps: Callable[[int], int] = lambda p: 0
    part: Callable[[int], object] = lambda p: p
    wait: tuple[int, int] | None = None
    wait_if_work: bool = False
    arrive: bool = True


def product(reads, writes, steps_all, tiles, splits, wait=None, wait_if_work=True) -> Phase:
    """A product of `tiles` column tiles x `splits` K slices of `steps_all` steps (program p:
    tile p % tiles, slice p // tiles; none past tiles x splits)."""
    def steps(p):
        split = p // tiles
        return ((split + 1) * steps_all // splits - split * steps_all // splits) if p < tiles * splits else 0
    return Phase("ring", reads, writes, steps, lambda p: (p // tiles, p % tiles), wait, wait_if_work)


def mlp_phases(steps1=4, steps_all=10, tiles=2, splits=2) -> list[Phase]:
    """bench/gpu_gluon_mlp_stream.py: gate/up (every program), down, the norm; the next layer's
    gate/up waits for the norm of the layer before."""
    return [Phase("ring", "h", "act", lambda p: steps1, wait=(1, 2)),
            product("act", "part", steps_all, tiles, splits, wait=(0, 0)),
            Phase("norm", "part", "h", wait=(0, 1))]


def layer_phases(steps_h=4, steps_i=10, tiles=2, splits=2, q_tiles=3, q_splits=1, following=True) -> list[Phase]:
    """bench/gpu_gluon_layer_stream.py, one launch a layer: o (its input written before the
    launch), the post-attention norm, gate/up, down, the next input norm, the next q/k/v."""
    phases = [product("attn", "o_part", steps_h, tiles, splits, wait=None),
              Phase("norm", "o_part", "h", wait=(0, 0)),
              Phase("ring", "h", "act", lambda p: steps_h, wait=(0, 1)),
              product("act", "d_part", steps_i, tiles, splits, wait=(0, 2)),
              Phase("norm", "d_part", "h", wait=(0, 3))]
    if following:  # (read by the next launch's attention: no arrival)
        phases.append(replace(product("h", "qkv_part", steps_h, q_tiles, q_splits, wait=(0, 4)), arrive=False))
    return phases


def run(phases_of: Callable[[int], list[Phase]], programs=6, stages=3, layers=3, wait=0, per_layer=False,
        external=("attn",), initial=(), seed=0) -> int:
    """One random interleaving of `programs` programs (the last without a row) through `layers`
    layers of `phases_of(layer)`; the scheduler's steps taken. `external`: buffers written before
    each launch (one part, by the kernel before), `initial`: before the first only."""
    rng = random.Random(seed)
    P, S = programs, stages
    rows = P - 1
    counts: dict[tuple[int, int], int] = {}
    versions: dict[str, dict[object, tuple]] = {}  # buffer -> part -> (layer, phase) that wrote it

    def writers(layer: int, index: int, buffer: str) -> tuple[tuple, set]:
        # The (layer, phase) whose writes a read of `buffer` by phase `index` of `layer` must see,
        # and their parts: the last writing phase before it, in this layer or the ones before.
        for at in range(layer, -1, -1):
            phases = phases_of(at)
            for k in range(index - 1 if at == layer else len(phases) - 1, -1, -1):
                if phases[k].writes == buffer:
                    ph = phases[k]
                    parts = {ph.part(p) for p in range(P)
                             if (ph.kind == "ring" and ph.steps(p) > 0) or (ph.kind == "norm" and p < rows)}
                    return (at, k), parts
        return ("start",), set(versions.get(buffer, {}))

    def check_read(layer, index, buffer, who):
        want, parts = writers(layer, index, buffer)
        found = versions.get(buffer, {})
        stale = {part: found.get(part) for part in parts if found.get(part) != want}
        assert not stale and parts, (f"{who} read {buffer} at layer {layer} phase {index} before its writers {want}",
                                     stale)

    def arrived(layer, index):
        return lambda: counts.get((layer, index), 0) >= P

    class Ring:
        def __init__(self):
            self.empty, self.w_ready, self.x_ready = [0] * S, [0] * S, [0] * S
            self.tag = [[None, None] for _ in range(S)]

        def free(self, n):  # mbarrier.wait(empty[s], ((n // S) & 1) ^ 1), and the phase it stands for
            s, parity = n % S, ((n // S) & 1) ^ 1
            return (lambda: (self.empty[s] & 1) != parity), ("empty", self, s, n // S)

        def filled(self, n):  # mbarrier.wait on both ready barriers with parity (n // S) & 1
            s, parity = n % S, (n // S) & 1
            return ((lambda: (self.w_ready[s] & 1) != parity and (self.x_ready[s] & 1) != parity),
                    ("ready", self, s, n // S + 1))

    def input_wait(ph: Phase, layer: int, p: int, first_layer: int, loader: str):
        # (the weight loader, when it waits, waits whether it has work or not, as the kernels do)
        if ph.wait is None or (loader == "inputs" and ph.wait_if_work and ph.steps(p) == 0):
            return None
        back, index = ph.wait
        if layer - back < first_layer:  # before this launch: finished when it started
            return None
        return arrived(layer - back, index)

    def loader(p, ring, layer_range, inputs: bool):
        # the weight loader (inputs False: waits only with `wait`) or the input loader (each
        # phase's inputs after its dependency; its reads are checked)
        n = 0
        for layer in layer_range:
            for index, ph in enumerate(phases_of(layer)):
                if ph.kind != "ring":
                    continue
                cond = input_wait(ph, layer, p, layer_range[0], "inputs" if inputs else "weights")
                if (inputs or wait) and cond is not None:
                    yield cond, None
                for j in range(ph.steps(p)):
                    yield ring.free(n)
                    if inputs:
                        check_read(layer, index, ph.reads, f"program {p}'s loader")
                    ring.tag[n % S][int(inputs)] = (layer, index, j)
                    (ring.x_ready if inputs else ring.w_ready)[n % S] += 1
                    n += 1

    def weights(p, ring, layer_range):
        return loader(p, ring, layer_range, False)

    def activations(p, ring, layer_range):
        return loader(p, ring, layer_range, True)

    def multiply(p, ring, layer_range):
        n = 0
        for layer in layer_range:
            for index, ph in enumerate(phases_of(layer)):
                if ph.kind == "ring":
                    steps = ph.steps(p)
                    for j in range(steps):
                        yield ring.filled(n)
                        assert ring.tag[n % S] == [(layer, index, j)] * 2, ("tiles", p, layer, index, j,
                                                                            ring.tag[n % S])
                        if j > 0:  # the stage before, its last product now finished
                            ring.empty[(n + S - 1) % S] += 1
                        n += 1
                    if steps:
                        ring.empty[(n + S - 1) % S] += 1
                        versions.setdefault(ph.writes, {})[ph.part(p)] = (layer, index)
                else:
                    back, on = ph.wait
                    yield arrived(layer - back, on), None
                    if p < rows:
                        check_read(layer, index, ph.reads, f"program {p}'s norm")
                        versions.setdefault(ph.writes, {})[p] = (layer, index)
                if ph.arrive:
                    counts[(layer, index)] = counts.get((layer, index), 0) + 1

    def advance(entry):
        try:
            entry[2], entry[3] = next(entry[1])
        except StopIteration:
            entry[2] = None

    steps = 0
    launches = [range(layer, layer + 1) for layer in range(layers)] if per_layer else [range(layers)]
    for buffer in initial:
        versions[buffer] = {"all": ("start",)}
    for layer_range in launches:
        for buffer in external:  # written by the kernel before this launch
            versions[buffer] = {"all": ("start",)}
        rings = [Ring() for _ in range(P)]
        parts = [[f"{f.__name__} {p}", f(p, rings[p], layer_range), None, None]
                 for p in range(P) for f in (weights, activations, multiply)]
        for entry in parts:
            advance(entry)
        while live := [entry for entry in parts if entry[2] is not None]:
            runnable = [entry for entry in live if entry[2]()]
            if not runnable:
                raise RuntimeError(f"deadlock after {steps} steps: " + ", ".join(entry[0] for entry in live))
            entry = rng.choice(runnable)
            if entry[3] is not None:  # the parity test passed: for the phase it stands for?
                kind, ring, s, phase = entry[3]
                found = (ring.empty[s],) if kind == "empty" else (ring.w_ready[s], ring.x_ready[s])
                assert all(c == phase for c in found), (f"parity test on {kind} passed for another phase", entry[0],
                                                        found, phase)
            advance(entry)
            steps += 1
    return steps


def check_all(seeds: int = 300) -> int:
    """Both kernels' protocols over `seeds` interleavings each of several ring depths and shapes
    (down's slices shorter and longer than the ring), the weights waiting or not; the runs."""
    runs = 0
    for seed in range(seeds):
        for wait in (0, 1):
            for stages in (2, 3, 4):
                for steps_all in (10, 3 * stages, 7):
                    steps1 = max(stages, 4)
                    mlp = mlp_phases(steps1=steps1, steps_all=steps_all)
                    for per_layer in (False, True):  # (the first layer's h: the start's)
                        run(lambda layer, mlp=mlp: mlp, stages=stages, wait=wait, per_layer=per_layer, seed=seed,
                            external=(), initial=("h",))
                    run(lambda layer, s=steps1, a=steps_all: layer_phases(s, a, following=layer < 2),
                        stages=stages, wait=wait, per_layer=True, layers=3, seed=seed)
                    runs += 3
    return runs


# Bugs planted in this file's own source, each of which check_all must catch: (what, text, replacement).
MUTATIONS = (
    ("MLP: down without its act wait", 'product("act", "part", steps_all, tiles, splits, wait=(0, 0))',
     'product("act", "part", steps_all, tiles, splits, wait=None)'),
    ("MLP: norm on the wrong counter", 'Phase("norm", "part", "h", wait=(0, 1))', 'Phase("norm", "part", "h", wait=(0, 0))'),
    ("MLP: gate/up on the wrong counter", 'Phase("ring", "h", "act", lambda p: steps1, wait=(1, 2))',
     'Phase("ring", "h", "act", lambda p: steps1, wait=(1, 1))'),
    ("layer: down without its act wait", 'product("act", "d_part", steps_i, tiles, splits, wait=(0, 2))',
     'product("act", "d_part", steps_i, tiles, splits, wait=None)'),
    ("layer: second norm on the wrong counter", 'Phase("norm", "d_part", "h", wait=(0, 3))',
     'Phase("norm", "d_part", "h", wait=(0, 0))'),
    ("layer: q/k/v without its h wait", 'product("h", "qkv_part", steps_h, q_tiles, q_splits, wait=(0, 4))',
     'product("h", "qkv_part", steps_h, q_tiles, q_splits, wait=None)'),
    ("layer: gate/up on the wrong counter", 'Phase("ring", "h", "act", lambda p: steps_h, wait=(0, 1))',
     'Phase("ring", "h", "act", lambda p: steps_h, wait=(0, 0))'),
    ("a phase's last stage never handed back", "if steps:\n                        ring.empty[(n + S - 1) % S] += 1",
     "if steps:\n                        ring.empty[(n + S - 1) % S] += 0"),
    ("a stage handed back at the wrong step",
     "if j > 0:  # the stage before, its last product now finished\n                            ring.empty[(n + S - 1) % S]",
     "if True:  # the stage before, its last product now finished\n                            ring.empty[n % S]"),
    ("the free test's parity inverted", "s, parity = n % S, ((n // S) & 1) ^ 1", "s, parity = n % S, ((n // S) & 1)"),
)


def mutations(seeds: int = 30) -> int:
    """Each of MUTATIONS planted in this file's source in turn, run by check_all: how many it
    caught (a deadlock or a failed check), printing each."""
    source = Path(__file__).read_text()
    model = source[:source.index("# Bugs planted")]  # (the list below holds the texts too)
    caught = 0
    for what, text, planted in MUTATIONS:
        if model.count(text) != 1:
            raise ValueError(f"{what}: the text to replace is not in the model once")
        space = {"__name__": "planted"}
        exec(compile(model.replace(text, planted), __file__, "exec"), space)  # noqa: S102 - this file's own source
        try:
            space["check_all"](seeds)
            print(f"NOT caught: {what}")
        except (AssertionError, RuntimeError) as exc:
            caught += 1
            print(f"caught: {what}: {type(exc).__name__} {str(exc)[:100]}")
    return caught


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mutations"]:
        found = mutations()
        print(f"{found} of {len(MUTATIONS)} planted bugs caught")
        sys.exit(0 if found == len(MUTATIONS) else 1)
    print("ok", check_all(int(sys.argv[1]) if len(sys.argv) > 1 else 300), "runs")
