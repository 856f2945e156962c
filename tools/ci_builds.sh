#!/usr/bin/env bash
# Builds beyond gcc on x86-64, each followed by the core test subset (reference, semantics,
# bad input, thread determinism):
#   clang     clang with LLVM's OpenMP (libomp-dev), the compiler family of macOS
#   baseline  gcc with -DCE_NO_DISPATCH: no target_clones, the baseline x86-64 kernels only
#   aarch64   Debian's aarch64 cross gcc, run under qemu-user with Debian 12's arm64 Python
#             (its .debs unpacked into a sysroot) and NumPy's aarch64 wheel from PyPI
#             (Debian 12's NumPy 1.24 is older than the numpy>=1.25 ce requires). On arm64
#             the FTZ intrinsics and target_clones are compiled out.
# Usage: tools/ci_builds.sh [clang] [baseline] [aarch64]   (no argument: all three)
# Needs: root for apt-get, and the current python with numpy, Cython, setuptools and pytest
# (.ci/run's venv). Each build prints its duration and pytest's counts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${CE_BUILDS_DIR:-$(mktemp -d /tmp/ce-builds.XXXXXX)}
CORE_TESTS=(tests/test_core.py tests/test_threads.py tests/test_bad_input.py
            tests/test_reference_examples.py)
APT_UPDATED=0

# a list that fails to refresh (one unreachable source) is not fatal: a package really missing
# fails the install below
apt_update() {
    apt-get update -q >/dev/null || echo "apt-get update: some package lists were not refreshed"
    APT_UPDATED=1
}

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$APT_UPDATED" = 0 ]; then apt_update; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# build_ext with the given environment into $WORK/$1/ce, next to a copy of the Python sources
build() {
    local name=$1; shift
    rm -rf "$WORK/$name" && mkdir -p "$WORK/$name/pkg"
    cp -r src/ce "$WORK/$name/pkg/ce"
    rm -f "$WORK/$name/pkg/ce/"*.so
    env "$@" python setup.py -q build_ext --build-lib "$WORK/$name/lib" \
        --build-temp "$WORK/$name/tmp" --force >"$WORK/$name/build.log" 2>&1 \
        || { cat "$WORK/$name/build.log"; return 1; }
    cp "$WORK/$name/lib/ce/"*.so "$WORK/$name/pkg/ce/"   # _kernels and _exact
}

core_tests() {  # run the core subset with the interpreter given as arguments
    (cd "$ROOT" && "$@" -m pytest -q -p no:cacheprovider "${CORE_TESTS[@]}")
}

run_clang() {
    apt_install clang libomp-dev
    build clang CC=clang
    local so=("$WORK/clang/pkg/ce/"_kernels*.so)
    # the extension must use LLVM's OpenMP runtime, not libgomp
    readelf -d "${so[0]}" | grep 'libomp\.so' >/dev/null || { echo "clang build: not linked to libomp"; readelf -d "${so[0]}"; return 1; }
    readelf -p .comment "${so[0]}" | grep -i clang >/dev/null || { echo "clang build: not compiled by clang"; return 1; }
    PYTHONPATH="$WORK/clang/pkg" python -c "import ce; ce.show_config()"
    PYTHONPATH="$WORK/clang/pkg" core_tests python
}

run_baseline() {
    build baseline CE_EXTRA_CFLAGS=-DCE_NO_DISPATCH
    PYTHONPATH="$WORK/baseline/pkg" python -c "
import ce
level = ce.show_config(print_out=False)['simd']
assert 'no runtime dispatch' in level, level
print('simd', level)"
    PYTHONPATH="$WORK/baseline/pkg" core_tests python
}

run_aarch64() {
    # libc6-dev-arm64-cross is only a recommendation of the cross gcc: without it nothing links
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
    dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || { dpkg --add-architecture arm64; APT_UPDATED=0; }
    [ "$APT_UPDATED" = 1 ] || apt_update
    local sys=$WORK/arm64/sysroot site=$WORK/arm64/site debs=$WORK/arm64/debs
    rm -rf "$WORK/arm64" && mkdir -p "$sys" "$site" "$debs"
    # Debian's arm64 Python 3.11, its shared libraries, libgomp, libstdc++ (for NumPy's wheel) and
    # the Python headers, unpacked (not
    # installed: the host's own python3 stays as it is)
    local pkgs
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances python3.11:arm64 libgomp1:arm64 libstdc++6:arm64 \
           2>/dev/null | grep -E '^[a-z0-9].*:arm64$' | grep -vE '^(dpkg|tar|install-info|perl.*):' \
           | grep -vE -- '-dev:arm64$' | sort -u)
    # (a package that does not download is reported, not fatal: the import and tests below need
    # what matters)
    (cd "$debs" && apt-get download -q $pkgs libpython3.11-dev:arm64 >/dev/null 2>&1) \
        || echo "aarch64: some arm64 packages did not download"
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$sys"; done
    local py=(qemu-aarch64-static -L "$sys" "$sys/usr/bin/python3.11")
    # NumPy (the version of this venv) and pytest for cp311 aarch64, from PyPI
    python -m pip install -q --only-binary=:all: --platform manylinux_2_28_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
        --target "$site" "numpy==$(python -c 'import numpy; print(numpy.__version__)')" pytest
    local inc="-I$sys/usr/include/python3.11 -I$sys/usr/include"
    inc="$inc -I$site/numpy/_core/include"
    # the host's setup.py drives the cross compiler; the -I above come before the host's own
    build aarch64 CC=aarch64-linux-gnu-gcc LDSHARED="aarch64-linux-gnu-gcc -shared" \
        CFLAGS="$inc" LDFLAGS="" CE_REQUIRE_OPENMP=1
    local so module
    for module in _kernels _exact; do  # the host's suffix on aarch64 objects: renamed
        so=$(ls "$WORK/aarch64/pkg/ce/"$module.*.so)
        mv "$so" "$WORK/aarch64/pkg/ce/$module.cpython-311-aarch64-linux-gnu.so"
        readelf -h "$WORK/aarch64/pkg/ce/$module.cpython-311-aarch64-linux-gnu.so" | grep AArch64 >/dev/null
    done
    PYTHONPATH="$WORK/aarch64/pkg:$site" "${py[@]}" -c \
        "import platform, numpy, ce; print(platform.machine(), 'numpy', numpy.__version__); ce.show_config()"
    PYTHONPATH="$WORK/aarch64/pkg:$site" core_tests "${py[@]}"
}

builds=("$@")
[ ${#builds[@]} -gt 0 ] || builds=(clang baseline aarch64)
status=0
for b in "${builds[@]}"; do
    echo "== build: $b"
    start=$(date +%s)
    # run in a child so that set -e holds inside it (an if condition would switch it off)
    "run_$b" &
    if wait $!; then result=ok; else result=FAILED; status=1; fi
    echo "== build: $b $result in $(( $(date +%s) - start )) s"
done
exit $status
