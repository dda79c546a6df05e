"""Build transxnet_ops._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment switches:
  TRANSXNET_FORCE_CUDA=1   build the CUDA sources even if nvcc/CUDA_HOME detection fails (error if impossible)
  TRANSXNET_NO_CUDA=1      build the CPU kernels only
  TRANSXNET_DEBUG_INFO=1   keep debug info: host `-g`, device `-lineinfo`; the C++ files take ~5x longer to compile
  TRANSXNET_LINEINFO=1     device `-lineinfo` only (source lines in compute-sanitizer / ncu reports; cheap)
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (ninja)

Package metadata lives in pyproject.toml; this file only describes the extension. Build time (README, "Build
time"): Python's own CFLAGS carry `-g`, and debug info for the inlined torch templates was ~85% of every C++
file's compile time, so release builds pass `-g0`.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc` (-> /usr/local here); prefer /usr/local/cuda."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.isdir("/usr/local/cuda"):
        home = "/usr/local/cuda"
    if not home:
        nvcc = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else None
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = home  # must be set before torch.utils.cpp_extension is imported
        return home
    return None


def _extensions():
    cuda_home = None if _flag("TRANSXNET_NO_CUDA") else _find_cuda_home()
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = torch.version.cuda is not None and cuda_home is not None and not _flag("TRANSXNET_NO_CUDA")
    if _flag("TRANSXNET_FORCE_CUDA") and not with_cuda:
        sys.exit("TRANSXNET_FORCE_CUDA=1 but torch has no CUDA or nvcc was not found (set CUDA_HOME)")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    debug_info = _flag("TRANSXNET_DEBUG_INFO")
    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*_cpu.cpp"))
    # -g0 overrides the -g of Python's CFLAGS (which torch's build passes first).
    cxx_flags = ["-O3", "-fopenmp", "-g" if debug_info else "-g0"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    link_args = ["-fopenmp"]
    if not with_cuda:
        print("transxnet_ops: building the CPU kernels only (no CUDA toolkit or CPU-only torch)")
        return [CppExtension("transxnet_ops._C", cpp_sources, include_dirs=include_dirs,
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_args,
                             py_limited_api=True)]

    # The CUDA build of torch includes cusparse/cublas headers that live in the nvidia wheels.
    import site
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        nv_inc = os.path.join(sp, "nvidia", "cu13", "include")
        if os.path.isdir(nv_inc):
            include_dirs.append(nv_inc)
    sources = cpp_sources + sorted(glob.glob("csrc/*/*_cuda_bind.cpp") + glob.glob("csrc/*/*_cuda.cu"))
    # --threads 0: one nvcc job compiles its architectures (sm_80, sm_90) in parallel.
    nvcc_flags = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "--threads", "0"]
    if debug_info or _flag("TRANSXNET_LINEINFO"):
        nvcc_flags.append("-lineinfo")
    return [CUDAExtension("transxnet_ops._C", sources, include_dirs=include_dirs,
                          define_macros=[("TRANSXNET_WITH_CUDA", None)],
                          extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                          extra_link_args=link_args, py_limited_api=True)]


def main():
    ext_modules = _extensions()  # first: it fixes CUDA_HOME before torch.utils.cpp_extension reads it
    from torch.utils.cpp_extension import BuildExtension

    setup(  # name, version, dependencies, packages: pyproject.toml
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
