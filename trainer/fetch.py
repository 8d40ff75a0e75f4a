"""Fetch a model or a dataset from the Hugging Face Hub: what `rltui --batch fetch` runs as a job.

Usage:
    python -m trainer.fetch model REPO_ID [--revision R] [--as NAME] [--root ROOT]
    python -m trainer.fetch dataset gsm8k|REPO_ID [--revision R] [--config C] [--as NAME]
                            [--question-field F] [--answer-field F] [--root ROOT]

A model goes into the Hugging Face cache (HF_HOME / HF_HUB_CACHE), where `model.base: REPO_ID`
finds it with no network call; with `--as NAME` into ROOT/models/NAME/ instead (downloaded into
ROOT/models/.tmp_fetch_NAME/, whose whole files a rerun keeps, then renamed into place with a
fetch_info.json naming the repo and commit). A dataset is downloaded into the cache and written
to ROOT/datasets/NAME/{train,test}.jsonl in GSM8K form (trainer.hub_datasets).
Progress is printed as whole lines. Exit codes: 0 done; 1 the Hub could not be reached, or the
download failed midway (nothing partial is left in place; the same command again continues); 2 bad
input (a repo, revision or file that is not there, a gated repo, a refused token), one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from rltui.runs import localfs
from trainer import hub, hub_datasets
from trainer.errors import ConfigError, DownloadFailed, HubUnreachable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.fetch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="a model repo, into the HF cache or ROOT/models/NAME")
    m.add_argument("repo_id")
    d = sub.add_parser("dataset", help="a dataset repo, into ROOT/datasets/NAME/{train,test}.jsonl")
    d.add_argument("repo_id", help="gsm8k (openai/gsm8k, config main) or a Hub dataset id")
    d.add_argument("--config", help="the dataset's config (subset) folder, e.g. main")
    d.add_argument("--question-field", help="the field holding the question (default: question)")
    d.add_argument("--answer-field", help="the field holding the answer (default: answer)")
    for q in (m, d):
        q.add_argument("--revision", help="branch, tag or commit (default: the default branch)")
        q.add_argument("--as", dest="as_name", metavar="NAME", help="the local name")
        q.add_argument("--root", help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = localfs.Layout(localfs.resolve_root(args.root))
    try:
        if args.what == "model":
            fetch_model(layout, args.repo_id, args.revision, args.as_name)
        else:
            fetch_dataset(layout, args)
    except HubUnreachable as e:  # asking again later may work: not bad input
        print(f"fetch: error: {e.retry_line}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"fetch: error: {e}", file=sys.stderr)
        return 2
    except DownloadFailed as e:
        print(f"fetch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fetch: stopped (the same command again continues)", file=sys.stderr)
        return 130
    return 0


def fetch_model(layout: localfs.Layout, repo_id: str, revision: str | None, as_name: str | None) -> None:
    if hub.parse_hub_id(repo_id) is None or "@" in repo_id:
        raise ConfigError(f"model {repo_id!r}: not a Hub repo id org/name (a revision goes in --revision)")
    what, fetch = f"model {repo_id}", hub.fetch_command(repo_id, revision)
    if as_name is None:
        if hub.hub_offline():  # what the cache holds is all there is
            folder = hub.cached_snapshot(repo_id, revision)
            if folder is None or hub.model_files_missing(folder):
                raise ConfigError(f"{what} is not (complete) in the Hugging Face cache "
                                  f"({hub.hub_cache_dir()}) and HF_HUB_OFFLINE is set: unset it to download")
            resolved = hub.resolve_hub_model(repo_id, revision, allow_download=False)
            print(f"model {repo_id} is in the cache (HF_HUB_OFFLINE is set, nothing checked): "
                  f"commit {resolved.commit}: {resolved.path}", flush=True)
            return
        hub.probe_repo(repo_id, revision, "model", what=what, fetch=fetch)
        folder = hub.download_snapshot(repo_id, revision, "model", hub.MODEL_FILES, what=what, fetch=fetch)
        _check_model(folder, repo_id)
        print(f"model {repo_id} at commit {folder.name} is in the Hugging Face cache; use it as "
              f"model.base: {repo_id}", flush=True)
        return
    target = _model_target(layout, as_name)
    if hub.hub_offline():
        raise ConfigError(f"{what} --as {as_name}: HF_HUB_OFFLINE is set; nothing can be downloaded")
    commit = hub.probe_repo(repo_id, revision, "model", what=what, fetch=fetch)
    staging = layout.models / f".tmp_fetch_{as_name}"  # kept after a failure: a rerun keeps its whole files
    hub.download_snapshot(repo_id, revision, "model", hub.MODEL_FILES, what=what,
                          fetch=fetch + f" --as {as_name}", local_dir=staging)
    _check_model(staging, repo_id)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
    info = {"repo_id": repo_id, "revision": revision, "commit": commit, "fetched": time.time()}
    localfs.write_json_atomic(staging / "fetch_info.json", info)
    localfs.fsync_dir(staging)
    os.replace(staging, target)
    print(f"model {repo_id} at commit {commit} is in {target}; use it as model.base: {as_name}",
          flush=True)


def _model_target(layout: localfs.Layout, name: str) -> Path:
    try:
        target = layout.model_dir(name)
    except localfs.BadName as e:
        raise ConfigError(f"--as: {e}") from None
    if name == "tiny" or target.exists():
        raise ConfigError(f"--as {name}: {target} already exists (remove it or choose another name)")
    return target


def _check_model(folder: Path, repo_id: str) -> None:
    missing = hub.model_files_missing(folder)
    if missing:
        raise ConfigError(f"model {repo_id}: the repo has no {missing} (a causal LM in "
                          "safetensors form is needed)")


def fetch_dataset(layout: localfs.Layout, args: argparse.Namespace) -> None:
    plan = hub_datasets.plan_dataset(args.repo_id, args.config, args.as_name,
                                     args.question_field, args.answer_field)
    repo_id, revision = plan.repo_id, args.revision
    what = f"dataset {repo_id}"
    fetch = f"rltui --batch fetch dataset {args.repo_id}" + (f" --revision {revision}" if revision else "")
    if hub.hub_offline():
        folder = hub.cached_snapshot(repo_id, revision, repo_type="dataset")
        if folder is None:
            raise ConfigError(f"{what} is not in the Hugging Face cache ({hub.hub_cache_dir()}) and "
                              f"HF_HUB_OFFLINE is set; fetch it where there is network: {fetch}")
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        commit = folder.name
    else:
        commit = hub.probe_repo(repo_id, revision, "dataset", what=what, fetch=fetch)
        files = _repo_files(repo_id, commit, what, fetch)
        folder = None
    chosen = hub_datasets.pick_split_files(files, plan.config)
    if not chosen:
        scope = f"under {plan.config}/ " if plan.config else ""
        raise ConfigError(f"{what}: no train or test parquet files {scope}(files: "
                          f"{', '.join(sorted(files)[:8]) or 'none'})")
    if folder is None:
        patterns = sorted(p for paths in chosen.values() for p in paths)
        folder = hub.download_snapshot(repo_id, revision, "dataset", patterns, what=what, fetch=fetch)
    rows = hub_datasets.convert({s: [folder / p for p in ps] for s, ps in chosen.items()}, plan)
    target = layout.datasets / localfs.validate_dataset_name(plan.name)
    info = {"repo_id": repo_id, "config": plan.config, "revision": revision, "commit": commit,
            "fields": {"question": plan.question_field, "answer": plan.answer_field},
            "rows": {s: len(r) for s, r in rows.items()}}
    hub_datasets.write_dataset(target, rows, info)
    counts = ", ".join(f"{s} {len(r)}" for s, r in sorted(rows.items(), key=lambda kv: kv[0] != "train"))
    print(f"dataset {repo_id} ({counts} examples) is in {target}; train on it with "
          f"data.dataset: {plan.name}_r1_template", flush=True)


def _repo_files(repo_id: str, commit: str, what: str, fetch: str) -> list[str]:
    from huggingface_hub import HfApi, constants

    try:
        return list(HfApi().list_repo_files(repo_id, repo_type="dataset", revision=commit))
    except Exception as e:  # one bounded probe already answered: this is the network failing
        raise DownloadFailed(hub.hub_error_line(e, what=what, repo_id=repo_id, revision=commit,
                                                endpoint=constants.ENDPOINT, fetch=fetch)) from None


if __name__ == "__main__":
    sys.exit(main())
