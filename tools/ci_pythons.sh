#!/usr/bin/env bash
# Build and test ce on every CPython it claims, each found on this machine.
#
#   tools/ci_pythons.sh                       # 3.10-3.14 and 3.13t/3.14t, whichever are here
#   tools/ci_pythons.sh 3.12 3.13             # just these
#   tools/ci_pythons.sh --main-python .venv-ci/bin/python --main-log FILE
#       (CI: the full suite already ran on that interpreter and FILE holds its pytest
#        output; that version is not run again, its row is read from FILE)
#
# For each version, outside the source tree:
#   1. find the interpreter: python3.X on PATH, then $(pyenv root)/versions/3.X.*
#      (highest patch); it must report that version and GIL build, and have Python.h;
#   2. a fresh venv with NumPy, Cython and setuptools from the registry;
#   3. one wheel, built (CE_REQUIRE_OPENMP=1) from a copy of the source, its tag checked
#      against the interpreter's; installed with its [test] extras (plus pytest-xdist and
#      the [mygrad] extra when they install for that version);
#   4. the suite against the installed wheel: the full suite for the main version, the
#      core suite (CORE_TESTS below) for the others, `-x -n 2`.
# A version not on the machine is SKIPPED (named in the table, never counted as passed).
# Exit status: non-zero if any version that is present fails.
# Environment: KEEP=1 keeps the work directory; PIP_CACHE_DIR as pip reads it (the default
# cache under ~/.cache/pip is shared by every venv here).
set -uo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
MAIN_PY="" MAIN_LOG=""
VERSIONS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --main-python) MAIN_PY=$2; shift 2 ;;
        --main-log) MAIN_LOG=$2; shift 2 ;;
        -*) echo "ci_pythons.sh: unknown option $1" >&2; exit 2 ;;
        *) VERSIONS+=("$1"); shift ;;
    esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.10 3.11 3.12 3.13 3.14 3.13t 3.14t)
FULL_VERSION=${CE_FULL_SUITE_PYTHON:-3.11}   # the version whose full suite is run (or read)

# reference/core, semantics, bad input, thread and process determinism, score, CLI, cimport,
# and the MyGrad adapter (annotations evaluated at import)
CORE_TESTS="test_core.py test_reference_examples.py test_threads.py test_bad_input.py
test_bad_input_matrix.py test_concurrency.py test_threadpool.py test_score.py test_cli.py
test_cimport.py test_mygrad_adapter.py"

# the newest release that has a wheel for the version, rather than a newer sdist built here
# (NumPy 2.5 has no wheel for free-threaded 3.13: 3.13t gets NumPy 2.4)
export PIP_PREFER_BINARY=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ce-pythons.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
say() { printf '\n== %s\n' "$*"; }

# The interpreter's "X.Y" plus "t" for a free-threaded build, or nothing if it does not run.
describe() {
    "$1" -c 'import sys, sysconfig
print("%d.%d%s" % (sys.version_info[:2] + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "",)))' \
        2>/dev/null
}

# Path of a working interpreter for version $1 (e.g. 3.12 or 3.13t), or nothing.
find_python() {
    local want=$1 c root
    local -a cands=()
    # every pythonX.Y on PATH (pyenv's shims fail for versions it has not activated: skipped)
    while IFS= read -r c; do cands+=("$c"); done < <(type -ap "python$want" 2>/dev/null)
    if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
        # highest patch first; a "3.13.0t" directory holds python3.13t
        while IFS= read -r c; do cands+=("$c"); done < <(
            ls -d "$root"/versions/"${want%t}".*/ 2>/dev/null | sort -rV | while read -r d; do
                echo "${d%/}/bin/python$want"; done)
    fi
    for c in "${cands[@]}"; do
        [ -x "$c" ] || continue
        if [ "$(describe "$c")" = "$want" ] &&
           "$c" -c 'import os, sys, sysconfig, venv
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
        then
            echo "$c"; return 0
        fi
    done
    return 1
}

# "passed failed skipped" from a pytest log's closing line (0 for a missing count).
counts() {
    local line
    line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$1" | tail -1)
    for word in passed failed skipped; do
        local n
        n=$(grep -oE "[0-9]+ $word" <<<"$line" | cut -d' ' -f1)
        printf '%s ' "${n:-0}"
    done
}

say "source copy in $WORK/src"
python3 - "$SRC" "$WORK/src" <<'EOF'
import shutil, sys
skip = shutil.ignore_patterns(".git", "build", "dist", "wheelhouse", "*.egg-info", "*.so", "*.pyd",
                              "_kernels.c", "_exact.c", "__pycache__", ".pytest_cache", ".hypothesis",
                              ".mypy_cache", ".venv*")
shutil.copytree(sys.argv[1], sys.argv[2], ignore=skip)
EOF

MAIN_VERSION=""
if [ -n "$MAIN_PY" ]; then
    MAIN_VERSION=$(describe "$MAIN_PY") || { echo "ci_pythons.sh: $MAIN_PY does not run" >&2; exit 2; }
fi

ROWS=()     # "version result passed failed skipped seconds detail"
status=0
for v in "${VERSIONS[@]}"; do
    start=$SECONDS
    if [ "$v" = "$MAIN_VERSION" ] && [ -n "$MAIN_LOG" ]; then
        read -r p f s <<<"$(counts "$MAIN_LOG")"
        result=PASSED
        { [ "$f" = 0 ] && [ "$p" != 0 ]; } || { result=FAILED; status=1; }
        ROWS+=("$v $result $p $f $s - full-suite,main-CI-step,$("$MAIN_PY" -c 'import sys; print(sys.version.split()[0])')")
        continue
    fi
    if ! PY=$(find_python "$v"); then
        ROWS+=("$v SKIPPED - - - - not-on-this-machine")
        say "$v: SKIPPED (no working python$v with its headers on this machine)"
        continue
    fi
    full=$("$PY" -c 'import sys; print(sys.version.split()[0])')
    say "$v: $PY ($full)"
    D="$WORK/$v"
    LOG="$D/log"
    mkdir -p "$D"
    run() { "$@" >>"$LOG" 2>&1; }
    fail() {
        echo "ci_pythons.sh: $v: $1 failed; the end of its log:" >&2
        tail -30 "$LOG" >&2
        ROWS+=("$v FAILED - - - $((SECONDS - start)) $1,$full")
        status=1
    }
    # (a failing step ends this version only: `if !` on the group keeps `set -e` semantics out)
    if ! run "$PY" -m venv "$D/venv"; then fail venv; continue; fi
    T="$D/venv/bin/python"
    if ! { run "$T" -m pip install --quiet --upgrade pip &&
           run "$T" -m pip install --quiet --only-binary numpy numpy "cython>=3.0" "setuptools>=77" wheel; }; then
        fail "install-numpy-cython"; continue
    fi
    echo "numpy $("$T" -c 'import numpy; print(numpy.__version__)'), cython $("$T" -c 'import Cython; print(Cython.__version__)')"
    b0=$SECONDS
    if ! (cd "$WORK/src" && export CE_REQUIRE_OPENMP=1 &&
          run "$T" -m pip wheel --quiet --no-deps --no-build-isolation -w "$D/dist" .); then
        fail build; continue
    fi
    rm -rf "$WORK/src/build"   # per-version objects; the next version builds its own
    WHEEL=$(ls "$D"/dist/ce-*.whl)
    # the wheel's tag must be this interpreter's (cp313-cp313t for a free-threaded 3.13)
    tag=$("$T" -c 'import sys, sysconfig
t = "cp%d%d" % sys.version_info[:2]
print(t + "-" + t + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))')
    case "$(basename "$WHEEL")" in
        *-"$tag"-linux_*.whl) echo "wheel $(basename "$WHEEL") built in $((SECONDS - b0)) s" ;;
        *) echo "wheel tag mismatch: $(basename "$WHEEL"), expected $tag" >>"$LOG"; fail wheel-tag; continue ;;
    esac
    if ! run "$T" -m pip install --quiet "$WHEEL[test]"; then fail "install-wheel[test]"; continue; fi
    for extra in pytest-xdist "$WHEEL[mygrad]"; do
        run "$T" -m pip install --quiet "$extra" || echo "$extra does not install on $v: its tests skip"
    done
    files=tests suite=full-suite
    if [ "$v" != "$FULL_VERSION" ]; then
        files="" suite=core-suite
        for f in $CORE_TESTS; do files="$files tests/$f"; done
    fi
    mkdir "$D/run"
    cp -R "$SRC/tests" "$D/run/tests"
    cp "$SRC/pyproject.toml" "$D/run/"   # pytest's settings (markers, addopts) only
    xdist=""
    "$T" -c 'import xdist' 2>/dev/null && xdist="-n 2"
    # only the installed wheel is importable from $D/run; a free-threaded CPython keeps the GIL
    # off when it imports ce (the extension declares it, setup.py)
    (cd "$D/run" && env -u PYTHONPATH -u PYTHON_GIL "$T" -c 'import ce, sys, sysconfig
assert ce.__file__.startswith(sys.prefix), ce.__file__
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    assert not sys._is_gil_enabled(), "importing ce turned the GIL back on"
    print("free-threaded: the GIL stays off after import ce")
ce.show_config()') >>"$LOG" 2>&1 || { fail import; continue; }
    grep -E "^(free-threaded|openmp|simd)" "$LOG"
    # free-threaded: PYTHON_GIL=0 keeps the GIL off for the whole run, whatever else the tests
    # import (NumPy, scikit-learn, ...), so the thread tests really run ce without it
    gil=""
    case "$v" in *t) gil="PYTHON_GIL=0" ;; esac
    (cd "$D/run" && env -u PYTHONPATH $gil "$T" -m pytest -q -rs -x $xdist -p no:cacheprovider $files) \
        >"$D/pytest.log" 2>&1
    rc=$?
    grep -E "^SKIPPED" "$D/pytest.log" | cut -c1-160 | head -20
    tail -1 "$D/pytest.log"
    read -r p f s <<<"$(counts "$D/pytest.log")"
    if [ "$rc" = 0 ] && [ "$f" = 0 ] && [ "$p" != 0 ]; then
        result=PASSED
    else
        result=FAILED; status=1
        grep -E "^(FAILED|ERROR) " "$D/pytest.log" | head -20
    fi
    ROWS+=("$v $result $p $f $s $((SECONDS - start)) $suite,$full,$("$T" -c 'import numpy; print("numpy-" + numpy.__version__)')")
done

say "summary: ce on each CPython (wheel built per version, tests against the installed wheel)"
printf '%-7s %-8s %7s %7s %8s %8s  %s\n' version result passed failed skipped seconds detail
for r in "${ROWS[@]}"; do
    # shellcheck disable=SC2086
    printf '%-7s %-8s %7s %7s %8s %8s  %s\n' $r
done
echo "total: $SECONDS s"
[ "$status" = 0 ] || echo "ci_pythons.sh: at least one CPython failed" >&2
exit "$status"
