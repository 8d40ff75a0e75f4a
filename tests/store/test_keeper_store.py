"""The keeper brings its job's run into the metrics store when the job ends (a real keeper)."""

from __future__ import annotations

import sys
from pathlib import Path

from rltui.jobs import builders, control
from rltui.jobs.records import JobKind, JobSpec
from rltui.runs.localfs import Layout, create_run_dir
from rltui.runs.store import Store, store_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
from jobs_helpers import wait_final, wait_until  # noqa: E402

_TRAIN = """
import sys
from rltui.runs import localfs
layout, run = localfs.Layout(sys.argv[1]), sys.argv[2]
for step in (1, 2, 3):
    localfs.append_jsonl(layout.train_log(run), {"step": step, "reward_mean": step / 10})
localfs.write_json_atomic(layout.run_status(run), {"run": run, "step": 3, "phase": "completed"})
"""


def test_a_finished_job_s_run_and_usage_reach_the_store(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "localfs").ensure()
    run = create_run_dir(layout)
    spec = JobSpec(id=builders.new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, run=run, title="log 3 steps",
                   argv=(sys.executable, "-c", _TRAIN, str(layout.root), run), gpu_count=0)
    control.launch(layout, spec)
    wait_final(layout, spec.id)
    wait_until(store_path(layout.root).exists, 30, "the keeper to write the store")

    def ingested() -> bool:
        with Store.open(layout.root) as store:
            s = store.summary("reward_mean").get(run)
            used = store.conn.execute("SELECT state FROM usage WHERE job_id = ?", (spec.id,)).fetchone()
            return s is not None and s.n == 3 and used == ("succeeded",)

    wait_until(ingested, 30, "the run's 3 steps and the job's usage in the store")
