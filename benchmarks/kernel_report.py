"""Static kernel report: what the compilers make of every kernel for sm_90, without a GPU.

    python benchmarks/kernel_report.py                 # writes benchmarks/results/kernel_report.md
    python benchmarks/kernel_report.py --no-cuda       # Triton kernels only

Triton: every launch of every Triton custom op, forward and backward, at the TransXNet-T and -S shapes (batch 128)
and the detection-size attention, recorded on meta tensors (benchmarks/_triton_launches.py) and compiled for sm_90
as launched (constexprs, num_warps, divisibility of the arguments, fp32 float scalars as eager Triton passes them).
CUDA: each csrc/*/*_cuda.cu compiled for sm_90 with `-Xptxas -v` and the build's flags.
For each kernel: registers per thread, spills (local memory), shared memory, and the occupancy these allow on an
H100/H200 SM (65536 registers, 228 KB shared memory with 1 KB reserved per block, 64 warps, 32 blocks); for Triton
also the programs launched at that shape and the waves they make on 132 SMs. Unmeasured on a GPU: these are the
compilers' figures, the evidence of kernel quality when no GPU is lent.
"""
import argparse
import datetime
import glob
import math
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: compile, do not interpret

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _triton_launches as L  # noqa: E402

ROOT = L.ROOT
RESULTS = os.path.join(ROOT, "benchmarks", "results", "kernel_report.md")

# Hopper (H100 / H200) SM limits
SM_COUNT, SM_REGS, SM_SMEM, SMEM_RESERVED, SM_WARPS, SM_BLOCKS = 132, 65536, 228 * 1024, 1024, 64, 32
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256 (8 per thread)
NVCC_FLAGS = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-std=c++17"]  # as setup.py, no torch headers


def occupancy(regs, smem, warps):
    """(resident blocks per SM, occupancy in % of 64 warps, limiting resource)."""
    regs_per_warp = math.ceil(regs * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    limits = {"registers": SM_REGS // (regs_per_warp * warps) if regs else SM_BLOCKS,
              "shared memory": SM_SMEM // (smem + SMEM_RESERVED),
              "warps": SM_WARPS // warps, "blocks": SM_BLOCKS}
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "blocks"))
    return blocks, 100.0 * blocks * warps / SM_WARPS, limiter


# ----------------------------------------------------------------------------- Triton
def triton_rows(models, dtypes):
    """Rows per launch. The whole-model cases come last and keep only launches no per-op case showed (same kernel,
    config and grid): they add what the model calls that has no input builder, without repeating every stage."""
    records, problems = L.record_all(models, dtypes)
    records.sort(key=lambda r: r["label"].startswith(L.MODEL_LABEL))  # stable: per-op cases first
    compiled_by_key, rows, shown = {}, [], set()
    for record in records:
        try:
            cases = L.compile_cases(record, ("fp32",))
        except Exception as exc:
            problems.append(f"{record['label']} {record['dtype']}: {type(exc).__name__}: {exc}")
            continue
        for case in cases:
            key = L.case_key(case, 90)
            if key not in compiled_by_key:
                kernel, error = L.compile_case(case, 90)
                usage = L.resource_usage(kernel) if kernel is not None else None
                compiled_by_key[key] = (kernel, error, usage)
            kernel, error, usage = compiled_by_key[key]
            seen = (record["op"], record["phase"], case["programs"], L.case_key(case, 90, with_attrs=False))
            if record["label"].startswith(L.MODEL_LABEL) and seen in shown:
                continue
            shown.add(seen)
            row = dict(op=record["op"], label=record["label"], dtype=record["dtype"], kernel=case["name"],
                       phase=record["phase"], config=_config_text(case), programs=case["programs"], error=error)
            if kernel is not None:
                warps = kernel.metadata.num_warps
                shared = kernel.metadata.shared + (usage["static_shared"] if usage else 0)
                row.update(warps=warps, stages=kernel.metadata.num_stages, shared=shared)
                if usage:
                    b, occ, limiter = occupancy(usage["regs"], shared, warps)
                    row.update(regs=usage["regs"], local=usage["local"], blocks=b, occ=occ, limiter=limiter,
                               waves=case["programs"] / (SM_COUNT * b) if b else None)
            rows.append(row)
    return rows, problems, L.never_launched(records), len(compiled_by_key)


def _config_text(case):
    """The constexprs of a launch, compactly: True flags by name, False / None flags and dtype flags left out."""
    names, parts = case["fn"].arg_names, []
    for (index,), value in sorted(case["constexprs"].items()):
        name = names[index]
        if value is True:
            parts.append(name)
        elif value not in (False, None) and not name.startswith("IS_"):
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def triton_markdown(rows, problems, dead, n_compiles):
    out = [f"## Triton kernels (sm_90, {n_compiles} distinct compiles)", "",
           "Per launch at each shape: the config (block constexprs), warps, pipeline stages, registers per thread, "
           "local memory per thread (spills; 0 is the target), shared memory per program, resident programs per SM "
           "and occupancy (the limiting resource), the programs launched and the waves they make on 132 SMs.", ""]
    header = ("| shape | dtype | pass | kernel | constexprs | warps | stages | regs | spill B | smem KB | "
              "programs/SM | occupancy | programs | waves |")
    for op in dict.fromkeys(r["op"] for r in rows):
        out += [f"### {op}", "", header, "|" + "---|" * 14]
        for r in (r for r in rows if r["op"] == op):
            if r["error"]:
                out.append(f"| {r['label']} | {r['dtype']} | {r['phase']} | `{r['kernel']}` | {r['config']} | "
                           f"compile failed: {r['error'][:200].replace('|', '/')} |" + " |" * 8)
                continue
            regs = r.get("regs")
            out.append("| " + " | ".join([
                r["label"], r["dtype"], r["phase"], f"`{r['kernel']}`", r["config"], str(r["warps"]), str(r["stages"]),
                str(regs) if regs is not None else "?",
                ("**%d**" % r["local"] if r["local"] else "0") if regs is not None else "?",
                f"{r['shared'] / 1024:.1f}",
                str(r["blocks"]) if regs is not None else "?",
                f"{r['occ']:.0f}% ({r['limiter']})" if regs is not None else "?",
                str(r["programs"]), f"{r['waves']:.2f}" if r.get("waves") is not None else "?"]) + " |")
        out.append("")
    spilled = sorted({r["kernel"] for r in rows if r.get("local")})
    failed = sorted({f"{r['kernel']} ({r['label']} {r['dtype']})" for r in rows if r["error"]})
    out += ["Summary: " + (f"spills in {', '.join(spilled)}" if spilled else "no kernel spills") + "; "
            + (f"{len(failed)} launches failed to compile: {', '.join(failed[:10])}" if failed
               else "every launch compiled") + ".", ""]
    out += [f"- problem: {p}" for p in problems] + [f"- never launched: `{d}`" for d in dead]
    return out


# ----------------------------------------------------------------------------- CUDA
def start_cuda_compiles(arch="sm_90"):
    """Start `nvcc -Xptxas -v` on every csrc/*/*_cuda.cu (in parallel with the Triton work); -> [(file, Popen)]."""
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return None
    procs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cuda.cu"))):
        out = tempfile.NamedTemporaryFile(suffix=".o", delete=False).name
        cmd = [nvcc, f"-arch={arch}", "-Xptxas", "-v", *NVCC_FLAGS, "-I", os.path.join(ROOT, "csrc"), "-c", path,
               "-o", out]
        procs.append((os.path.relpath(path, ROOT), out, time.time(), subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    return procs


def parse_ptxas(text):
    """Per entry function: registers, stack, spill stores/loads, shared and constant memory (from ptxas -v)."""
    kernels, current = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\w+)'", line)
        if m:
            current = dict(mangled=m.group(1), regs=None, stack=0, spill_st=0, spill_ld=0, smem=0)
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    names = _demangle([k["mangled"] for k in kernels])
    for k, name in zip(kernels, names):
        k["name"] = name
    return kernels


def _demangle(symbols):
    if not symbols:
        return []
    try:
        out = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True).stdout.split("\n")
        return [o or s for o, s in zip(out, symbols)]
    except FileNotFoundError:
        return symbols


def _short(name, width=110):
    """A demangled kernel name without namespaces, return type and parameter list."""
    name = name.replace("(anonymous namespace)::", "").replace("transxnet_ops::", "")
    if name.endswith(")"):  # drop the parameter list: the balanced (...) group at the end
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def cuda_markdown(procs, timeout):
    out = ["## CUDA kernels (sm_90, `nvcc -Xptxas -v " + " ".join(NVCC_FLAGS) + "`)", ""]
    if procs is None:
        return out + ["nvcc not found: skipped.", ""]
    out += ["Occupancy here is the register limit alone (warps per SM the registers allow, for any block size "
            "that divides them): the block size and dynamic shared memory are chosen at launch.", "",
            "| file | kernel | regs | stack B | spill stores / loads B | static smem B | warps/SM by regs |",
            "|---|---|---|---|---|---|---|"]
    for rel, obj, started, proc in procs:
        try:
            log, _ = proc.communicate(timeout=max(1, timeout - (time.time() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out.append(f"| `{rel}` | not compiled within {timeout} s | | | | | |")
            continue
        finally:
            if os.path.exists(obj):
                os.unlink(obj)
        if proc.returncode != 0:
            out.append(f"| `{rel}` | nvcc failed: {log.strip().splitlines()[-1][:200] if log.strip() else ''} "
                       "| | | | | |")
            continue
        kernels = parse_ptxas(log)
        if not kernels:
            out.append(f"| `{rel}` | *no kernel of its own (launches kernels defined in another unit)* | | | | | |")
        for k in kernels:
            warps = min(SM_WARPS, SM_REGS // (math.ceil(k["regs"] * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT)) \
                if k["regs"] else SM_WARPS
            spill = f"{k['spill_st']} / {k['spill_ld']}"
            if k["spill_st"] or k["spill_ld"]:
                spill = f"**{spill}**"
            out.append(f"| `{rel}` | `{_short(k['name'])}` | {k['regs']} | {k['stack']} | {spill} | {k['smem']} | "
                       f"{warps} ({100 * warps / SM_WARPS:.0f}%) |")
    return out + [""]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--shapes", default="transxnet", help=f"comma list of {sorted(L.SHAPE_SETS)}")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels")
    p.add_argument("--cuda-timeout", type=float, default=900, help="seconds allowed per .cu file")
    args = p.parse_args()
    start = time.time()
    procs = None if args.no_cuda else start_cuda_compiles()
    rows, problems, dead, n = triton_rows(args.shapes.split(","), args.dtypes.split(","))
    import triton

    nvcc_version = ""
    try:
        nvcc_version = subprocess.run([os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"),
                                       "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except (FileNotFoundError, IndexError):
        pass
    lines = ["# Static kernel report (sm_90)", "",
             f"Generated by `python benchmarks/kernel_report.py` on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: Triton {triton.__version__}, "
             f"{nvcc_version or 'nvcc not found'}. Compiled without a GPU: **unmeasured on GPU**; these are the "
             "compilers' figures. Limits used: 132 SMs, per SM 65536 registers, 228 KB shared memory (1 KB "
             "reserved per block), 64 warps, 32 blocks.", ""]
    lines += triton_markdown(rows, problems, dead, n)
    lines += [] if args.no_cuda else cuda_markdown(procs, args.cuda_timeout)
    lines.append(f"Report generated in {time.time() - start:.0f} s.")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-12:]))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
