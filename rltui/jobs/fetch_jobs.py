"""Fetch jobs: a model or a dataset from the Hugging Face Hub, run by `python -m trainer.fetch`.

    spec = fetch_jobs.fetch_model_job(layout, "Qwen/Qwen2.5-1.5B-Instruct")
    spec = fetch_jobs.fetch_dataset_job(layout, "gsm8k")
    job = control.launch(layout, spec)

Like the other builders these are pure: every flag is checked here (UsageError naming the bad
value) so that no job is created that the fetch process would refuse for its input, and nothing
touches the disk until `control.launch`. A fetch needs no GPU; its progress lines are its log.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace

from rltui.errors import UsageError
from rltui.jobs.builders import PY, new_job_id
from rltui.jobs.policy import RestartSettings
from rltui.jobs.records import JobKind, JobSpec
from rltui.runs.localfs import BadName, Layout, validate_dataset_name, validate_name

DATASET_ALIASES = ("gsm8k",)  # trainer.hub_datasets.ALIASES: gsm8k = openai/gsm8k, config main
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REVISION = re.compile(r"^[\w./-]+$")
_FIELD = re.compile(r"^[^\x00-\x1f]{1,200}$")

# A fetch that could not reach the Hub, or was cut off midway, exits 1 (trainer/fetch.py) and the
# same command again continues with the files already whole: the keeper runs it again after 30 s,
# 60 s and 120 s, riding out a network that comes back within about 3.5 minutes. Bad input (exit 2)
# and a stop are never retried.
FETCH_RETRIES = RestartSettings(auto_resume=True, max_restarts=3, backoff_s=30.0, backoff_factor=2.0,
                                backoff_max_s=120.0)


def fetch_model_job(layout: Layout, repo_id: str, revision: str | None = None,
                    as_name: str | None = None, retries: int = FETCH_RETRIES.max_restarts) -> JobSpec:
    """Download a model repo into the HF cache, or into ROOT/models/NAME with `as_name`."""
    _check_repo_id(repo_id, "model")
    argv = [PY, "-m", "trainer.fetch", "model", repo_id] + _revision(revision)
    if as_name is not None:
        try:
            validate_name(as_name, "--as")
        except BadName as e:
            raise UsageError(str(e)) from None
        target = layout.models / as_name
        if as_name == "tiny" or target.exists():
            raise UsageError(f"--as {as_name}: {target} already exists (remove it or choose another name)")
        argv += ["--as", as_name]
    return _spec(layout, argv, f"fetch model {repo_id}" + (f" as {as_name}" if as_name else ""), retries)


def fetch_dataset_job(layout: Layout, dataset: str, revision: str | None = None,
                      config: str | None = None, as_name: str | None = None,
                      question_field: str | None = None, answer_field: str | None = None,
                      retries: int = FETCH_RETRIES.max_restarts) -> JobSpec:
    """Download a dataset repo and write ROOT/datasets/NAME/{train,test}.jsonl (GSM8K form)."""
    if dataset not in DATASET_ALIASES:
        _check_repo_id(dataset, "dataset", aliases=True)
    name = as_name or (dataset if dataset in DATASET_ALIASES else dataset.rsplit("/", 1)[-1].lower().replace(".", "-"))
    try:
        validate_dataset_name(name)
    except BadName as e:
        raise UsageError(f"{e}" + ("" if as_name else " (pass --as NAME)")) from None
    argv = [PY, "-m", "trainer.fetch", "dataset", dataset] + _revision(revision)
    for flag, value in (("--config", config), ("--as", as_name), ("--question-field", question_field),
                        ("--answer-field", answer_field)):
        if value is not None:
            if not _FIELD.match(value) or (flag == "--config" and not _REVISION.match(value)):
                raise UsageError(f"bad {flag}: {value!r}")
            argv += [flag, value]
    return _spec(layout, argv, f"fetch dataset {dataset} as {name}", retries)


def _check_repo_id(repo_id: str, what: str, aliases: bool = False) -> None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        also = f" ({', '.join(DATASET_ALIASES)} or org/name)" if aliases else " (org/name)"
        raise UsageError(f"bad {what} repo id: {repo_id!r}{also}; a revision goes in --revision")


def _revision(revision: str | None) -> list[str]:
    if revision is None:
        return []
    if not _REVISION.match(revision) or ".." in revision:
        raise UsageError(f"bad --revision: {revision!r} (a branch, tag or commit)")
    return ["--revision", revision]


def _spec(layout: Layout, argv: list[str], title: str, retries: int) -> JobSpec:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise UsageError(f"bad --retries: {retries!r} (a whole number from 0 to 100)")
    argv += ["--root", str(layout.root)]
    restart = replace(FETCH_RETRIES, auto_resume=retries > 0, max_restarts=retries)
    return JobSpec(id=new_job_id(JobKind.FETCH), kind=JobKind.FETCH, argv=tuple(argv), title=title,
                   cwd=os.getcwd(), gpu_count=0, restart=restart)
