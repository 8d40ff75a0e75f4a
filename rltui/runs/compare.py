"""Compare runs from the metrics store: series aligned by step, summaries, differing config keys.

Usage:
    with Store.open(root) as store:
        c = compare(store, ["run_A", "run_B"], ["reward_mean", "eval_accuracy"])
        c.steps["reward_mean"]                 # the union of the runs' steps, ascending
        c.aligned["reward_mean"]["run_A"]      # one value (or None) per step above
        c.summaries["reward_mean"]["run_A"]    # SummaryRow: first, last, min, max, best (+ steps)
        c.differing                            # {config key: {run: value}} where runs disagree

Used by `rltui --batch compare`, `export` and the TUI's compare screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rltui.runs.store import Store, SummaryRow

DEFAULT_METRICS = ("reward_mean", "eval_accuracy")
_MISSING = object()


@dataclass
class Comparison:
    runs: list[str]
    metrics: list[str]
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)
    aligned: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    summaries: dict[str, dict[str, SummaryRow]] = field(default_factory=dict)
    differing: dict[str, dict[str, object]] = field(default_factory=dict)


def default_metrics(store: Store) -> list[str]:
    known = set(store.metrics())
    chosen = [m for m in DEFAULT_METRICS if m in known]
    return chosen or sorted(known)[:1]


def align(series: dict[str, tuple[list[int], list[float]]]) -> tuple[list[int], dict[str, list[float | None]]]:
    """The union of the runs' steps, and each run's value at each of them (None where it has none)."""
    steps = sorted({s for run_steps, _ in series.values() for s in run_steps})
    out = {}
    for run, (run_steps, values) in series.items():
        at = dict(zip(run_steps, values))
        out[run] = [at.get(s) for s in steps]
    return steps, out


def differing_config(configs: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Keys whose value is not the same in every run (a key some runs lack counts as differing)."""
    keys = sorted({k for cfg in configs.values() for k in cfg})
    out = {}
    for key in keys:
        values = {run: cfg.get(key, _MISSING) for run, cfg in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[key] = {run: (None if v is _MISSING else v) for run, v in values.items()}
    return out


def compare(store: Store, runs: list[str], metrics: list[str] | None = None) -> Comparison:
    metrics = list(metrics) if metrics else default_metrics(store)
    c = Comparison(runs=list(runs), metrics=metrics)
    for metric in metrics:
        series = store.series(runs, metric)
        c.series[metric] = series
        c.steps[metric], c.aligned[metric] = align(series)
        c.summaries[metric] = store.summary(metric, runs)
    c.differing = differing_config(store.config(runs))
    return c
