"""The last step of scripts/gpu_check.sh: gather the benchmark results into OUTDIR and print a one-screen summary
(also written to OUTDIR/summary.md). Needs no torch.

    python scripts/gpu_check_summary.py OUTDIR SCRATCH DRY_RUN
"""
import glob
import json
import os
import re
import sys

MAX_FILES = 8  # the device returns no more


def read(path, default=""):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default


def gather_benchmarks(out, scratch):
    """benchmarks.md (every table, then the tail of the log) and benchmarks.json ({name: results}) in OUTDIR."""
    bench = os.path.join(scratch, "bench")
    tables = [read(p) for p in sorted(glob.glob(os.path.join(bench, "*.md")))]
    log = read(os.path.join(scratch, "bench.log")).splitlines()
    with open(os.path.join(out, "benchmarks.md"), "w") as f:
        f.write("\n\n".join(tables) if tables else "no benchmark results\n")
        f.write("\n\n## Benchmark log (last 80 lines)\n\n```\n" + "\n".join(log[-80:]) + "\n```\n")
    results = {}
    for p in sorted(glob.glob(os.path.join(bench, "*.json"))):
        try:
            results[os.path.splitext(os.path.basename(p))[0]] = json.loads(read(p))
        except json.JSONDecodeError:
            pass
    with open(os.path.join(out, "benchmarks.json"), "w") as f:
        json.dump(results, f, indent=0)
    return results


def step_lines(scratch):
    rows = [line.split("\t") for line in read(os.path.join(scratch, "steps.tsv")).splitlines() if line.strip()]
    return [f"  {name:<13} {state:<8} {int(secs):>4} s  {detail}" for name, state, secs, detail in rows], rows


def correctness_lines(scratch):
    try:
        rows = json.loads(read(os.path.join(scratch, "correctness.json"), "[]"))
    except json.JSONDecodeError:
        rows = []
    if not rows:
        return ["  no results (see correctness.md)"]
    count = lambda s: sum(r["status"] == s for r in rows)  # noqa: E731
    lines = [f"  {len(rows)} cases: {count('PASS')} pass, {count('FAIL')} fail, {count('MISSING')} missing "
             f"kernel, {count('NOT RUN')} not run"]
    groups = {}
    for r in rows:
        key = (r["op"], r["backend"])
        groups.setdefault(key, []).append(r)
    for (op, backend), rs in groups.items():
        states = {s: sum(r["status"] == s for r in rs) for s in ("PASS", "FAIL", "MISSING", "NOT RUN")}
        worst = max((r.get("max_err") or 0.0 for r in rs if r["status"] == "PASS"), default=None)
        text = ", ".join(f"{n} {s.lower()}" for s, n in states.items() if n)
        lines.append(f"    {op:<20} {backend:<7} {text}" + (f" (worst passing err {worst:.1e})" if worst else ""))
    fails = [r for r in rows if r["status"] == "FAIL"]
    for r in fails[:6]:
        lines.append(f"    FAIL {r['op']} {r['backend']} {r['dtype']} {r['label']}: {(r.get('error') or '')[:110]}")
    if len(fails) > 6:
        lines.append(f"    ... {len(fails) - 6} more failures in correctness.md")
    return lines


def tests_lines(out):
    log = read(os.path.join(out, "tests.log"))
    final = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    failed = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))]
    lines = [f"  {final[-1].strip('= ')}" if final else "  no pytest summary line (see tests.log)"]
    lines += [f"    {line[:130]}" for line in failed[:6]]
    if len(failed) > 6:
        lines.append(f"    ... {len(failed) - 6} more in tests.log")
    return lines


def bench_lines(results):
    """Per benchmark, per case: the best fused row against the official row (the model: ours against official)."""
    lines = []
    for name, data in results.items():
        rows = data.get("results", [])
        lines.append(f"  {name} on {data.get('environment', {}).get('device', '?')}:")
        cases = {}
        model = name.startswith("bench_model")
        for r in rows:
            key = (r["model"], r["input"], r["precision"], r["mode"]) if model else (r["shape"], r["dtype"], r["mode"])
            cases.setdefault(key, []).append(r)
        for key, rs in list(cases.items())[:8]:
            lines.append(model_line(key, rs) if model else kernel_line(key, rs))
        if len(cases) > 8:
            lines.append(f"    ... {len(cases) - 8} more cases in benchmarks.md")
    return lines or ["  no benchmark results"]


def kernel_line(key, rs):
    shape, dtype, mode = key
    t = lambda r: r.get("kernel_ms") or r["median_ms"]  # noqa: E731
    fused = [r for r in rs if r["impl"].startswith("fused") and r.get("median_ms")]
    base = next((r for r in rs if r.get("speedup_vs_official") == 1.0), None)
    if not fused:
        return f"    {shape[:40]:<40} {dtype:<8} {mode:<7} no fused result"
    best = min(fused, key=t)
    floor = f" {best['x_floor']:.1f}x floor" if best.get("x_floor") else ""
    launches = f" {best['launches']:.0f} launches" if best.get("launches") is not None else ""
    vs = f" {best['speedup_vs_official']:.2f}x official" if best.get("speedup_vs_official") else ""
    return (f"    {shape[:40]:<40} {dtype:<8} {mode:<7} {best['impl']}: {t(best):.3g} ms"
            f"{vs}{floor}{launches}" + ("" if base else " (no official row)"))


def model_line(key, rs):
    """Ours (eager, and compiled when measured) against the official model: images/s, kernel time, memory; the
    ratios are speedups over official eager (memory: ours over official)."""
    model, size, precision, mode = key
    head = f"    {model} {size} {precision} {mode}"
    parts = []
    for r in rs:
        if r["impl"].startswith("official") and r["impl"] != "official":
            continue
        if not r.get("images_per_s"):
            parts.append(f"{r['impl']}: {(r.get('error') or 'no result')[:60]}")
            continue
        text = f"{r['impl']} {r['images_per_s']:.4g} img/s"
        if r["impl"] != "official":
            ratios = (("vs_official", ""), ("vs_official_compile", " vs compiled"))
            text += "".join(f" {r[c]:.2f}x{label}" for c, label in ratios if r.get(c))
        if r.get("kernel_ms"):
            ours = r.get("kernel_vs_official") and r["impl"] != "official"
            ratio = f" {r['kernel_vs_official']:.2f}x" if ours else ""
            text += f", kernel {r['kernel_ms']:.3g} ms{ratio} ({r['launches']:.0f} launches)"
        if r.get("mem_vs_official") and r["impl"] != "official":
            text += f", memory {r['mem_vs_official']:.2f}x"
        parts.append(text)
    return head + ": " + "; ".join(parts)


def sanitizer_lines(out):
    log = read(os.path.join(out, "sanitizer.log"))
    if not log:
        return ["  not run"]
    m = re.findall(r"ERROR SUMMARY: (\d+) error", log)
    return [f"  memcheck: {m[-1]} errors" if m else "  memcheck: no ERROR SUMMARY line (see sanitizer.log)"]


def main():
    out, scratch, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    results = gather_benchmarks(out, scratch)
    steps, rows = step_lines(scratch)
    env = read(os.path.join(out, "build.log")).splitlines()[:4]
    lines = ["# gpu_check summary" + (" (CPU dry run)" if dry else ""), "", *[f"  {e[:130]}" for e in env], "",
             "steps:", *steps, "", "correctness (correctness.md):", *correctness_lines(scratch), "",
             "tests (tests.log):", *tests_lines(out), "", "benchmarks (benchmarks.md, GPU kernel time where shown):",
             *bench_lines(results), "", "sanitizer (sanitizer.log):", *sanitizer_lines(out)]
    files = sorted(os.listdir(out))
    if len(files) + (0 if "summary.md" in files else 1) > MAX_FILES:
        lines.append(f"WARNING: {len(files) + 1} files in OUTDIR: the device returns only {MAX_FILES}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("```\n" + text + "```\n")
    print(text, end="")
    sys.exit(1 if any(r[1] in ("FAIL", "TIMEOUT") for r in rows) else 0)


if __name__ == "__main__":
    main()
