"""Build the CUDA-on-CPU emulator extension: the project's CUDA kernels and bindings, compiled by g++ for the CPU.

    lib = build()          # compiles (cached under build/cuda_emu/) and loads; torch.ops.transxnet_ops_emu.*

Steps: csrc/ is mirrored into build/cuda_emu/src/ with every CUDA source rewritten for the emulator (kernel
launches become calls of txn_emu::launch, `__shared__` declarations become poisoned statics, `extern __shared__`
arrays become the launch's dynamic shared memory; `#line` keeps diagnostics pointing at csrc/), the op schemas are
read from csrc/ops.cpp, and every csrc/*/*_cuda.cu, csrc/*/*_cuda_bind.cpp and the emulator's own sources are
compiled with torch.utils.cpp_extension.load (ninja: only what changed is rebuilt). An op family whose CUDA
binding is absent from csrc is not registered (see `EmuLibrary.missing`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU_DIR = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
LIB_NAME = "transxnet_ops_emu"

# op family -> (the CUDA entry points its registration needs, the TRANSXNET_REGISTER_* macro of csrc/op_impls.h)
FAMILIES = {
    "idconv": ("idconv_forward_cuda", "idconv_backward_cuda"),
    "osra_attention": ("osra_attention_forward_cuda", "osra_attention_backward_cuda"),
    "dwconv2d": ("dwconv2d_forward_cuda", "dwconv2d_backward_cuda"),
    # osra_reduce and idconv_weights: one registration macro (TRANSXNET_REGISTER_REDUCE)
    "reduce": ("osra_reduce_forward_cuda", "osra_reduce_backward_cuda", "idconv_weights_forward_cuda",
               "idconv_weights_backward_cuda"),
}
FAMILY_MACROS = {"idconv": "TXN_EMU_HAS_IDCONV", "osra_attention": "TXN_EMU_HAS_OSRA", "dwconv2d": "TXN_EMU_HAS_DWCONV",
                 "reduce": "TXN_EMU_HAS_REDUCE"}
SOURCE_SUFFIXES = (".h", ".hpp", ".cuh", ".cu", ".cpp", ".inc", ".inl")


@dataclasses.dataclass
class EmuLibrary:
    path: str
    families: list[str]  # op families registered with a CUDA implementation
    missing: dict[str, str]  # op family -> why it is not registered
    kernel_sources: list[str]  # the csrc CUDA sources compiled in
    build_seconds: float


# ------------------------------------------------------------------------------------------ source rewriting
def mask_code(text: str) -> str:
    """Same length as text, with comments, string and character literals blanked (newlines kept)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            for k in range(i + 1, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c in "\"'":
            # a ' between digits is a C++14 digit separator, not a character literal
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _directive_spans(masked: str) -> list[tuple[int, int]]:
    """[start, end) of every preprocessor directive (with its continuation lines)."""
    spans = []
    for m in re.finditer(r"(?m)^[ \t]*#", masked):
        end = m.start()
        while True:
            nl = masked.find("\n", end)
            if nl < 0:
                end = len(masked)
                break
            if masked[nl - 1] == "\\":
                end = nl + 1
                continue
            end = nl
            break
        spans.append((m.start(), end))
    return spans


def _inside(spans, pos):
    return any(a <= pos < b for a, b in spans)


def _match_forward(masked: str, i: int, open_c: str, close_c: str) -> int:
    """Index just past the bracket closing the one at masked[i]."""
    depth = 0
    for j in range(i, len(masked)):
        if masked[j] == open_c:
            depth += 1
        elif masked[j] == close_c:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced brackets")


def _kernel_start(masked: str, i: int) -> int:
    """Start of the kernel expression `name<targs>` that ends right before masked[i]."""
    j = i
    while j > 0 and masked[j - 1].isspace():
        j -= 1
    if masked[j - 1] == ">":
        depth, paren = 0, 0
        k = j - 1
        while k >= 0:
            c = masked[k]
            if c == ")":
                paren += 1
            elif c == "(":
                paren -= 1
            elif paren == 0 and c == ">":
                depth += 1
            elif paren == 0 and c == "<":
                depth -= 1
                if depth == 0:
                    break
            k -= 1
        j = k
        while j > 0 and masked[j - 1].isspace():
            j -= 1
    while j > 0 and (masked[j - 1].isalnum() or masked[j - 1] in "_:"):
        j -= 1
    return j


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    parts, depth, angle, cur = [], 0, 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c == "<":
            angle += 1
        elif depth == 0 and c == ">" and angle > 0:
            angle -= 1
        if c == sep and depth == 0 and angle == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _declarator_name(decl: str) -> str:
    head = decl.split("=", 1)[0]
    bracket = head.find("[")
    if bracket >= 0:
        head = head[:bracket]
    names = re.findall(r"[A-Za-z_]\w*", head)
    if not names:
        raise ValueError(f"cannot find the name in __shared__ declaration {decl!r}")
    return names[-1]


def rewrite_cuda_source(text: str, origin: str) -> str:
    """Rewrite kernel launches and shared-memory declarations for the emulator; line numbers are preserved."""
    masked = mask_code(text)
    directives = _directive_spans(masked)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)

    def keep_lines(original: str, replacement: str, in_directive: bool) -> str:
        newlines = original.count("\n")
        return replacement + (" \\\n" if in_directive else "\n") * newlines

    # kernel<targs><<<grid, block, smem, stream>>>(args);
    for m in re.finditer(r"<<<", masked):
        i = m.start()
        start = _kernel_start(masked, i)
        cfg_end = masked.find(">>>", i + 3)
        depth = 0
        j = i + 3
        while j < len(masked):
            if masked[j] in "([{":
                depth += 1
            elif masked[j] in ")]}":
                depth -= 1
            elif depth == 0 and masked.startswith(">>>", j):
                cfg_end = j
                break
            j += 1
        p = cfg_end + 3
        while masked[p].isspace():
            p += 1
        if masked[p] != "(":
            raise ValueError(f"{origin}: cannot parse the kernel launch at offset {i}")
        args_end = _match_forward(masked, p, "(", ")")
        kernel = text[start:i].strip()
        name = " ".join(kernel.split()).replace("\\", "\\\\").replace('"', '\\"')
        config = text[i + 3:cfg_end].strip()
        args = text[p + 1:args_end - 1].strip()
        call = (f'::txn_emu::launch("{name}", __FILE__, __LINE__, {kernel}, ::txn_emu::make_config({config})'
                + (f", {args})" if args else ")"))
        # the kept pieces carry their own newlines; re-add only those of the dropped text
        dropped = text[start:args_end].count("\n") - call.count("\n")
        edits.append((start, args_end, call + (" \\\n" if _inside(directives, i) else "\n") * dropped))

    # extern __shared__ T name[];  ->  T* name = ::txn_emu::dynamic_smem<T>();
    for m in re.finditer(r"\bextern\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?__shared__\s+([^;]*?)\s*\b([A-Za-z_]\w*)\s*\[\s*\]\s*;",
                         masked):
        type_ = re.sub(r"__align__\s*\(\s*\d+\s*\)", "", text[m.start(1):m.end(1)]).strip()
        edits.append((m.start(), m.end(), keep_lines(text[m.start():m.end()],
                                                      f"{type_}* {m.group(2)} = ::txn_emu::dynamic_smem<{type_}>();",
                                                      _inside(directives, m.start()))))

    # __global__ void __launch_bounds__(N, ...) k(...) { body }  ->  { ::txn_emu::check_launch_bounds(N, ...); body }
    for m in re.finditer(r"\b__launch_bounds__\s*\(", masked):
        if _inside(directives, m.start()):
            continue
        bounds_end = _match_forward(masked, m.end() - 1, "(", ")")
        params = masked.find("(", bounds_end)
        after = _match_forward(masked, params, "(", ")")
        body = re.match(r"[^;{]*\{", masked[after:])  # skips qualifiers; a declaration (;) has no body
        if body:
            bounds = text[m.end():bounds_end - 1]
            edits.append((after + body.end(), after + body.end(),
                          f" ::txn_emu::check_launch_bounds(__FILE__, __LINE__, {bounds});"))

    # __shared__ T a[N], b[M];  ->  static T a[N], b[M]; + first-touch-per-block poisoning
    counter = 0
    for m in re.finditer(r"\b__shared__\b", masked):
        if _inside(directives, m.start()) or re.search(r"\bextern\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?$",
                                                       masked[max(0, m.start() - 40):m.start()]):
            continue
        end = masked.find(";", m.end())
        decl = text[m.end():end]
        declarators = _split_top_level(masked[m.end():end])
        names = [_declarator_name(d) for d in declarators]
        already_static = re.search(r"\bstatic\s+$", masked[max(0, m.start() - 20):m.start()])
        regions = ", ".join(f"{{&{n}, sizeof({n})}}" for n in names)
        counter += 1
        line = text.count("\n", 0, m.start()) + 1
        repl = (("" if already_static else "static") + decl + ";"
                + f" [[maybe_unused]] const bool txn_emu_shared_{line}_{counter} = ::txn_emu::shared_touch({{{regions}}});")
        edits.append((m.start(), end + 1, keep_lines(text[m.start():end + 1], repl, False)))

    edits.sort()
    out, pos = [], 0
    for start, end, repl in edits:
        if start < pos:
            raise ValueError(f"{origin}: overlapping rewrites at offset {start}")
        out.append(text[pos:start])
        out.append(repl)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _write_if_changed(path: Path, content: str):
    if path.exists() and path.read_text() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def mirror_sources(src_root: Path, dst_root: Path, files: list[Path]) -> dict[Path, Path]:
    """Rewrite `files` (under src_root) into dst_root; .cu files get the emulator header and a .cpp suffix.
    Files that are no longer in `files` are removed from dst_root. Returns {source: mirrored path}."""
    produced = {}
    for f in files:
        rel = f.relative_to(src_root)
        is_cu = f.suffix == ".cu"
        dst = dst_root / (str(rel) + ".cpp" if is_cu else rel)
        text = f.read_text()
        body = rewrite_cuda_source(text, str(f)) if f.suffix in (".cu", ".cuh") else text
        header = ('#include "txn_emu/device.h"\n' if is_cu else "") + f'#line 1 "{f}"\n'
        _write_if_changed(dst, header + body)
        produced[f] = dst
    keep = set(produced.values())
    if dst_root.exists():
        for p in dst_root.rglob("*"):
            if p.is_file() and p not in keep:
                p.unlink()
    return produced


# ------------------------------------------------------------------------------------------ discovery
def op_schemas(ops_cpp: Path) -> list[str]:
    """The m.def(...) schema strings of csrc/ops.cpp (adjacent literals joined)."""
    text = ops_cpp.read_text()
    masked = mask_code(text)
    schemas = []
    for m in re.finditer(r"\bm\.def\s*\(", masked):
        end = _match_forward(masked, m.end() - 1, "(", ")")
        literals = re.findall(r'"((?:[^"\\]|\\.)*)"', text[m.end():end - 1])
        schemas.append("".join(literals))
    return schemas


def defined_entry_points(bind_sources: list[Path]) -> set[str]:
    names = {n for pair in FAMILIES.values() for n in pair}
    found = set()
    for f in bind_sources:
        masked = mask_code(f.read_text())
        for n in names:
            if re.search(rf"\b{n}\s*\([^;{{}}]*\)\s*\{{", masked):
                found.add(n)
    return found


def find_cuda_include() -> str | None:
    """A CUDA toolkit include dir with cuda_fp16.h, cuda_bf16.h, vector_types.h and nv/target, or None."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parents[1]))
    for home in filter(None, homes):
        inc = Path(home) / "include"
        if all((inc / h).exists() for h in ("cuda_fp16.h", "cuda_bf16.h", "vector_types.h", "nv/target")):
            return str(inc)
    return None


def _remove_stale_lock(build_dir: Path, max_age_s: float = 900):
    """torch's FileBaton waits forever on a lock left by a killed build: drop it when it is old."""
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > max_age_s:
        lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ build
def build(verbose: bool = False, opt: str = "-O1", extra_cflags: tuple[str, ...] = (),
          variant: str = "default", csrc: str | Path | None = None) -> EmuLibrary:
    """Compile (if needed) and load the emulator extension; raises on a failing build.

    csrc (or env TXN_EMU_CSRC): another source tree to test instead of the checkout's csrc/, e.g. a copy of a
    branch's kernels; it gets its own build folder."""
    cuda_include = find_cuda_include()
    if cuda_include is None:
        raise FileNotFoundError("CUDA toolkit headers (cuda_fp16.h, cuda_bf16.h, nv/target) not found: set CUDA_HOME")
    os.environ.setdefault("CUDA_HOME", str(Path(cuda_include).parent))
    from torch.utils import cpp_extension

    t0 = time.time()
    csrc = Path(csrc or os.environ.get("TXN_EMU_CSRC") or CSRC).resolve()
    if csrc != CSRC:
        variant += "-" + re.sub(r"\W+", "_", str(csrc)).strip("_")
    out = ROOT / "build" / "cuda_emu" / variant
    src_dir, gen_dir, obj_dir = out / "src", out / "generated", out / "obj"

    csrc_files = sorted(p for p in csrc.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    mirrored = mirror_sources(csrc, src_dir / "csrc", csrc_files)
    selftests = sorted(EMU_DIR.glob("selftest*.cu"))
    mirrored_selftests = mirror_sources(EMU_DIR, src_dir / "selftest", selftests)

    kernels = sorted(p for p in csrc_files if p.name.endswith("_cuda.cu") and p.parent != csrc)
    bindings = sorted(p for p in csrc_files if p.name.endswith("_cuda_bind.cpp") and p.parent != csrc)
    entries = defined_entry_points(bindings)
    families, missing = [], {}
    for fam, needed in FAMILIES.items():
        absent = [n for n in needed if n not in entries]
        if absent:
            missing[fam] = f"no CUDA implementation of {fam} in csrc yet ({', '.join(absent)} not defined in any " \
                           f"csrc/*/*_cuda_bind.cpp)"
        else:
            families.append(fam)

    schemas = op_schemas(csrc / "ops.cpp")
    generated = ["// Generated by tests/cuda_emu/build.py from csrc/ops.cpp and the csrc/*/*_cuda_bind.cpp files.",
                 "#pragma once"]
    generated += [f"#define {FAMILY_MACROS[f]} {int(f in families)}" for f in FAMILIES]
    generated.append("#define TXN_EMU_OP_SCHEMAS(m) " + " ".join(
        "m.def(" + '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' + ");" for s in schemas))
    _write_if_changed(gen_dir / "emu_generated.h", "\n".join(generated) + "\n")

    sources = ([str(mirrored[k]) for k in kernels] + [str(mirrored[b]) for b in bindings]
               + [str(p) for p in mirrored_selftests.values()]
               + [str(EMU_DIR / "runtime.cpp"), str(EMU_DIR / "emu_ops.cpp")])
    cflags = [opt, "-std=c++20", "-g0", "-DTXN_CUDA_EMU", "-DTRANSXNET_WITH_CUDA", "-fno-strict-aliasing",
              "-fstack-clash-protection", "-Wno-unknown-pragmas", "-isystem", cuda_include, *extra_cflags]
    obj_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(obj_dir)
    path = cpp_extension.load(
        name=LIB_NAME, sources=sources, extra_cflags=cflags,
        # -Bsymbolic-functions: the bindings call this library's emulated launchers even if the real CUDA
        # extension (same C++ names) was loaded with RTLD_GLOBAL
        extra_ldflags=["-Wl,-Bsymbolic-functions"] + [f for f in extra_cflags if f.startswith("-fsanitize")],
        extra_include_paths=[str(EMU_DIR / "include"), str(EMU_DIR), str(gen_dir), str(src_dir / "csrc")],
        build_directory=str(obj_dir), with_cuda=False, is_python_module=False, verbose=verbose)
    return EmuLibrary(path=str(path), families=families, missing=missing,
                      kernel_sources=[str(k.relative_to(csrc.parent)) for k in kernels],
                      build_seconds=time.time() - t0)


if __name__ == "__main__":
    lib = build(verbose="-v" in sys.argv)
    print(lib)
