#!/bin/sh
# Check ce's type stubs against the installed, compiled package:
#   stubtest compares src/ce/_kernels.pyi and _exact.pyi with the compiled ce._kernels and
#   ce._exact (names and signatures), and mypy checks the package as a user's type checker sees it.
# Usage: tools/check_stubs.sh [python]   (needs mypy: pip install mypy)
# Run it from outside the source tree or with ce installed (editable is fine).
set -eu
PY=${1:-python}
ALLOW=$(mktemp)
trap 'rm -f "$ALLOW"' EXIT
# Names Cython adds to every extension (Cython 3.3 also leaks a cdef class's pickling helpers
# into the module), and Call.__init__, which Cython gives no signature: the stub has the real one.
cat > "$ALLOW" <<'LIST'
ce._kernels.__pyx_capi__
ce._kernels.__test__
ce._kernels.__reduce_cython__
ce._kernels.__setstate_cython__
ce._kernels.Call.__init__
ce._exact.__test__
LIST
cd "${TMPDIR:-/tmp}"
"$PY" -m mypy.stubtest ce._kernels ce._exact --allowlist "$ALLOW"
# optax/torch/mygrad may be missing or untyped where this runs: their imports are not errors.
"$PY" -m mypy --ignore-missing-imports -p ce
