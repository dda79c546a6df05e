"""scripts/gpu_check.sh without a GPU: its --cpu-dry-run runs every step the machine allows (CPU backends, tiny
shapes, a test subset, smoke benchmarks), and its budget, file limit, isolation and summary work as on a GPU.
~70 s on an idle 2-core machine (most of it the dry run)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STEPS = ["build", "correctness", "tests", "bench_idconv", "bench_osra", "bench_model", "memcheck"]


def _run(args, env=None, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    env.pop("TRITON_INTERPRET", None)  # the harness decides per step
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _summary_steps(stdout):
    """{step: (state, detail)} from the printed summary."""
    steps = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in STEPS and parts[1] in ("PASS", "FAIL", "TIMEOUT", "SKIPPED"):
            steps[parts[0]] = (parts[1], line)
    return steps


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    run = _run(["bash", SCRIPT, "--cpu-dry-run", str(out), "400"])
    return run, out


def test_dry_run_passes_and_prints_the_summary_last(dry_run):
    run, out = dry_run
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# gpu_check summary (CPU dry run)" in run.stdout
    assert run.stdout.rstrip().splitlines()[-1].strip().startswith(("memcheck", "not run")), run.stdout[-800:]
    steps = _summary_steps(run.stdout)
    assert set(steps) == set(STEPS), steps
    for name in ("build", "correctness", "tests", "bench_idconv", "bench_osra", "bench_model"):
        assert steps[name][0] == "PASS", steps[name]
    assert steps["memcheck"][0] == "SKIPPED" and "dry run" in steps["memcheck"][1], steps["memcheck"]
    for mode in ("inference", "train"):  # the model's summary line: ours against the official restatement
        assert re.search(rf"TransXNet-T \S+ fp32 {mode}: official [\d.]+ img/s; ours [\d.]+ img/s [\d.]+x",
                         run.stdout), run.stdout[-3000:]


def test_dry_run_writes_at_most_eight_flat_files(dry_run):
    _, out = dry_run
    entries = sorted(os.listdir(out))
    assert len(entries) <= 8, entries
    assert all(os.path.isfile(os.path.join(out, e)) for e in entries), entries
    for name in ("summary.md", "build.log", "correctness.md", "tests.log", "benchmarks.md", "benchmarks.json"):
        assert name in entries, entries


def test_dry_run_checks_ops_and_benchmarks(dry_run):
    _, out = dry_run
    table = (out / "correctness.md").read_text()
    assert "| PASS |" in table and "| FAIL |" not in table, table[:3000]
    for op in ("idconv", "dwconv2d", "multiscale_dwconv2d", "osra_attention"):
        assert f"| {op} | cpu | fp32 |" in table, op
    bench = json.loads((out / "benchmarks.json").read_text())
    assert set(bench) == {"bench_idconv_cpu", "bench_osra_cpu", "bench_model_cpu"}, list(bench)
    model = bench.pop("bench_model_cpu")["results"]  # official restatement vs ours, eager, both modes
    assert {(r["impl"], r["mode"]) for r in model} == {(i, m) for i in ("official", "ours")
                                                       for m in ("inference", "train")}, model
    assert all(r["images_per_s"] > 0 and not r.get("error") for r in model), model
    for name, data in bench.items():
        rows = data["results"]
        assert rows and all(r["median_ms"] > 0 for r in rows), name
        assert any(r["impl"].startswith("fused-cpu") for r in rows), name
        assert all(r["floor_ms"] > 0 for r in rows if r.get("part", "core") == "core"), name


def test_budget_bounds_every_step(tmp_path):
    """With no time left, every step is skipped with the reason, and the summary still prints."""
    run = _run(["bash", SCRIPT, "--cpu-dry-run", str(tmp_path), "10"], timeout=300)
    steps = _summary_steps(run.stdout)
    assert set(steps) == set(STEPS), run.stdout + run.stderr
    for name in ("build", "correctness", "tests", "bench_idconv", "bench_osra", "bench_model"):
        assert steps[name][0] == "SKIPPED" and "no time left" in steps[name][1], steps[name]


def test_a_crashing_case_is_listed_and_the_rest_still_run(tmp_path):
    out = tmp_path / "correctness.json"
    run = _run([sys.executable, "scripts/gpu_correctness.py", "--device", "cpu", "--shapes", "tiny", "--backends",
                "cpu", "--dtypes", "fp32", "--json", str(out)], env={"TRANSXNET_CHECK_INJECT": "crash:odd K=3"})
    assert run.returncode == 1, run.stdout + run.stderr
    rows = json.loads(out.read_text())
    crashed = [r for r in rows if r["label"] == "odd K=3"]
    assert len(crashed) == 1 and crashed[0]["status"] == "FAIL" and "process died" in crashed[0]["error"], crashed
    rest = [r for r in rows if r["label"] != "odd K=3"]
    assert rest and all(r["status"] == "PASS" for r in rest), rest


def test_kernel_time_splits_calls_at_the_marker_kernels():
    """benchmarks/_timing.split_calls: the profiler's device ops of `reps` calls, marker kernels between them."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import _timing

    marker = "void at::cuda::(anonymous namespace)::spin_kernel(long)"
    ops, t = [(marker, 0.0, 1.0)], 10.0
    for call in range(5):  # call i: a forward kernel, a memset, a backward kernel of (i + 1) us each
        for name in ("fwd_kernel", "Memset (Device)", "bwd_kernel"):
            ops.append((name, t, call + 1.0))
            t += 10
        ops.append((marker, t, 1.0))
        t += 10
    ops.reverse()  # the profiler's order is not the timeline's
    got = _timing.split_calls(ops, reps=5)
    assert got["launches"] == 3
    assert abs(got["kernel_ms"] - 9e-3) < 1e-12  # median call: 3 ops of 3 us
    assert got["kernel_p20_ms"] < got["kernel_ms"] < got["kernel_p80_ms"]
    fallback = _timing.split_calls([op for op in ops if op[0] != marker], reps=5)
    assert fallback["launches"] == 3 and "mean" in fallback["kernel_note"]
