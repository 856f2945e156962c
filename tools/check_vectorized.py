"""Fail when a kernel loop marked `#pragma omp simd` was not vectorized.

Cythonizes src/ce/_kernels.pyx with setup.py's Cython directives, compiles it
with setup.py's compiler and shipping flags plus a dump of the vectorizer's
successes per function, and checks that the loop under every `omp simd`
pragma in the C headers is vectorized at every SIMD level: in some function
built for x86-64 baseline, in one built for x86-64-v3 with 32-byte vectors and
in one built for x86-64-v4 with 64-byte vectors (the CE_LEVELS entry points
NAME_baseline / NAME_avx2 / NAME_avx512 and target_clones' NAME.default /
.arch_x86_64_v3 / .arch_x86_64_v4 clones). With CE_NO_DISPATCH (in the
environment or in CE_EXTRA_CFLAGS) only the one default build is checked.
Run from the repo root:
    python tools/check_vectorized.py
"""
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_setup():
    """setup.py as a module (it calls setup() only as __main__): the flags and directives."""
    spec = importlib.util.spec_from_file_location("ce_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP = load_setup()
HEADERS = SETUP.KERNEL_HEADERS
COMPILE_ARGS = SETUP.build_flags()[0]


# Loops gcc 12 may leave scalar in the baseline (SSE2) build, by enclosing function, with the
# reason. A loop listed here must still vectorize at AVX2 and AVX-512; a new baseline miss
# fails. Empty since the class-major argmax became a max of (n - c) over the hits: its
# index-and-value select had stayed a branch without SSE4.1 blends.
KNOWN_BASELINE_MISSES: dict[str, str] = {}

# Loops shorter than one full-width vector by design, by enclosing function: they must
# vectorize at every level, at whatever width their length allows.
NARROW_LOOPS: dict[str, str] = {
    "ce_lanes_total": "the last halvings of the lane tree: 4 and then 2 doubles",
}


def enclosing_function(lines, i):
    """The name of the C function whose body holds line i (CE_FN(name) unwrapped)."""
    for j in range(i, -1, -1):
        line = lines[j]
        if line[:1].isalpha() and "(" in line and not line.startswith(("typedef", "#")):
            m = re.search(r"CE_FN\((\w+)\)\s*\(", line) or re.search(r"(\w+)\s*\(", line)
            return m.group(1) if m else ""
    return ""


def simd_loops():
    """(header, line of the for statement, enclosing function) under each omp simd pragma."""
    loops = []
    for h in HEADERS:
        with open(os.path.join(ROOT, h)) as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("#pragma omp simd"):
                loops.append((h, i + 1, enclosing_function(lines, i)))  # 1-based
    return loops


def compile_report():
    """The vectorizer's dump: ';; Function NAME (...)' headers, then its loops."""
    tmp = tempfile.mkdtemp()
    c_file = os.path.join(tmp, "_kernels.c")
    dump = os.path.join(tmp, "vect.txt")
    directives = ",".join(f"{k}={v}" for k, v in SETUP.COMPILER_DIRECTIVES.items())
    subprocess.run([sys.executable, "-m", "cython", "-X", directives, "-I", os.path.join(ROOT, "src"),
                    os.path.join(ROOT, "src/ce/_kernels.pyx"), "-o", c_file], check=True)
    defines = ["-DCE_NO_DISPATCH"] if "CE_NO_DISPATCH" in os.environ else []
    cmd = [SETUP._compiler(), *COMPILE_ARGS, "-fPIC", *defines,
           "-I" + np.get_include(), "-I" + sysconfig.get_paths()["include"],
           "-I" + os.path.join(ROOT, "src/ce"), "-c", c_file, "-o", os.path.join(tmp, "k.o"),
           "-fdump-tree-vect-optimized=" + dump]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    with open(dump) as f:
        return f.read()


# the level a function was built for, from its name; the vector width it must reach
LEVELS = {"avx512": 64, "avx2": 32, "baseline": None}


def level_of(function):
    if function.endswith("_avx512") or ".arch_x86_64_v4" in function:
        return "avx512"
    if function.endswith("_avx2") or ".arch_x86_64_v3" in function:
        return "avx2"
    return "baseline"


def vectorized_loops(report):
    """{(header, line): {level: set of vector widths in bytes}}"""
    found = {}
    level = "baseline"
    for line in report.splitlines():
        head = re.match(r";; Function (\S+)", line)
        if head:
            level = level_of(head.group(1))
            continue
        m = re.match(r"([\w/.-]*_ce_\w+\.h):(\d+):\d+: optimized: loop vectorized using (\d+) byte", line)
        if m:
            key = ("src/ce/" + os.path.basename(m.group(1)), int(m.group(2)))
            found.setdefault(key, {}).setdefault(level, set()).add(int(m.group(3)))
    return found


def main():
    found = vectorized_loops(compile_report())
    # a baseline build (CE_EXTRA_CFLAGS=-DCE_NO_DISPATCH, tools/ci_builds.sh) has no wide copies
    no_dispatch = "-DCE_NO_DISPATCH" in COMPILE_ARGS or "CE_NO_DISPATCH" in os.environ
    levels = ["baseline"] if no_dispatch else list(LEVELS)
    loops = simd_loops()
    bad, known = [], []
    for h, line, function in loops:
        for level in levels:
            # gcc names the pragma's line, the for statement's or the first body line
            widths = set().union(*(found.get((h, line + d), {}).get(level, set()) for d in range(4)))
            need = LEVELS[level]
            if not widths and level == "baseline" and function in KNOWN_BASELINE_MISSES:
                known.append(f"{h}:{line} ({function}): {KNOWN_BASELINE_MISSES[function]}")
            elif not widths:
                bad.append(f"{h}:{line} ({function}): not vectorized at {level}")
            elif need is not None and need not in widths and function not in NARROW_LOOPS:
                bad.append(f"{h}:{line} ({function}): at {level} only with {sorted(widths)}-byte vectors")
    pairs = len(loops) * len(levels)
    print(f"{pairs - len(bad) - len(known)} of {pairs} (omp simd loop, SIMD level) pairs "
          f"vectorized; {len(loops)} loops, levels: {', '.join(levels)}")
    for k in known:
        print("  known, baseline only: " + k)
    for b in bad:
        print("  " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
