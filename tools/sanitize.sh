#!/usr/bin/env bash
# Build ce with AddressSanitizer + UndefinedBehaviorSanitizer and run the test suite under it.
#
#   tools/sanitize.sh                  # the whole default suite (slow tests stay deselected)
#   tools/sanitize.sh tests/test_core.py -k fused     # extra arguments go to pytest
#
# Steps, all outside the source tree (nothing in the repository is built or written):
#   1. copy src/, tests/ and the build files into a temp directory;
#   2. a fresh venv there with the test dependencies but *not* PyTorch (its own
#      OpenMP/allocator runtime is not ASan-clean and its tests are peers, not ce);
#   3. build and install ce with gcc, CE_EXTRA_CFLAGS / CE_EXTRA_LDFLAGS set to
#      -fsanitize=address,undefined (setup.py appends them to its flags);
#   4. run pytest with the ASan runtime preloaded (CPython is not instrumented),
#      PYTHONMALLOC=malloc so that Python's own objects go through ASan too;
#   5. fail if pytest failed or if the log holds any sanitizer report.
#
# Environment: PYTHON (default python3), KEEP=1 keeps the work directory,
# CE_HYPOTHESIS_SCALE (default 0.25 here) scales tests/test_hypothesis.py's example counts.
# Needs gcc (with libasan/libubsan, as Debian's gcc has) and the Python headers.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
CC=${CC:-gcc}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ce-sanitize.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
say() { printf '\n== %s\n' "$*"; }

LIBASAN=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize.sh: $CC has no libasan.so (install gcc's libasan)" >&2
    exit 2
fi

say "copying the source to $WORK/ce"
mkdir -p "$WORK/ce"
for f in setup.py pyproject.toml README.md LICENSE MANIFEST.in; do
    [ -e "$SRC/$f" ] && cp "$SRC/$f" "$WORK/ce/"
done
cp -r "$SRC/src" "$SRC/tests" "$WORK/ce/"
# build products of the source tree must not leak into the sanitized build
find "$WORK/ce" \( -name '*.so' -o -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
rm -f "$WORK/ce/src/ce/_kernels.c" "$WORK/ce/src/ce/_exact.c"

say "venv (no torch)"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet numpy pytest hypothesis threadpoolctl scikit-learn \
    "cython>=3.0" "setuptools>=77" wheel

say "building ce with -fsanitize=address,undefined"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
(cd "$WORK/ce" && CC="$CC" CE_EXTRA_CFLAGS="$SAN" CE_EXTRA_LDFLAGS="-fsanitize=address,undefined" \
    "$VPY" -m pip install --quiet --no-build-isolation --no-deps . ) > "$WORK/build.log" 2>&1 \
    || { tail -50 "$WORK/build.log"; echo "sanitize.sh: build failed" >&2; exit 2; }
# (ce cannot be imported yet without the ASan runtime preloaded: find the file instead)
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
SO=$(ls "$SITE"/ce/_kernels*.so 2>/dev/null | head -1 || true)
if [ -z "$SO" ] || ! ldd "$SO" | grep libasan >/dev/null; then
    echo "sanitize.sh: the installed extension ($SO) is not linked against libasan" >&2
    exit 2
fi
echo "extension: $SO"
if "$VPY" -c 'import torch' 2>/dev/null; then
    echo "sanitize.sh: torch is installed in the sanitizer venv; it must not be" >&2
    exit 2
fi

say "canary: a deliberate out-of-bounds read must be reported"
# The C-level API (the cimport-able functions of ce._kernels.__pyx_capi__) trusts its caller:
# labels shorter than the rows make ce_forward_f64 read past their end. If ASan does not catch
# this, the build is not instrumented and a clean test run below would prove nothing.
CANARY=$(cd "$WORK" && LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 "$VPY" -c '
import ctypes
import numpy as np
from ce import _kernels
capsule = _kernels.__pyx_capi__["ce_forward_f64"]
api = ctypes.pythonapi
api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
api.PyCapsule_GetPointer.restype = ctypes.c_void_p
api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
address = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
P, N, I64 = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int64
forward = ctypes.CFUNCTYPE(ctypes.c_double, P, N, N, N, P, I64, P, P, ctypes.c_int)(address)
x = np.zeros((10, 5)); labels = np.zeros(3, np.int64)
forward(x.ctypes.data, 10, 5, 5, labels.ctypes.data, -100, None, None, 1)
' 2>&1 || true)
if ! grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" <<<"$CANARY"; then
    echo "$CANARY" | tail -20
    echo "sanitize.sh: ASan did not catch the canary overflow: the build is not sanitized" >&2
    exit 2
fi
echo "caught: $(grep -m1 -o 'heap-buffer-overflow.*' <<<"$CANARY" | cut -c1-60)..."

say "pytest under ASan + UBSan"
LOG="$WORK/pytest.log"
# Reports must not vanish in pytest's output capture (a halted process never prints what it
# captured): pytest captures at the sys level only, so the main process's reports reach the log
# directly, and ASan writes every process's reports (subprocesses too) to $REPORTS as well.
# (UBSan's log_path is not honoured with the ASan runtime preloaded; a subprocess halted by
# UBSan exits non-zero, which the tests report with its stderr.)
REPORTS="$WORK/reports"
mkdir -p "$REPORTS"
set +e
(
    cd "$WORK/ce"
    # `python -m pytest` puts $WORK/ce on sys.path, where there is no ce/ package:
    # the installed, sanitized ce is the one imported.
    export LD_PRELOAD="$LIBASAN"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=0:print_summary=1:log_path=$REPORTS/asan"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
    export PYTHONMALLOC=malloc
    export CE_HYPOTHESIS_SCALE="${CE_HYPOTHESIS_SCALE:-0.25}"
    export CE_UNDER_SANITIZER=1
    "$VPY" -c 'import ce, sys; print("ce from", ce.__file__); ce.show_config()'
    # -v: when a sanitizer halts the interpreter, the log's last line names the test
    "$VPY" -m pytest -v --capture=sys -p no:cacheprovider tests "$@"
) > "$LOG" 2>&1
status=$?
set -e
grep -E "^(ce from|openmp|simd)" "$LOG" || true
tail -n 3 "$LOG"

shopt -s nullglob
files=("$REPORTS"/*)
asan=$( (cat "$LOG" "${files[@]}" /dev/null | grep -c "ERROR: AddressSanitizer") || true)
ubsan=$( (cat "$LOG" "${files[@]}" /dev/null | grep -c "runtime error:") || true)
say "sanitizer findings: AddressSanitizer=$asan UndefinedBehaviorSanitizer=$ubsan report files=${#files[@]} (pytest exit $status)"
if [ "$asan" != 0 ] || [ "$ubsan" != 0 ] || [ "${#files[@]}" != 0 ]; then
    for f in "${files[@]}"; do
        echo "---- $f"
        head -40 "$f"
    done | head -300
    grep -n -A30 -E "ERROR: AddressSanitizer|runtime error:" "$LOG" | head -100
    echo "last test started:"; grep -E "::" "$LOG" | tail -1
    [ "${KEEP:-0}" = 1 ] && echo "full log: $LOG, reports: $REPORTS"
    exit 1
fi
# exit code 5 (no tests collected) only happens with a narrowing -k/-m from the caller
if [ "$status" != 0 ] && [ "$status" != 5 ]; then
    grep -E "^(FAILED|ERROR) " "$LOG" | head -50
    echo "sanitize.sh: pytest failed under the sanitizers (full log: KEEP=1)" >&2
    exit 1
fi
echo "sanitize.sh: OK, zero findings"
