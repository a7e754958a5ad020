"""The local batch runner against the in-process Arrow API, on a generated request log.

The log comes from ``../shared/corpus/make_requests.py`` (IAM_EVAL_BATCH_REQUESTS
requests, 200,000 by default; the issue's figure is 5,000,000) and is replayed
against the seed policies, from JSON Lines and from Parquet, with one and two
workers. Peak memory of the runner and its workers is recorded too.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from workloads import CORPUS, EXAMPLES

from batch.policies import PolicySource
from batch.readers import read_requests, write_requests_parquet
from batch.runner import run_local
from evaluator.arrow import evaluate_arrow

N = int(os.environ.get("IAM_EVAL_BATCH_REQUESTS", "200000"))


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch-bench")
    jsonl = folder / "requests.jsonl"
    subprocess.run([sys.executable, str(CORPUS / "make_requests.py"), "--n", str(N), "--seed", "4",
                    "--out", str(jsonl)], check=True)
    parquet = folder / "requests.parquet"
    write_requests_parquet(read_requests([str(jsonl)]), parquet)
    source = PolicySource.from_paths(policies=[str(p) for p in sorted(EXAMPLES.glob("*.json"))])
    return folder, jsonl, parquet, source


@pytest.mark.benchmark(group="batch runner")
def test_in_process_arrow(benchmark, logs):
    _, _, parquet, source = logs
    batches = list(read_requests([str(parquet)]))  # each batch has the context keys of its own rows
    compiled = source.evaluator().compiled
    benchmark.extra_info["checks"] = sum(batch.num_rows for batch in batches)
    benchmark.pedantic(lambda: [evaluate_arrow(compiled, batch) for batch in batches], rounds=3)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_local_runner(benchmark, logs, kind, workers):
    folder, jsonl, parquet, source = logs
    benchmark.group = "batch runner"
    benchmark.extra_info["checks"] = N
    path = parquet if kind == "parquet" else jsonl
    output = folder / f"out-{kind}-{workers}.parquet"
    benchmark.pedantic(lambda: run_local(source, [str(path)], str(output), workers=workers,
                                         progress_out=open(os.devnull, "w")), rounds=1 if kind == "jsonl" else 3)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
               + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    benchmark.extra_info["peak_rss_mb_self_plus_largest_child"] = round(peak_mb)
