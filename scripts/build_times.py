"""Measure the extension build, per translation unit: wall and CPU seconds of every compile, and the whole build.

    python scripts/build_times.py                      # TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=2
    python scripts/build_times.py --arch "8.0;9.0"     # the default arch list
    python scripts/build_times.py --arch 9.0 --arch "8.0;9.0" --md build_times.md

Builds a copy of the sources in a temporary folder (the checkout is not touched) with `setup.py build_ext
--inplace`, the C++ compiler and nvcc wrapped so that each compile logs its wall time and its CPU time (user + sys
of the compiler and everything it spawns: cicc, ptxas, ...). On a shared machine wall times grow with the load;
CPU times hardly do, so the table also gives the time the build would take on `--jobs` idle cores (the longest-first
schedule of the CPU times, plus the link).
"""
import argparse
import glob
import heapq
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["setup.py", "pyproject.toml", "README.md", "csrc", "transxnet_ops"]


def _exec_timed(log, cmd):
    """Wrapper mode: run one compiler command, append {source, wall, cpu} to `log`, exit with its status."""
    start = time.perf_counter()
    status = subprocess.call(cmd)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    source = next((a for a in cmd if a.endswith((".cpp", ".cu", ".cc"))), None)
    if source is not None:  # not the compiler probes (`c++ -v`) torch runs first
        with open(log, "a") as f:
            f.write(json.dumps({"source": source, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime}) + "\n")
    sys.exit(status)


def _wrapper(folder, name, real, log):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" --exec "{log}" "{real}" "$@"\n')
    os.chmod(path, 0o755)
    return path


def makespan(cpu_times, jobs):
    """Longest-first list schedule of the compiles on `jobs` cores (what ninja does, up to the order)."""
    cores = [0.0] * jobs
    for t in sorted(cpu_times, reverse=True):
        heapq.heappush(cores, heapq.heappop(cores) + t)
    return max(cores) if cpu_times else 0.0


def measure(arch, jobs, extra_env):
    with tempfile.TemporaryDirectory(prefix="transxnet-build-") as tmp:
        for name in SOURCES:
            src, dst = os.path.join(ROOT, name), os.path.join(tmp, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
            elif os.path.exists(src):
                shutil.copy(src, dst)
        log = os.path.join(tmp, "compiles.jsonl")
        cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else "")
        nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc") or "nvcc"
        env = dict(os.environ, MAX_JOBS=str(jobs), TORCH_CUDA_ARCH_LIST=arch, **extra_env,
                   CXX=_wrapper(tmp, "timed-g++", os.environ.get("CXX", "c++"), log),  # the name passes torch's check
                   PYTORCH_NVCC=_wrapper(tmp, "timed-nvcc", nvcc, log), TORCH_NO_COMPILER_WRAPPER="1")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"build failed (arch {arch}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        compiles = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
        for c in compiles:
            c["source"] = os.path.relpath(c["source"], tmp) if os.path.isabs(c["source"]) else c["source"]
        built = glob.glob(os.path.join(tmp, "transxnet_ops", "_C*.so"))
        return dict(arch=arch, jobs=jobs, wall=wall, load_before=load, load_after=os.getloadavg()[0],
                    compiles=sorted(compiles, key=lambda c: -c["cpu"]), built=bool(built),
                    idle_estimate=makespan([c["cpu"] for c in compiles], jobs))


def markdown(results):
    archs = [r["arch"] for r in results]
    sources = sorted({c["source"] for r in results for c in r["compiles"]})
    lines = ["| translation unit | " + " | ".join(f"TORCH_CUDA_ARCH_LIST={a}: CPU s (wall s)" for a in archs) + " |",
             "|---|" + "---|" * len(archs)]
    for s in sources:
        cells = []
        for r in results:
            c = next((c for c in r["compiles"] if c["source"] == s), None)
            cells.append(f"{c['cpu']:.1f} ({c['wall']:.1f})" if c else "")
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    lines.append("| **all compiles, CPU s** | " + " | ".join(f"{sum(c['cpu'] for c in r['compiles']):.0f}"
                                                        for r in results) + " |")
    lines.append(f"| **build on {results[0]['jobs']} idle cores (longest-first schedule of the CPU times)** | "
                 + " | ".join(f"{r['idle_estimate']:.0f}" for r in results) + " |")
    lines.append("| **measured build wall s (load average before / after)** | "
                 + " | ".join(f"{r['wall']:.0f} ({r['load_before']:.1f} / {r['load_after']:.1f})" for r in results)
                 + " |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--exec":
        _exec_timed(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", help="TORCH_CUDA_ARCH_LIST value(s) (default 9.0)")
    p.add_argument("--jobs", type=int, default=2, help="MAX_JOBS (default 2)")
    p.add_argument("--md", help="also write the markdown table to this file")
    p.add_argument("--json", help="also write the raw measurements to this file")
    args = p.parse_args()
    results = [measure(a, args.jobs, {}) for a in (args.arch or ["9.0"])]
    table = markdown(results)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
