"""`python -m ce bench --linear`: ce.linear_cross_entropy against PyTorch's
F.linear_cross_entropy (reference path, options=None, and chunked path,
options=LinearCrossEntropyOptions()), in one process.

Implementations take turns call by call (forward, then forward+backward), so
machine noise hits all of them alike; the table reports median wall times and
the peak memory above the inputs. Memory is measured in separate calls: the
peak resident set (VmHWM, reset through /proc/self/clear_refs before each
call, glibc told to return large blocks to the system) minus the resident set
before the call, for all three; for ce also tracemalloc's peak (NumPy's
allocations). The gradients a forward+backward returns are part of its
peak. ce's BLAS share is measured two ways: within one ce call (the time
outside ce's cross-entropy kernel, which is the products and a few O(V) adds),
and as the time of the same chunked products alone over ce's time.
"""
import argparse
import ctypes
import gc
import json
import sys
import time
import tracemalloc

import numpy as np

from . import _kernels, _linear
from ._linear import _gemm_accumulate, default_chunk_rows, linear_cross_entropy, \
    linear_cross_entropy_with_grad

SHAPES = [(4096, 512, 32000), (2048, 1024, 128256)]
QUICK_SHAPES = [(1024, 256, 8000), (1024, 512, 32000)]


def _quiet_malloc():
    """Make glibc give every block of 1 MiB or more back on free, so that the
    resident set follows what is alive (no-op off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _rss():
    """(current, peak) resident set in bytes, from /proc/self/status."""
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) << 10
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) << 10
    return cur, peak


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_above(fn):
    """Peak resident set during fn() minus the resident set before it (bytes)."""
    gc.collect()
    if not _reset_peak():
        return None
    before, _ = _rss()
    out = fn()
    _, peak = _rss()
    del out
    return max(0, peak - before)


def peak_traced(fn):
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del out
    return peak


def implementations(h, w, y):
    """{name: (forward, forward+backward)}; torch entries when torch is installed."""
    impl = {"ce": (lambda: linear_cross_entropy(h, w, y),
                   lambda: linear_cross_entropy_with_grad(h, w, y))}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return impl
    th, tw, ty = torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(y)

    def torch_pair(options):
        def forward():
            with torch.no_grad():
                return F.linear_cross_entropy(th, tw, ty, options=options)

        def both():
            a = th.detach().requires_grad_()
            b = tw.detach().requires_grad_()
            loss = F.linear_cross_entropy(a, b, ty, options=options)
            loss.backward()
            return loss, a.grad, b.grad
        return forward, both

    impl["torch reference"] = torch_pair(None)
    impl["torch chunked"] = torch_pair(torch.nn.LinearCrossEntropyOptions())
    return impl


def blas_only(h, w):
    """ce's chunked matrix products alone (same chunks, same buffers)."""
    n, d = h.shape
    v = w.shape[0]
    m = default_chunk_rows(n, d, v, h.itemsize)
    buf = np.empty((m, v), dtype=h.dtype)

    def forward():
        for s in range(0, n, m):
            np.matmul(h[s:s + m], w.T, out=buf[: min(m, n - s)])

    def both():
        gh, gw = np.empty_like(h), np.zeros_like(w)
        add_into = _gemm_accumulate(gw)
        for s in range(0, n, m):
            g = buf[: min(m, n - s)]
            np.matmul(h[s:s + m], w.T, out=g)
            np.matmul(g, w, out=gh[s:s + m])
            add_into(g, h[s:s + m])
        return gh, gw
    return forward, both


def outside_kernel_share(fn):
    """Fraction of one fn() call spent outside ce's kernel (timed around it)."""
    real = _linear._Linear.run
    spent = [0.0]

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    _linear._Linear.run = timed
    try:
        t = time.perf_counter()
        fn()
        total = time.perf_counter() - t
    finally:
        _linear._Linear.run = real
    return 1.0 - spent[0] / total


def interleaved(funcs, reps):
    """Median wall time per name; one call each in turn, reps rounds."""
    times = {k: [] for k in funcs}
    for _ in range(reps):
        for k, f in funcs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def run(shapes, reps, log=print):
    rows = []
    for n, d, v in shapes:
        rng = np.random.default_rng(0)
        h = (rng.standard_normal((n, d), dtype=np.float32) * 0.5).astype(np.float32)
        w = (rng.standard_normal((v, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
        y = rng.integers(0, v, n)
        impl = implementations(h, w, y)
        blas = blas_only(h, w)
        for i, which in enumerate(("forward", "forward+backward")):
            funcs = {k: f[i] for k, f in impl.items()}
            funcs["ce BLAS only"] = blas[i]
            for f in funcs.values():  # warm-up (thread pools, first-touch)
                f()
            t = interleaved(funcs, reps)
            mem = {k: peak_rss_above(f) for k, f in funcs.items() if k != "ce BLAS only"}
            traced = peak_traced(funcs["ce"])
            share = outside_kernel_share(funcs["ce"])
            row = {"n": n, "d": d, "v": v, "which": which, "time": t, "peak_rss": mem,
                   "blas_share": share, "ce_traced": traced, "chunk_rows": default_chunk_rows(n, d, v, 4),
                   "grad_bytes": (h.nbytes + w.nbytes) if i else 0}
            rows.append(row)
            log(format_row(row))
    return rows


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.0f} MB"


def format_row(r):
    t, m = r["time"], r["peak_rss"]
    cells = [f"{r['n']}x{r['d']}x{r['v']} {r['which']}:"]
    for k in t:
        if k == "ce BLAS only":
            continue
        cells.append(f"{k} {t[k]:.3f} s / {_mb(m.get(k))}")
    cells.append(f"ce BLAS share {r['blas_share']:.0%} (products alone: "
                 f"{t['ce BLAS only'] / t['ce']:.0%} of ce's time)")
    return "  ".join(cells)


def markdown(rows, info):
    lines = [
        f"Machine: {info['cpu']}, {info['threads']} threads; float32; median of "
        f"{info['reps']} interleaved calls; memory: peak RSS above the inputs (gradients "
        "included; float32 gradients of hidden and weight: N*D*4 + V*D*4 bytes), ce also by "
        "tracemalloc.",
        "",
        "| N x D x V | pass | ce | torch chunked | torch reference | ce / chunked time | "
        "ce / chunked memory | ce BLAS share | products alone / ce |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, m = r["time"], r["peak_rss"]

        def cell(k):
            return f"{t[k]:.3f} s, {_mb(m.get(k))}" if k in t else "-"
        ratio_t = f"{t['ce'] / t['torch chunked']:.2f}x" if "torch chunked" in t else "-"
        ratio_m = "-"
        if m.get("torch chunked") and m.get("ce") is not None:
            ratio_m = f"{m['ce'] / m['torch chunked']:.2f}x"
            extra_ce, extra_torch = m["ce"] - r["grad_bytes"], m["torch chunked"] - r["grad_bytes"]
            if r["grad_bytes"] and extra_torch > 0:  # above the gradients both return
                ratio_m += f" ({max(extra_ce, 0) / extra_torch:.2f}x above the gradients)"
        lines.append(f"| {r['n']} x {r['d']} x {r['v']} | {r['which']} | {cell('ce')} "
                     f"(traced {_mb(r['ce_traced'])}) | {cell('torch chunked')} | "
                     f"{cell('torch reference')} | {ratio_t} | {ratio_m} | "
                     f"{r['blas_share']:.0%} | {t['ce BLAS only'] / t['ce']:.0%} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ce bench --linear",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--linear", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smaller shapes (about a minute)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the README table")
    args = ap.parse_args(argv)
    _quiet_malloc()
    from ._bench import cpu_name
    info = {"cpu": cpu_name(), "threads": _kernels.max_threads(), "reps": args.reps}
    print(f"ce bench --linear on {info['cpu']}, {info['threads']} threads", flush=True)
    rows = run(QUICK_SHAPES if args.quick else SHAPES, args.reps,
               log=lambda s: print(s, flush=True))
    table = markdown(rows, info)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
