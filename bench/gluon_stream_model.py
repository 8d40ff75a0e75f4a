"""A model of bench/gpu_gluon_mlp_stream.py's protocol, run on a CPU with random interleavings.

    python bench/gluon_stream_model.py [SEEDS]     # prints "ok N runs" or raises

Gluon has no interpreter, and a kernel that deadlocks costs a GPU call its timeout. So the
kernel's bookkeeping is written out here once more in Python, for a few programs and small
shapes: each program's three partitions (weight loader, activation loader, multiplying warp
group) are generators that yield what they wait for; a scheduler runs a random runnable one
each time. Modelled as the kernel has them: the ring's stages and their "ready" (weights and
activations apart) and "empty" mbarriers, tested by parity as `mbarrier.wait` tests them; the
stage handed back one step late; the per-(layer, phase) arrival counters; the loads' sources
(act, h, the partials) with the layer that last wrote them. It raises on a deadlock (no
partition can go on), on a parity test passing for the wrong phase (a waiter two phases behind),
on a multiply finding another step's tiles in its stage, and on a read of act, h or the partials
before every writer of that layer wrote them (which also catches an overwrite before the last
reader). TMA reads are taken at issue, the earliest they could happen. `WAIT` 1 (the weights
restarting at each phase) is run too. It checks the protocol as written here, not Gluon's
lowering of it: the GPU run (bench/gpu_gluon_mlp_stream.py) checks the numbers.
"""
import random
import sys


def run(programs=6, stages=3, steps1=4, steps_all=10, splits=2, tiles_n=2, layers=3, wait=0, seed=0) -> int:
    """One random interleaving of `programs` programs through `layers` layers (gate/up in
    `steps1` K steps, down's `steps_all` K steps in `splits` slices of `tiles_n` column tiles,
    the last program without a row); the scheduler's steps taken."""
    rng = random.Random(seed)
    P, S = programs, stages
    rows = P - 1
    counts = [0] * (3 * layers)
    act_ver = [-1] * P  # the layer whose SiLU x up program p's columns of act hold
    part_ver = {}  # (split, tile) -> the layer whose partial it holds
    h_ver = [0] * P  # row r's h: 0 the start, layer L's norm writes L + 1

    def down_steps(p):
        split = p // tiles_n
        steps = (split + 1) * steps_all // splits - split * steps_all // splits
        return (p < tiles_n * splits, p % tiles_n, split, steps if p < tiles_n * splits else 0)

    def all_arrived(index):
        return lambda: counts[index] >= P

    class Ring:
        def __init__(self):
            self.empty, self.w_ready, self.x_ready = [0] * S, [0] * S, [0] * S
            self.tag = [[None, None] for _ in range(S)]  # what the weights, the activations of a stage are

        def free(self, n):  # mbarrier.wait(empty[s], ((n // S) & 1) ^ 1), and the phase it stands for
            s, parity = n % S, ((n // S) & 1) ^ 1
            return (lambda: (self.empty[s] & 1) != parity), ("empty", self, s, n // S)

        def filled(self, n):  # mbarrier.wait on both ready barriers with parity (n // S) & 1
            s, parity = n % S, (n // S) & 1
            return ((lambda: (self.w_ready[s] & 1) != parity and (self.x_ready[s] & 1) != parity),
                    ("ready", self, s, n // S + 1))

    rings = [Ring() for _ in range(P)]

    def weights(p):
        ring, (_, _, _, steps2) = rings[p], down_steps(p)
        n = 0
        for layer in range(layers):
            if wait and layer > 0:
                yield all_arrived(3 * layer - 1), None
            for i in range(steps1):
                yield ring.free(n)
                ring.tag[n % S][0] = ("gu", layer, i)
                ring.w_ready[n % S] += 1
                n += 1
            if wait:
                yield all_arrived(3 * layer), None
            for j in range(steps2):
                yield ring.free(n)
                ring.tag[n % S][0] = ("down", layer, j)
                ring.w_ready[n % S] += 1
                n += 1

    def activations(p):
        ring, (has_down, _, _, steps2) = rings[p], down_steps(p)
        n = 0
        for layer in range(layers):
            if layer > 0:
                yield all_arrived(3 * layer - 1), None
            for i in range(steps1):
                yield ring.free(n)
                assert all(v == layer for v in h_ver[:rows]), ("stale h", p, layer, h_ver)
                ring.tag[n % S][1] = ("gu", layer, i)
                ring.x_ready[n % S] += 1
                n += 1
            if has_down:
                yield all_arrived(3 * layer), None
            for j in range(steps2):
                yield ring.free(n)
                assert all(v == layer for v in act_ver), ("stale act", p, layer, act_ver)
                ring.tag[n % S][1] = ("down", layer, j)
                ring.x_ready[n % S] += 1
                n += 1

    def multiply(p):
        ring, (has_down, d_tile, split, steps2) = rings[p], down_steps(p)
        n = 0
        for layer in range(layers):
            for i in range(steps1):
                yield ring.filled(n)
                assert ring.tag[n % S] == [("gu", layer, i)] * 2, ("tiles", p, layer, i, ring.tag[n % S])
                if i > 0:  # the stage before, its last product now finished
                    ring.empty[(n + S - 1) % S] += 1
                n += 1
            ring.empty[(n + S - 1) % S] += 1
            act_ver[p] = layer
            counts[3 * layer] += 1
            for j in range(steps2):
                yield ring.filled(n)
                assert ring.tag[n % S] == [("down", layer, j)] * 2, ("tiles", p, layer, j, ring.tag[n % S])
                if j > 0:
                    ring.empty[(n + S - 1) % S] += 1
                n += 1
            if has_down:
                ring.empty[(n + S - 1) % S] += 1
                part_ver[(split, d_tile)] = layer
            counts[3 * layer + 1] += 1
            yield all_arrived(3 * layer + 1), None
            if p < rows:
                assert len(part_ver) == tiles_n * splits and all(v == layer for v in part_ver.values()), \
                    ("stale partials", p, layer, part_ver)
                h_ver[p] = layer + 1
            counts[3 * layer + 2] += 1

    def advance(entry):
        try:
            entry[2], entry[3] = next(entry[1])
        except StopIteration:
            entry[2] = None

    parts = [[f"{f.__name__} {p}", f(p), None, None] for p in range(P) for f in (weights, activations, multiply)]
    for entry in parts:
        advance(entry)
    steps = 0
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
    assert all(v == layers for v in h_ver[:rows])
    return steps


if __name__ == "__main__":
    runs = 0
    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 300):
        for wait in (0, 1):
            for stages in (2, 3, 4):
                for steps_all in (10, 3 * stages, 7):  # down slices shorter and longer than the ring
                    run(stages=stages, wait=wait, seed=seed, steps_all=steps_all, steps1=max(stages, 4))
                    runs += 1
    print("ok", runs, "runs")
