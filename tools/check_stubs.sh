#!/bin/sh
# Check ce's type stubs against the installed, compiled package:
#   stubtest compares src/ce/_kernels.pyi with the compiled ce._kernels (names and
#   signatures), and mypy checks the package as a user's type checker sees it.
# Usage: tools/check_stubs.sh [python]   (needs mypy: pip install mypy)
# Run it from outside the source tree or with ce installed (editable is fine).
set -eu
PY=${1:-python}
ALLOW=$(mktemp)
trap 'rm -f "$ALLOW"' EXIT
# Module attributes Cython adds to every extension; not part of ce's API.
cat > "$ALLOW" <<'LIST'
ce._kernels.__pyx_capi__
ce._kernels.__test__
LIST
cd "${TMPDIR:-/tmp}"
"$PY" -m mypy.stubtest ce._kernels --allowlist "$ALLOW"
# optax/torch/mygrad may be missing or untyped where this runs: their imports are not errors.
"$PY" -m mypy --ignore-missing-imports -p ce
