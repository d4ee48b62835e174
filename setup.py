"""Build reformer_kernels._C: the C++/OpenMP CPU kernels always, the CUDA kernels when possible.

REFORMER_KERNELS_CUDA=0 skips the CUDA part, =1 makes a failure to build it fatal; unset builds it
whenever torch is a CUDA build and an nvcc is found. The toolkit is located from CUDA_HOME or from
the `nvcc` on PATH (following wrapper scripts), and the CUDA headers that ship inside the nvidia
wheels of the installed torch are added to the include path, so nothing has to be set by hand.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _cuda_request():
    value = os.environ.get("REFORMER_KERNELS_CUDA", "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"REFORMER_KERNELS_CUDA={value!r}: use 0 (skip CUDA), 1 (require CUDA) or leave it unset")
    return value


def _toolkit_from_nvcc():
    """The toolkit folder behind the nvcc on PATH, looking through a wrapper script if it is one."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    candidate = os.path.dirname(os.path.dirname(real))
    if os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")):
        return candidate
    try:
        with open(real, "r", errors="replace") as f:
            text = f.read(4096)
    except OSError:
        return None
    match = re.search(r"(/\S+)/bin/nvcc\b", text)
    if match and os.path.exists(os.path.join(match.group(1), "include", "cuda_runtime.h")):
        return match.group(1)
    return None


def _wheel_cuda_includes():
    """CUDA headers shipped by the nvidia-* wheels that a CUDA build of torch depends on."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found.extend(sorted(glob.glob(os.path.join(base, "cu*", "include"))))
    return found


def _extensions():
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    request = _cuda_request()
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # pip builds on the machine that runs the kernels, so tune for it; set REFORMER_KERNELS_MARCH
    # (e.g. x86-64-v3) when building a wheel for other machines.
    march = os.environ.get("REFORMER_KERNELS_MARCH", "native")
    cxx_flags = ["-O3", "-std=c++20", f"-march={march}"] + openmp

    build_cuda = False
    reason = ""
    if request == "0":
        reason = "REFORMER_KERNELS_CUDA=0"
    elif torch.version.cuda is None:
        reason = "torch is a CPU-only build"
    else:
        home = os.environ.get("CUDA_HOME") or _toolkit_from_nvcc()
        if home is None:
            reason = "no nvcc on PATH and CUDA_HOME unset"
        else:
            os.environ["CUDA_HOME"] = home
            import torch.utils.cpp_extension as cpp_ext

            cpp_ext.CUDA_HOME = home
            build_cuda = True
    if request == "1" and not build_cuda:
        raise SystemExit(f"REFORMER_KERNELS_CUDA=1 but the CUDA part cannot be built: {reason}")

    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    _write_build_info(build_cuda, reason)
    if build_cuda:
        includes = [os.path.join(os.environ["CUDA_HOME"], "include", "cccl")] + _wheel_cuda_includes()
        ext = CUDAExtension(
            "reformer_kernels._C",
            cpu_sources + cuda_sources,
            include_dirs=includes,
            extra_compile_args={
                "cxx": cxx_flags + ["-DREFORMER_KERNELS_WITH_CUDA"],
                "nvcc": ["-O3", "-std=c++20", "-DREFORMER_KERNELS_WITH_CUDA", "--expt-relaxed-constexpr"],
            },
            extra_link_args=openmp,
        )
    else:
        print(f"reformer_kernels: building the CPU kernels only ({reason})", file=sys.stderr)
        ext = CppExtension(
            "reformer_kernels._C",
            cpu_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=openmp,
        )
    class OneBuildFolder(BuildExtension.with_options(use_ninja=True)):
        """Compile into build/temp whoever builds: pip's editable install otherwise compiles in a
        throwaway folder, and the `setup.py build_ext --inplace` after it (make build) would compile
        everything a second time instead of finding ninja's objects up to date."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", "temp")

    return [ext], {"build_ext": OneBuildFolder}


def _write_build_info(with_cuda, reason):
    """Record how _C was built, for `reformer-kernels info`."""
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    with open(os.path.join(ROOT, "reformer_kernels", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py: how reformer_kernels._C was built."""\n')
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_ARCH_LIST = {arch!r}\n")
        f.write(f"CUDA_SKIPPED_BECAUSE = {reason!r}\n")


ext_modules, cmdclass = _extensions()
setup(
    packages=find_packages(include=["reformer_kernels", "reformer_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
