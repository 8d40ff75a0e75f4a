"""The backend rows of the job forms: where the job runs (local keeper or Slurm) and, for Slurm,
its options in one line of KEY=VALUE words.

Usage (in a JobForm):
    def fields(self): ...; yield from backend_fields(self)
    def build(self): spec = builders...(...); return with_backend(self, spec)

The options are the `--backend slurm` flags: `nodes=2 gpus_per_node=8 partition=gpu
time=4:00:00 account=team signal_before_s=300`; what is not given comes from
ROOT/settings/slurm.yaml (rltui.jobs.backends.slurm_spec), as for `rltui --batch`.
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.errors import UsageError

INTS = ("nodes", "gpus_per_node", "signal_before_s")
TEXTS = ("partition", "time", "account")


def backend_fields(form: Any) -> Iterable[Widget]:
    yield form.choice("backend", "backend", ["local", "slurm"], "local")
    yield form.text("slurm_options", "Slurm", "", "e.g. nodes=2 partition=gpu time=4:00:00")


def parse_options(text: str) -> dict[str, Any]:
    """'nodes=2 partition=gpu' -> {"nodes": 2, "partition": "gpu"}; one line naming a bad word."""
    out: dict[str, Any] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        key = key.replace("-", "_")
        if not sep or not value or key not in INTS + TEXTS:
            raise UsageError(f"bad Slurm option: {word!r} (use KEY=VALUE with KEY one of "
                             f"{', '.join(INTS + TEXTS)})")
        if key in INTS:
            try:
                out[key] = int(value)
            except ValueError:
                raise UsageError(f"bad Slurm option: {word!r} ({key} is a whole number)") from None
        else:
            out[key] = value
    return out


def with_backend(form: Any, spec: Any) -> Any:
    """`spec` as the form asks: unchanged for local, with its Slurm part for slurm."""
    from rltui.jobs.backends.slurm import spec_from_flags

    options = parse_options(form.value("slurm_options"))
    if form.value("backend") != "slurm":
        if options:
            raise UsageError("Slurm options are for the slurm backend (choose backend slurm)")
        return spec
    return spec.with_changes(slurm=spec_from_flags(form.fs_layout, "slurm", **options))
