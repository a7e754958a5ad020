"""Issue 10, one compiled engine for the whole store: the targets, beside the previous main and the reference.

The workload is ``store_workload``'s: ``make_store.py --copies 10 --resource-policies 2000 --all-managed
--requests 200000 --requests-seed 3`` (1,500 principals, every AWS managed policy held, 3,500 resource
policies) and the first IAM_EVAL_STORE_REQUESTS (200,000) requests of its stream. Measured:

* decisions: the first 20,000 rows through ``evaluate_columns`` (every context key the requests carry)
  equal ``reference_decision`` row by row; the benchmark fails if one differs (for the few requests the
  reference refuses, a context key given twice in two spellings, see ``_expected``);
* load and compile (``PolicyStore.from_json`` + ``CompiledStore``) in a fresh process: seconds and the
  growth of its resident set (target < 3 s, < 600 MB);
* the replay on one thread in calls of 1,000 with the context as one column per key the store tests
  (``CompiledStore.key_ids``, as the batch runner keeps them; columns built beforehand): the first
  pass on a fresh ``CompiledStore`` and the second on the same object (target >= 500,000 checks/s, first
  within 1.5x of the second); the same through ``evaluate_arrow`` in RecordBatches of 8,192; and, on the
  20,000 checked rows, every key the requests carry;
* the reference evaluator on an evenly spread sample of 3,000 rows (target: compiled >= 200x);
* flatness: cost per check with the principals copied once and IAM_EVAL_STORE_FLAT_COPIES (100) times,
  each with its own stream of 50,000 requests (target <= 1.5x); memory: the ``CompiledStore`` of the
  store plus 10,000 roles in a new account that share a few managed policies (target < 50 MB more);
* the previous main (commit 2354921: a compiled policy set per principal's policy set, an LRU of 256),
  from a git worktree built for the run, on the first 5,000 requests (IAM_EVAL_BENCH_PREVIOUS=0 skips it).

The session ends with a table of every target, its figure, the previous main's and the reference's.
Rates are given per second of wall-clock time and per CPU second: the machine may be shared, and the
CPU time of the one thread that decides is the steadier figure; targets are judged by it.
IAM_EVAL_STORE_CACHE keeps the generated files (default: a folder in the temp directory).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from store_workload import (
    REPO,
    StoreOptions,
    arrow_batches,
    column_batches,
    iter_requests,
    read_requests,
    store_files,
    with_more_principals,
)

from iam_evaluator import Request, RequestError
from iam_evaluator.arrow import evaluate_arrow
from iam_evaluator.compiled_store import CompiledStore
from iam_evaluator.store import PolicyStore, reference_decision

N = int(os.environ.get("IAM_EVAL_STORE_REQUESTS", "200000"))
CHECKED = min(N, 20_000)  # rows compared with the reference (~3,000 checks/s)
REFERENCE_SAMPLE = min(N, 3_000)
FLAT_COPIES = int(os.environ.get("IAM_EVAL_STORE_FLAT_COPIES", "100"))
FLAT_N = min(N, 50_000)
MORE_PRINCIPALS = 10_000
PREVIOUS = "2354921"
PREVIOUS_N = min(N, 5_000)  # the previous main decides ~100 checks/s
CALL, ARROW_BATCH = 1_000, 8_192
OPTIONS = StoreOptions(copies=10, requests=max(N, 200_000))
BENCH_DIR = Path(__file__).resolve().parent
NAMES = {0: "ImplicitDeny", 1: "Allow", 2: "ExplicitDeny", 3: "ImplicitDeny"}  # batch code -> decision

FIGURES: dict[str, object] = {}
"""Figures of this run, for the closing table (filled by the tests that measure them)."""


# --- workload ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files():
    return store_files(OPTIONS)


@pytest.fixture(scope="module")
def store(files):
    return PolicyStore.from_json(files[0].read_bytes())


@pytest.fixture(scope="module")
def compiled(store):
    """Shared by the second-pass benchmarks (each warms it with a pass of its own first)."""
    return CompiledStore(store)


@pytest.fixture(scope="module")
def columns(files, compiled):
    return column_batches(iter_requests(files[1], N), CALL, frozenset(compiled.key_ids))


def _decide_columns(compiled: CompiledStore, batches) -> tuple[bytes, dict[int, str]]:
    codes, errors = bytearray(), {}
    for principals, actions, resources, contexts in batches:
        decided = compiled.evaluate_columns(principals, actions, resources, contexts)
        errors.update((len(codes) + row, message) for row, message in decided.errors.items())
        codes += decided.codes
    return bytes(codes), errors


def _decide_arrow(compiled: CompiledStore, batches) -> list:
    return [evaluate_arrow(compiled, batch) for batch in batches]


def _arrow_codes(results) -> bytes:
    """The decision of every row of ``evaluate_arrow`` results as a batch code (0 ImplicitDeny, 1 Allow,
    2 ExplicitDeny; a failed row is an ImplicitDeny with an error)."""
    return b"".join(bytes(result.column("decision").indices.to_pylist()) for result in results)


class Clock:
    """Wall-clock and CPU seconds of each timed call. The machine is shared: CPU time (of this process,
    one thread) is the steadier of the two when other work takes turns on the cores."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, function, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        return result

    def rates(self, checks: int) -> dict[str, float]:
        """Checks per second and per CPU second (medians over the calls)."""
        return {"per_s": checks / statistics.median(self.wall), "per_cpu_s": checks / statistics.median(self.cpu)}


# --- 1. decisions equal the reference --------------------------------------------------------------------

def _expected(store: PolicyStore, compiled: CompiledStore, request: dict) -> tuple[tuple[str, bool], bool]:
    """The reference's decision and whether it is an error, and whether the reference refuses the request
    (a context key given twice, in two spellings). For such a request the compiled store must fail the row
    if it tests the key, and otherwise decide as the reference does without the key (it reads only the
    keys some policy in use tests)."""
    principal, action, resource, context = (request[field] for field in ("principal", "action", "resource",
                                                                         "context"))
    try:
        decision = reference_decision(store, Request.create(principal, action, resource, context))
        return (str(decision.decision), decision.error is not None), False
    except RequestError:
        spellings = Counter(key.lower() for key in context)
        twice = {key for key, count in spellings.items() if count > 1}
        if twice & set(compiled.key_ids):
            return ("ImplicitDeny", True), True
        reduced = {key: value for key, value in context.items() if key.lower() not in twice}
        decision = reference_decision(store, Request.create(principal, action, resource, reduced))
        return (str(decision.decision), decision.error is not None), True


@pytest.fixture(scope="module")
def checked(files, store):
    """The first CHECKED rows decided by a fresh compiled store (every context key, as one column each),
    the rows where it differs from the reference, and how many rows the reference refuses."""
    compiled = CompiledStore(store)
    requests = read_requests(files[1], CHECKED)
    batches = column_batches(requests, CALL)
    codes, errors = _decide_columns(compiled, batches)
    differ, refused = [], 0
    for row, request in enumerate(requests):
        expected, is_refused = _expected(store, compiled, request)
        refused += is_refused
        actual = NAMES[codes[row]], row in errors
        if expected != actual:
            differ.append((row, expected, actual, errors.get(row)))
    return {"codes": codes, "differ": differ, "refused": refused, "batches": batches, "compiled": compiled}


@pytest.mark.benchmark(group="store decisions")
def test_decisions_correct(benchmark, checked):
    """Correctness first: timed is only re-deciding the checked rows on the same object."""
    FIGURES.update(checked_rows=CHECKED, differ=len(checked["differ"]), refused_rows=checked["refused"],
                   decisions=dict(Counter(NAMES[code] for code in checked["codes"])))
    benchmark.extra_info.update(checks=CHECKED, differ=checked["differ"][:20], refused_rows=checked["refused"],
                                decisions=FIGURES["decisions"])
    benchmark.pedantic(_decide_columns, args=(checked["compiled"], checked["batches"]), rounds=1)
    assert not checked["differ"], f"{len(checked['differ'])} of {CHECKED} rows differ: {checked['differ'][:5]}"


# --- 2. load and compile in a fresh process ----------------------------------------------------------------

_LOAD = r"""
def status_mb(field):  # VmRSS now, VmHWM the peak (ru_maxrss would count the forking parent's)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024

def rss_mb():
    return status_mb("VmRSS")

start_rss = rss_mb()
start, start_cpu = time.perf_counter(), time.process_time()
with open(sys.argv[1], "rb") as snapshot:
    store = PolicyStore.from_json(snapshot.read())
"""
"""Loads the store in a fresh process, measuring time and memory (the start of both scripts below)."""

_FRESH = r"""
import json, sys, time
from iam_evaluator.store import PolicyStore
from iam_evaluator.compiled_store import CompiledStore
""" + _LOAD + r"""loaded, loaded_rss = time.perf_counter(), rss_mb()
compiled = CompiledStore(store)
done, done_cpu, done_rss = time.perf_counter(), time.process_time(), rss_mb()
print(json.dumps({"load_s": loaded - start, "compile_s": done - loaded, "seconds": done - start,
                  "cpu_s": done_cpu - start_cpu,
                  "load_rss_mb": loaded_rss - start_rss, "compile_rss_mb": done_rss - loaded_rss,
                  "rss_mb": done_rss - start_rss, "process_rss_mb": done_rss,
                  "peak_rss_mb": status_mb("VmHWM"),
                  "stats": {k: v for k, v in compiled.get_stats().items() if not isinstance(v, dict)}}))
"""


def _fresh_process(snapshot: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _FRESH, str(snapshot)], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout)


def _medians(runs: list[dict]) -> dict:
    """Each figure's median over the runs (the tables' sizes from the first)."""
    return {key: statistics.median(run[key] for run in runs) if key != "stats" else value
            for key, value in runs[0].items()}


@pytest.mark.benchmark(group="store load and compile")
def test_load_and_compile(benchmark, files):
    runs: list[dict] = []
    benchmark.pedantic(lambda: runs.append(_fresh_process(files[0])), rounds=3)
    figures = _medians(runs)
    FIGURES["load"] = figures
    benchmark.extra_info.update(figures)
    assert figures["stats"]["principals"] == 150 * OPTIONS.copies


# --- 3. replay -----------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="store replay")
def test_replay_columns_first_pass(benchmark, store, columns, checked):
    """Each round a fresh CompiledStore (built outside the timed region) decides the whole replay."""
    clock, outputs = Clock(), []
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda compiled: outputs.append(clock(_decide_columns, compiled, columns)),
                       setup=lambda: ((CompiledStore(store),), {}), rounds=3)
    FIGURES["first_pass"] = clock.rates(N)
    benchmark.extra_info.update(FIGURES["first_pass"])
    assert outputs[0][0][:CHECKED] == checked["codes"]


@pytest.mark.benchmark(group="store replay")
def test_replay_columns_second_pass(benchmark, compiled, columns, checked):
    codes, _ = _decide_columns(compiled, columns)  # the first pass of this object
    clock = Clock()
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(clock, args=(_decide_columns, compiled, columns), rounds=5)
    FIGURES["second_pass"] = clock.rates(N)
    benchmark.extra_info.update(FIGURES["second_pass"])
    assert codes[:CHECKED] == checked["codes"]


@pytest.mark.benchmark(group="store replay")
def test_replay_columns_every_key(benchmark, checked):
    """The checked rows with every context key the requests carry (~460 columns a call, most untested)."""
    clock = Clock()
    benchmark.extra_info["checks"] = CHECKED
    benchmark.pedantic(clock, args=(_decide_columns, checked["compiled"], checked["batches"]), rounds=5)
    FIGURES["every_key"] = clock.rates(CHECKED)
    benchmark.extra_info.update(FIGURES["every_key"])


@pytest.fixture(scope="module")
def record_batches(files, compiled):
    return arrow_batches(iter_requests(files[1], N), ARROW_BATCH, frozenset(compiled.key_ids))


@pytest.mark.benchmark(group="store replay")
def test_replay_arrow_first_pass(benchmark, store, record_batches, checked):
    clock, outputs = Clock(), []
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(lambda compiled: outputs.append(clock(_decide_arrow, compiled, record_batches)),
                       setup=lambda: ((CompiledStore(store),), {}), rounds=3)
    FIGURES["arrow_first_pass"] = clock.rates(N)
    benchmark.extra_info.update(FIGURES["arrow_first_pass"])
    assert _arrow_codes(outputs[0])[:CHECKED] == bytes(code % 3 for code in checked["codes"])


@pytest.mark.benchmark(group="store replay")
def test_replay_arrow_second_pass(benchmark, compiled, record_batches):
    _decide_arrow(compiled, record_batches)  # a pass of its own first (the columns' passes shared the object)
    clock = Clock()
    benchmark.extra_info["checks"] = N
    benchmark.pedantic(clock, args=(_decide_arrow, compiled, record_batches), rounds=5)
    FIGURES["arrow_second_pass"] = clock.rates(N)
    benchmark.extra_info.update(FIGURES["arrow_second_pass"])


# --- 4. the reference ------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="store replay")
def test_reference(benchmark, files, store):
    requests = []
    for request in read_requests(files[1], N, every=N // REFERENCE_SAMPLE):
        try:
            requests.append(Request.create(request["principal"], request["action"], request["resource"],
                                           request["context"]))
        except RequestError:
            continue  # a context key given twice: see test_decisions_correct
    clock = Clock()
    benchmark.extra_info["checks"] = len(requests)
    benchmark.pedantic(clock, args=(lambda: [reference_decision(store, request) for request in requests],),
                       rounds=3)
    FIGURES["reference"] = clock.rates(len(requests))
    benchmark.extra_info.update(FIGURES["reference"])


# --- 5. flatness and memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("copies", [1, FLAT_COPIES])
def test_flatness(benchmark, copies):
    """Cost per check as the principals (and their trust policies) are copied into more accounts."""
    benchmark.group = "store flatness"
    snapshot, stream = store_files(StoreOptions(copies=copies, requests=FLAT_N))
    store = PolicyStore.from_json(snapshot.read_bytes())
    compiled = CompiledStore(store)
    batches = column_batches(iter_requests(stream, FLAT_N), CALL, frozenset(compiled.key_ids))
    first, clock = Clock(), Clock()
    first(_decide_columns, compiled, batches)
    benchmark.extra_info.update(checks=FLAT_N, principals=len(store.principals),
                                resource_policies=len(store.resource_policies))
    benchmark.pedantic(clock, args=(_decide_columns, compiled, batches), rounds=5)
    FIGURES[f"flat_{copies}"] = {"principals": len(store.principals), "first_pass": first.rates(FLAT_N),
                                 "second_pass": clock.rates(FLAT_N)}
    benchmark.extra_info.update(FIGURES[f"flat_{copies}"])


@pytest.mark.benchmark(group="store memory")
def test_memory_more_principals(benchmark, files):
    """Fresh processes: the store, and the store plus MORE_PRINCIPALS roles sharing its managed policies."""
    more = with_more_principals(files[0], MORE_PRINCIPALS)
    base = _medians([_fresh_process(files[0]) for _ in range(3)])
    runs: list[dict] = []
    benchmark.pedantic(lambda: runs.append(_fresh_process(more)), rounds=3)
    grown = _medians(runs)
    FIGURES["memory"] = {"base": base, "more": grown}
    benchmark.extra_info.update(base=base, more=grown)
    assert grown["stats"]["principals"] == base["stats"]["principals"] + MORE_PRINCIPALS


# --- 6. the previous main ------------------------------------------------------------------------------------

_PREVIOUS = r"""
import json, sys, time
from pathlib import Path
sys.path.append(sys.argv[4])
from store_workload import column_batches, read_requests
from iam_evaluator.store import CompiledStore, PolicyStore
""" + _LOAD + r"""loaded = time.perf_counter()
compiled = CompiledStore(store)
built = time.perf_counter()
sets = compiled.warm()
warm, warm_cpu, warm_rss = time.perf_counter(), time.process_time(), rss_mb()
batches = column_batches(read_requests(Path(sys.argv[2]), int(sys.argv[3])), 1000, compiled.context_keys)
passes, codes = [], b""
for _ in range(2):
    begin, begin_cpu = time.perf_counter(), time.process_time()
    codes = b"".join(compiled.evaluate_columns(*batch).codes for batch in batches)
    passes.append((time.perf_counter() - begin, time.process_time() - begin_cpu))
print(json.dumps({"evaluator": sys.modules["evaluator"].__file__, "load_s": loaded - start,
                  "compile_s": built - loaded, "warm_s": warm - built, "seconds": warm - start,
                  "cpu_s": warm_cpu - start_cpu, "warm_sets": sets,
                  "rss_mb": warm_rss - start_rss, "process_rss_mb": warm_rss,
                  "peak_rss_mb": status_mb("VmHWM"),
                  "first_pass": {"per_s": len(codes) / passes[0][0], "per_cpu_s": len(codes) / passes[0][1]},
                  "second_pass": {"per_s": len(codes) / passes[1][0], "per_cpu_s": len(codes) / passes[1][1]},
                  "stats": compiled.get_stats(), "codes": codes.hex()}))
"""


@pytest.fixture(scope="module")
def previous_checkout():
    """A worktree of the previous main with its extensions built; removed afterwards."""
    if os.environ.get("IAM_EVAL_BENCH_PREVIOUS", "1") == "0":
        pytest.skip("IAM_EVAL_BENCH_PREVIOUS=0")
    folder = Path(tempfile.mkdtemp(prefix="iam-eval-previous-")) / "checkout"
    added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), PREVIOUS],
                           capture_output=True, text=True)
    if added.returncode:
        folder.parent.rmdir()
        pytest.skip(f"no worktree of {PREVIOUS}: {added.stderr.strip()}")
    try:
        built = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=folder,
                               capture_output=True, text=True)
        if built.returncode:
            pytest.skip(f"{PREVIOUS} does not build: {built.stderr.strip()[-500:]}")
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)
        folder.parent.rmdir()


@pytest.mark.benchmark(group="store previous main")
def test_previous_main(benchmark, files, previous_checkout, checked):
    """The previous main in a fresh process: load, compile and warm (every principal's set), then two
    passes over the first PREVIOUS_N requests; its decisions are compared with this main's (not asserted:
    the rules for principal facts and request text changed since)."""
    runs: list[dict] = []

    def run():
        out = subprocess.run([sys.executable, "-c", _PREVIOUS, str(files[0]), str(files[1]), str(PREVIOUS_N),
                              str(BENCH_DIR)], capture_output=True, text=True, check=True, cwd=previous_checkout,
                             env={**os.environ, "PYTHONPATH": str(previous_checkout)})
        runs.append(json.loads(out.stdout))

    benchmark.pedantic(run, rounds=1)
    figures = runs[0]
    assert Path(figures["evaluator"]).is_relative_to(previous_checkout)
    codes = bytes.fromhex(figures.pop("codes"))
    figures["agree"] = sum(NAMES[a] == NAMES[b] for a, b in zip(codes, checked["codes"], strict=False))
    figures["rows"] = len(codes)
    FIGURES["previous"] = figures
    benchmark.extra_info.update(figures)


# --- the closing table ------------------------------------------------------------------------------------

def _table() -> list[str]:
    """Every target beside this main's figure, the previous main's and the reference's. Rates are checks
    per second of wall-clock time (per CPU second in brackets); whether a target is met is judged by CPU
    time, which other work on the machine disturbs less."""
    f = FIGURES
    load, previous, memory = f.get("load", {}), f.get("previous", {}), f.get("memory", {})
    flat_1, flat_many = f.get("flat_1", {}), f.get(f"flat_{FLAT_COPIES}", {})
    reference = f.get("reference", {})

    def rate(figure):
        return "-" if not figure else f"{figure['per_s']:,.0f} ({figure['per_cpu_s']:,.0f})"

    def cpu(figure):
        return None if not figure else figure["per_cpu_s"]

    def times(a, b, form="{:,.1f}x"):
        return "-" if a is None or b is None or not b else form.format(a / b)

    def met(ok):
        return "-" if ok is None else ("yes" if ok else "NO")

    def at_least(figure, goal):
        return met(None if figure is None else figure >= goal)

    def at_most(figure, goal):
        return met(None if figure is None else figure <= goal)

    first, second = f.get("first_pass"), f.get("second_pass")
    slower = None if not (first and second) else cpu(second) / cpu(first)  # 1st pass time / 2nd pass time
    previous_slower = None if not previous else cpu(previous["second_pass"]) / cpu(previous["first_pass"])
    flat = None if not (flat_1 and flat_many) else cpu(flat_1["second_pass"]) / cpu(flat_many["second_pass"])
    flat_first = None if not (flat_1 and flat_many) else cpu(flat_1["first_pass"]) / cpu(flat_many["first_pass"])
    more = None if not memory else memory["more"]["compile_rss_mb"] - memory["base"]["compile_rss_mb"]
    more_all = None if not memory else memory["more"]["rss_mb"] - memory["base"]["rss_mb"]
    differ = f.get("differ")
    rows = [
        (f"decisions differing from the reference ({f.get('checked_rows', 0):,} rows)", "0",
         "-" if differ is None else f"{differ:,}",
         "-" if not previous else f"{previous['rows'] - previous['agree']:,} of {previous['rows']:,} differ "
                                  "from this main", "-", "-", "-", met(None if differ is None else differ == 0)),
        ("load + compile, s (CPU s)", "< 3",
         "-" if not load else f"{load['seconds']:.2f} ({load['cpu_s']:.2f})",
         "-" if not previous else f"{previous['seconds']:.1f} ({previous['cpu_s']:.1f}) with warm()", "-",
         times(previous.get("cpu_s"), load.get("cpu_s")), "-",
         met(None if not load else load["cpu_s"] < 3)),
        ("load + compile, MB resident (growth)", "< 600", "-" if not load else f"{load['rss_mb']:,.0f}",
         "-" if not previous else f"{previous['rss_mb']:,.0f}", "-", "-", "-",
         met(None if not load else load["rss_mb"] < 600)),
        ("replay 1st pass, checks/s, columns", ">= 500,000", rate(first), rate(previous.get("first_pass")),
         rate(reference), times(cpu(first), cpu(previous.get("first_pass"))), times(cpu(first), cpu(reference)),
         at_least(cpu(first), 500_000)),
        ("replay 2nd pass, checks/s, columns", ">= 500,000", rate(second), rate(previous.get("second_pass")),
         rate(reference), times(cpu(second), cpu(previous.get("second_pass"))), times(cpu(second), cpu(reference)),
         at_least(cpu(second), 500_000)),
        ("1st pass time / 2nd pass time", "<= 1.5", "-" if slower is None else f"{slower:.2f}",
         "-" if previous_slower is None else f"{previous_slower:.2f}", "-", "-", "-", at_most(slower, 1.5)),
        ("replay 1st pass, checks/s, Arrow", "", rate(f.get("arrow_first_pass")), "-", rate(reference), "-",
         times(cpu(f.get("arrow_first_pass")), cpu(reference)), "-"),
        ("replay 2nd pass, checks/s, Arrow", "", rate(f.get("arrow_second_pass")), "-", rate(reference), "-",
         times(cpu(f.get("arrow_second_pass")), cpu(reference)), "-"),
        ("2nd pass, every key the requests carry", "", rate(f.get("every_key")), "-", rate(reference), "-",
         times(cpu(f.get("every_key")), cpu(reference)), "-"),
        ("compiled (2nd pass) / reference", ">= 200x", times(cpu(second), cpu(reference)), "-", rate(reference),
         "-", "-", met(None if not (second and reference) else cpu(second) / cpu(reference) >= 200)),
        (f"cost per check, {flat_many.get('principals', 0):,} / {flat_1.get('principals', 0):,} principals",
         "<= 1.5", "-" if flat is None else f"{flat:.2f}: {rate(flat_1.get('second_pass'))} -> "
                                            f"{rate(flat_many.get('second_pass'))}",
         "-", "-", "-", "-", at_most(flat, 1.5)),
        ("  the same, 1st pass", "", "-" if flat_first is None else f"{flat_first:.2f}: "
         f"{rate(flat_1.get('first_pass'))} -> {rate(flat_many.get('first_pass'))}", "-", "-", "-", "-", "-"),
        (f"+{MORE_PRINCIPALS:,} principals: CompiledStore, MB", "< 50", "-" if more is None else
         f"{more:+.0f} ({memory['base']['compile_rss_mb']:.0f} -> {memory['more']['compile_rss_mb']:.0f})",
         "-", "-", "-", "-", met(None if more is None else more < 50)),
        (f"+{MORE_PRINCIPALS:,} principals: store and CompiledStore, MB", "",
         "-" if more_all is None else f"{more_all:+.0f}", "-", "-", "-", "-", "-"),
    ]
    header = ("target", "goal", "this main", f"previous main ({PREVIOUS})", "reference", "this / previous",
              "this / reference", "met (CPU)")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]


class _Report:
    def pytest_terminal_summary(self, terminalreporter):
        if not FIGURES:
            return
        terminalreporter.write_sep("-", f"issue 10: one compiled store ({N:,} requests, "
                                        f"{150 * OPTIONS.copies:,} principals); rates: checks/s (per CPU s)")
        for line in _table():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def closing_table(request):
    if not request.config.pluginmanager.has_plugin("store-bench-table"):
        request.config.pluginmanager.register(_Report(), "store-bench-table")
