"""Arrays of more than 2**31 elements (slow: deselected by default; run with
`python -m pytest -m slow tests/test_huge.py`). Needs about 9.5 GB of free memory per test; the
tests run one after the other, each in a subprocess of its own so that its peak memory is its
own and is returned to the system afterwards.

Two layouts of float32 logits with 2**31 + 2**20 elements (8.6 GB):

* "rows":    (65568, 32768), class axis last: the row kernel; row offsets row * 32768 go past
             2**31 from row 65536 on;
* "columns": (4096, 524544), axis=0: the class-major kernel; class offsets c * 524544 go past
             2**31 from class 4095 on.

Each child fills the logits in chunks (np.empty + in-place fill: no second copy), computes the
mean loss with ce and with a chunked float64 reference, then the fused loss and gradient with
out=logits (in place: still no second copy), and checks gradient entries before and beyond flat
index 2**31, including an ignored row (exact zeros) past it. It reports times and its peak RSS,
which must stay within 1 GiB of the logits themselves.
"""
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ELEMENTS = 2**31 + 2**20
LAYOUTS = {
    "rows": dict(shape=(65568, 32768), axis=-1),
    "columns": dict(shape=(4096, 524544), axis=0),
}
CHUNK = 2**24  # elements per fill / reference chunk (64 MB of float32)


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(layout):
    """The work of one test, in a fresh interpreter; prints one JSON line."""
    import ce

    spec = LAYOUTS[layout]
    shape, axis = spec["shape"], spec["axis"]
    assert math.prod(shape) == ELEMENTS
    times = {}
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    x = np.empty(shape, dtype=np.float32)
    flat = x.reshape(-1)
    # a few random chunks, reused with a different offset each time (random normals for all
    # 2**31 elements would take most of the test's time)
    pool = [rng.standard_normal(CHUNK, dtype=np.float32) * 3.0 for _ in range(4)]
    for k, lo in enumerate(range(0, ELEMENTS, CHUNK)):
        part = flat[lo:lo + CHUNK]
        np.add(pool[k % 4][:part.size], np.float32((k % 13) * 0.25), out=part)
    # rows: examples along the other axis; C classes along `axis`
    C = shape[axis]
    N = ELEMENTS // C
    y = rng.integers(0, C, N)
    # ignore the last example and one just past flat index 2**31
    big_row = (2**31 // C + 1) if axis == -1 else (2**31 % N + 1)
    y[[N - 1, big_row + 1]] = -100
    times["fill"] = time.perf_counter() - t0

    def row(i):  # logits of example i, as float64
        return (x[i] if axis == -1 else x[:, i]).astype(np.float64)

    # float64 reference of the mean loss, in chunks of examples
    t0 = time.perf_counter()
    total, count = 0.0, 0
    step = max(1, CHUNK // C)
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        block = (x[lo:hi] if axis == -1 else x[:, lo:hi].T).astype(np.float64)
        lab = y[lo:hi]
        keep = lab != -100
        m = block.max(axis=1)
        lse = m + np.log(np.exp(block - m[:, None]).sum(axis=1))
        picked = block[np.arange(hi - lo), np.where(keep, lab, 0)]
        total += float(np.sum((lse - picked)[keep]))
        count += int(keep.sum())
        del block
    ref_loss = total / count
    times["reference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loss = ce.cross_entropy(x, y, axis=axis)
    times["cross_entropy"] = time.perf_counter() - t0
    lse_ce = ce.logsumexp(x, axis=axis)

    # expected gradient rows, saved before the in-place call overwrites the logits
    checks = sorted({0, 2**31 // C if axis == -1 else 2**31 % N, big_row, big_row + 1, N - 1})
    expected = {}
    for i in checks:
        r = row(i)
        p = np.exp(r - r.max())
        p /= p.sum()
        if y[i] != -100:
            p[y[i]] -= 1.0
        else:
            p[:] = 0.0
        expected[i] = p / count
    # the largest flat offset of each checked example's logits
    flat_index = {i: (i * C + C - 1 if axis == -1 else (C - 1) * N + i) for i in checks}

    t0 = time.perf_counter()
    loss2, g = ce.cross_entropy_with_grad(x, y, axis=axis, out=x)
    times["with_grad in place"] = time.perf_counter() - t0
    assert g is x
    worst = 0.0
    for i in checks:
        got = (g[i] if axis == -1 else g[:, i]).astype(np.float64)
        if y[i] == -100:
            assert np.all(got == 0), f"ignored example {i} has a non-zero gradient"
        err = float(np.max(np.abs(got - expected[i]))) * count
        worst = max(worst, err)
    print(json.dumps({
        "layout": layout, "shape": shape, "elements": ELEMENTS, "loss": float(loss),
        "loss_fused": float(loss2), "ref_loss": ref_loss, "lse_finite": bool(np.isfinite(lse_ce).all()),
        "lse_shape": list(lse_ce.shape), "checked_rows": checks,
        "checked_flat_offsets": [flat_index[i] for i in checks], "max_grad_error_x_count": worst,
        "times": times, "peak_rss": peak_rss(), "logits_bytes": x.nbytes,
    }))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_more_than_2_31_elements(layout):
    need = ELEMENTS * 4 + 1.5 * 2**30
    if mem_available() < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of available memory")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), layout], capture_output=True,
                          text=True, timeout=1800)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{layout}: {r['elements']} float32 logits {tuple(r['shape'])}, wall {wall:.0f} s, "
          f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB (logits {r['logits_bytes'] / 2**30:.2f} GiB), "
          + ", ".join(f"{k} {v:.1f} s" for k, v in r["times"].items()))
    assert r["elements"] > 2**31
    assert math.isclose(r["loss"], r["ref_loss"], rel_tol=2e-5), (r["loss"], r["ref_loss"])
    assert r["loss_fused"] == r["loss"]
    assert r["lse_finite"]
    assert max(r["checked_flat_offsets"]) > 2**31
    assert r["max_grad_error_x_count"] < 1e-5, r["max_grad_error_x_count"]
    # no N x C temporaries: the logits plus O(N) and the reference's chunks
    assert r["peak_rss"] < r["logits_bytes"] + 2**30, r["peak_rss"]


if __name__ == "__main__":
    child(sys.argv[1])
