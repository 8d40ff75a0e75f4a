"""`rltui --batch fetch model|dataset ...` (a job) and `rltui --batch models` (what is local).

Usage:
    rltui --batch fetch model REPO_ID [--revision R] [--as NAME] [--retries N] [--detach] [--json]
    rltui --batch fetch dataset gsm8k|REPO_ID [--revision R] [--config C] [--as NAME]
                        [--question-field F] [--answer-field F] [--retries N] [--detach] [--json]
    rltui --batch models [--json]

A fetch is a job like a training run (its record in ROOT/jobs/, started through the keeper, its
progress lines in output.log): the command waits for it and streams its output, or returns the
job id with --detach. The download itself is `python -m trainer.fetch` (huggingface_hub's client,
the Hugging Face settings HF_HOME / HF_HUB_CACHE / HF_TOKEN / HF_ENDPOINT / HF_HUB_OFFLINE).
`models` lists the Hugging Face cache's models and ROOT/models/ with size, revision and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rltui.jobs.fetch_jobs import FETCH_RETRIES
from rltui.runs.localfs import Layout


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("fetch", parents=parents, help="download a model or a dataset from the Hugging Face Hub (a job)",
                              description="Download a model or a dataset from the Hugging Face Hub, as a job.")
    what = p.add_subparsers(dest="what", metavar="model|dataset", required=True,
                            parser_class=type(p))
    m = what.add_parser("model", parents=parents, help="a model repo into the HF cache (or ROOT/models/NAME)",
                        description="Download a model repo into the Hugging Face cache, where "
                                    "model.base: REPO_ID finds it offline; --as NAME puts it in ROOT/models/NAME.")
    m.add_argument("repo_id", metavar="REPO_ID", help="e.g. Qwen/Qwen2.5-1.5B-Instruct")
    m.add_argument("--revision", help="branch, tag or commit (default: the default branch)")
    m.add_argument("--as", dest="as_name", metavar="NAME", help="into ROOT/models/NAME instead of the cache")
    _job_flags(m)
    m.set_defaults(func=cmd_fetch_model)
    d = what.add_parser("dataset", parents=parents, help="a dataset into ROOT/datasets/NAME/{train,test}.jsonl",
                        description="Download a dataset repo's parquet files and write "
                                    "ROOT/datasets/NAME/{train,test}.jsonl in GSM8K form.")
    d.add_argument("dataset", metavar="gsm8k|REPO_ID", help="gsm8k (openai/gsm8k, config main) or org/name")
    d.add_argument("--revision", help="branch, tag or commit (default: the default branch)")
    d.add_argument("--config", help="the dataset's config (subset) folder, e.g. main")
    d.add_argument("--as", dest="as_name", metavar="NAME", help="ROOT/datasets/NAME (default: gsm8k, or the repo's name)")
    d.add_argument("--question-field", metavar="F", help="the field holding the question (default: question)")
    d.add_argument("--answer-field", metavar="F", help="the field holding the answer (default: answer)")
    _job_flags(d)
    d.set_defaults(func=cmd_fetch_dataset)

    p = subparsers.add_parser("models", parents=parents, help="list the models available locally",
                              description="List the models in the Hugging Face cache and in ROOT/models/.")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.set_defaults(func=cmd_models)


def _job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retries", type=int, default=FETCH_RETRIES.max_restarts, metavar="N",
                   help="when the Hub cannot be reached or the download is cut off, run it again up to N "
                        "times, 30 s, 60 s, 120 s later (default %(default)s; 0: never)")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from rltui.jobs.fetch_jobs import fetch_model_job

    layout = Layout(args.root)
    return _launch_and_wait(layout, fetch_model_job(layout, args.repo_id, args.revision, args.as_name,
                                                    retries=args.retries), args)


def cmd_fetch_dataset(args: argparse.Namespace) -> int:
    from rltui.jobs.fetch_jobs import fetch_dataset_job

    layout = Layout(args.root)
    spec = fetch_dataset_job(layout, args.dataset, revision=args.revision, config=args.config,
                             as_name=args.as_name, question_field=args.question_field,
                             answer_field=args.answer_field, retries=args.retries)
    return _launch_and_wait(layout, spec, args)


def _launch_and_wait(layout: Layout, spec: Any, args: argparse.Namespace) -> int:
    from rltui.cli.follow import summary_line, wait_and_stream
    from rltui.cli.jobs import job_json
    from rltui.jobs import control

    job = control.launch(layout, spec)
    if args.detach:
        print(json.dumps(job_json(job), indent=2) if args.json else job.id)
        return 0
    sys.stderr.write(f"job {job.id} ({spec.title}): output also in {layout.job_log(job.id)}\n")
    job = wait_and_stream(layout, job.id, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(job_json(job), indent=2))
    sys.stderr.write(summary_line(job) + "\n")
    return job.exit_status()


def cmd_models(args: argparse.Namespace) -> int:
    from rltui.runs.models import hub_cache_dir, list_local_models
    from rltui.runs.disk import human_bytes

    layout = Layout(args.root)
    models, problems = list_local_models(layout)
    for line in problems:
        sys.stderr.write(line + "\n")
    if args.json:
        print(json.dumps({"hf_cache": hub_cache_dir(), "models_dir": str(layout.models),
                          "models": [m.to_json() for m in models]}, indent=2))
        return 0
    if not models:
        print(f"no models in the Hugging Face cache ({hub_cache_dir()}) or in {layout.models}")
        return 0
    rows = [("NAME", "SOURCE", "REVISION", "COMMIT", "SIZE", "PATH")]
    for m in models:
        rows.append((m.name, m.source + ("" if m.complete else " (incomplete)"), m.revision or "-",
                     (m.commit or "-")[:12], human_bytes(m.size), str(m.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
