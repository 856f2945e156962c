#!/usr/bin/env bash
# Build a free-threaded CPython 3.13 ("python3.13t") from Debian 13's CPython source package,
# for tools/ci_pythons.sh: neither PyPI nor Debian 12's archive has a free-threaded interpreter,
# and pyenv cannot download one here.
#
#   FT=$(bash tools/build_python_ft.sh) && PATH="$FT/bin:$PATH" bash tools/ci_pythons.sh 3.13t
#
# Prints the install prefix on stdout (progress on stderr); prints nothing and exits 1 when
# the source cannot be had or does not build. The build is kept under $CE_CI_CACHE (default
# ~/.cache/ce-ci) and reused while its interpreter runs, so only the first run pays for it
# (about 4 minutes of 2 cores: configure, make -j2, install).
# Debian's archive is reached through the machine's own apt configuration (its URIs, with
# the suite "trixie" and source packages); the system's apt state is not touched.
set -euo pipefail

CACHE=${CE_CI_CACHE:-$HOME/.cache/ce-ci}
say() { printf '%s\n' "build_python_ft.sh: $*" >&2; }

for prefix in "$CACHE"/python3.13t-*; do
    if [ -x "$prefix/bin/python3.13t" ] && "$prefix/bin/python3.13t" -c 'import sys; sys.exit(sys._is_gil_enabled())' 2>/dev/null; then
        say "reusing $prefix"
        echo "$prefix"
        exit 0
    fi
done

# the Debian archive this machine uses (its first non-security URI)
uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n' |
      grep -v security | head -1 || true)
[ -n "$uri" ] || uri=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
                       grep -v security | head -1 || true)
[ -n "$uri" ] || { say "no Debian archive in this machine's apt sources"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ce-python-ft.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
A=$WORK/apt
mkdir -p "$A/parts" "$A/lists/partial" "$A/cache/archives/partial" "$WORK/src"
cat > "$A/parts/trixie.sources" <<EOF
Types: deb-src
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$A/parts"
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
say "fetching Debian 13's python3.13 source package"
if ! { apt-get "${APT[@]}" update -qq &&
       (cd "$WORK/src" && apt-get "${APT[@]}" source --download-only -qq python3.13); } >"$WORK/apt.log" 2>&1; then
    tail -5 "$WORK/apt.log" >&2
    say "the source package cannot be had"
    exit 1
fi
tarball=$(ls "$WORK"/src/python3.13_*.orig.tar.xz)
version=$(basename "$tarball" | sed 's/^python3.13_\(.*\)\.orig\.tar\.xz$/\1/')
prefix="$CACHE/python3.13t-$version"
say "building CPython $version --disable-gil into $prefix"
tar -xJf "$tarball" -C "$WORK/src"
cd "$WORK/src/Python-$version"
rm -rf "$prefix"
if ! { ./configure --disable-gil --prefix="$prefix" --with-ensurepip=no --disable-test-modules &&
       make -j2 && make altinstall; } >"$WORK/build.log" 2>&1; then
    tail -20 "$WORK/build.log" >&2
    rm -rf "$prefix"
    say "the build failed"
    exit 1
fi
"$prefix/bin/python3.13t" -c 'import sys; assert not sys._is_gil_enabled(); print(sys.version)' >&2
echo "$prefix"
