"""Fail when a kernel loop marked `#pragma omp simd` was not vectorized.

Cythonizes src/ce/_kernels.pyx, compiles it with the shipping flags plus
-fopt-info-vec-optimized, and checks that the loop under every `omp simd`
pragma in the C headers is reported vectorized for every target clone (the
x86-64-v3 / v4 clones must use 32 / 64-byte vectors). Run from the repo root:
    python tools/check_vectorized.py
"""
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = ["src/ce/_ce_core.h", "src/ce/_ce_row.h", "src/ce/_ce_half.h", "src/ce/_ce_score.h"]


def simd_loops():
    """(header, line of the for statement) under each omp simd pragma."""
    loops = []
    for h in HEADERS:
        with open(os.path.join(ROOT, h)) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("#pragma omp simd"):
                loops.append((h, i + 1))  # 1-based
    return loops


def compile_report():
    tmp = tempfile.mkdtemp()
    c_file = os.path.join(tmp, "_kernels.c")
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", os.path.join(ROOT, "src"),
                    os.path.join(ROOT, "src/ce/_kernels.pyx"), "-o", c_file], check=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fPIC",
           "-I" + np.get_include(), "-I" + sysconfig.get_paths()["include"],
           "-I" + os.path.join(ROOT, "src/ce"), "-c", c_file, "-o", os.path.join(tmp, "k.o"),
           "-fopt-info-vec-optimized"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return res.stderr


def main():
    report = compile_report()
    vectorized = {}
    for m in re.finditer(r"([\w/.-]*_ce_\w+\.h):(\d+):\d+: optimized: loop vectorized using (\d+) byte", report):
        key = ("src/ce/" + os.path.basename(m.group(1)), int(m.group(2)))
        vectorized.setdefault(key, set()).add(int(m.group(3)))
    loops = simd_loops()
    bad = []
    for h, line in loops:
        # gcc names the pragma's line, the for statement's or the first body line
        widths = set().union(*(vectorized.get((h, line + d), set()) for d in range(4)))
        if not widths:
            bad.append(f"{h}:{line}: not vectorized")
        elif "CE_NO_DISPATCH" not in os.environ and not {32, 64} <= widths:
            bad.append(f"{h}:{line}: vectorized only with {sorted(widths)}-byte vectors")
    print(f"{len(loops) - len(bad)} of {len(loops)} omp simd loops vectorized (16/32/64-byte clones)")
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
