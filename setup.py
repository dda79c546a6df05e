"""Build transxnet_ops._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Environment switches:
  TRANSXNET_FORCE_CUDA=1   build the CUDA sources even if nvcc/CUDA_HOME detection fails (error if impossible)
  TRANSXNET_NO_CUDA=1      build the CPU kernels only
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (ninja)
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

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

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*_cpu.cpp"))
    cxx_flags = ["-O3", "-fopenmp"]
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
    nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    return [CUDAExtension("transxnet_ops._C", sources, include_dirs=include_dirs,
                          define_macros=[("TRANSXNET_WITH_CUDA", None)],
                          extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                          extra_link_args=link_args, py_limited_api=True)]


def main():
    ext_modules = _extensions()  # first: it fixes CUDA_HOME before torch.utils.cpp_extension reads it
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="transxnet-ops",
        version="0.1.0",
        description="Fused IDConv and OSRA kernels (C++/CUDA/Triton) for the TransXNet backbone",
        packages=find_packages(include=["transxnet_ops", "transxnet_ops.*"]),
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        python_requires=">=3.9",
        install_requires=["torch>=2.6"],
        extras_require={"test": ["pytest", "numpy"], "bench": ["numpy", "matplotlib", "tqdm"]},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )


if __name__ == "__main__":
    main()
