"""`python -m ce bench`: ce against plain NumPy, PyTorch and JAX, in one process.

Every implementation is timed on the same arrays, interleaved call by call so
that machine noise hits all of them alike; the table reports medians and the
peers' time divided by ce's. A bandwidth probe (OpenMP, all threads) gives the
machine's read and copy bandwidth, and cold-cache runs (a large buffer is read
between calls) report ce's share of it.
"""
import argparse
import glob
import json
import os
import platform
import sys
import time

import numpy as np

import ce

from . import _kernels

SHAPES = [(1, 10), (64, 1000), (4096, 1000), (512, 32000), (64, 128256), (1000000, 10)]
QUICK_SHAPES = [(1, 10), (64, 1000), (4096, 1000), (512, 32000), (1000000, 10)]
COLD_SHAPES = [(4096, 1000), (512, 32000), (64, 128256), (1000000, 10)]


# ---- implementations: each returns (forward, fused) callables or None ----

def numpy_impl(x, y):
    rows = np.arange(x.shape[0])

    def forward():
        m = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
        return (lse - x[rows, y]).mean()

    def fused():
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        loss = (np.log(s[:, 0]) + m[:, 0] - x[rows, y]).mean()
        g = e / s
        g[rows, y] -= 1
        g /= x.shape[0]
        return loss, g

    return forward, fused


def ce_impl(x, y):
    return (lambda: ce.cross_entropy(x, y)), (lambda: ce.cross_entropy_with_grad(x, y))


def torch_impl(x, y):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def forward():
        with torch.no_grad():
            return F.cross_entropy(tx, ty)

    def fused():
        a = tx.detach().requires_grad_()
        loss = F.cross_entropy(a, ty)
        loss.backward()
        return loss, a.grad

    return forward, fused


def jax_impl(x, y):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    try:
        import optax

        def loss_fn(a, b):
            return optax.softmax_cross_entropy_with_integer_labels(a, b).mean()
    except ImportError:
        def loss_fn(a, b):
            lp = jax.nn.log_softmax(a, axis=-1)
            return -jnp.take_along_axis(lp, b[:, None], axis=-1).mean()
    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    jx, jy = jax.device_put(x), jax.device_put(y.astype(np.int32))
    f = jax.jit(loss_fn)
    vg = jax.jit(jax.value_and_grad(loss_fn))
    f(jx, jy).block_until_ready()
    jax.block_until_ready(vg(jx, jy))
    return (lambda: f(jx, jy).block_until_ready()), (lambda: jax.block_until_ready(vg(jx, jy)))


PEERS = [("ce", ce_impl), ("numpy", numpy_impl), ("torch", torch_impl), ("jax", jax_impl)]


# ---- timing ----

def interleaved_medians(funcs, budget_s, min_reps=5, max_reps=20000, flush=None, burst=5):
    """Median seconds per call of each function. Implementations take turns in
    bursts of `burst` calls: turns spread machine noise over all of them, and
    bursts keep one library's idle spinning worker threads (OpenMP, XLA) from
    being charged to the next library's first call."""
    for f in funcs.values():
        f()  # warm up (and JIT)
    t0 = time.perf_counter()
    for f in funcs.values():
        f()
    one_round = max(time.perf_counter() - t0, 1e-7)
    reps = int(min(max_reps, max(min_reps, budget_s / one_round)))
    times = {k: [] for k in funcs}
    for _ in range(max(1, reps // burst)):
        for k, f in funcs.items():
            for _ in range(burst):
                if flush is not None:
                    flush()
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}, reps


def bandwidth(n_threads=0, size_bytes=1 << 30, reps=5):
    """Best-of-reps GB/s for read, write and copy (copy counts read + write)."""
    a = np.ones(size_bytes // 16)
    b = np.empty_like(a)
    out = {}
    for kind in ("read", "write", "copy"):
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            _kernels.probe_bandwidth(kind, a, b, n_threads)
            best = min(best, time.perf_counter() - t)
        moved = a.nbytes * (2 if kind == "copy" else 1)
        out[kind] = moved / best / 1e9
    return out


def last_level_cache_bytes():
    """Size of the largest data cache, from Linux's sysfs (or getconf's LEVEL3_CACHE_SIZE);
    None when the OS does not say."""
    best = 0
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale > 1 else text
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    if not best:
        try:
            best = max(0, os.sysconf("SC_LEVEL3_CACHE_SIZE"))
        except (ValueError, OSError, AttributeError):
            best = 0
    return best or None


def flush_bytes():
    """A cold-cache flush: 3x the last-level cache, at least 64 MiB (1 GiB when unknown)."""
    llc = last_level_cache_bytes()
    return max(3 * llc, 64 << 20) if llc else 1 << 30


def fmt_bytes(n):
    return f"{n / (1 << 20):.0f} MiB" if n else "unknown"


def cache_flusher(size_bytes=None):
    """A function that reads a buffer larger than the last-level cache (all threads)."""
    buf = np.ones((size_bytes or flush_bytes()) // 8)

    def flush():
        _kernels.probe_bandwidth("read", buf, buf, 0)
    return flush


def make_data(n, c, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c), dtype=np.float32).astype(dtype, copy=False)
    y = rng.integers(0, c, n)
    return x, y


def run(shapes, dtypes, budget_s, peers, cold, log=print):
    results = []
    for dtype in dtypes:
        for n, c in shapes:
            x, y = make_data(n, c, dtype)
            impls = {}
            for name, maker in PEERS:
                if name not in peers:
                    continue
                pair = maker(x, y)
                if pair is not None:
                    impls[name] = pair
            row = {"n": n, "c": c, "dtype": np.dtype(dtype).name}
            for which, idx in (("forward", 0), ("fused", 1)):
                med, reps = interleaved_medians({k: v[idx] for k, v in impls.items()}, budget_s)
                row[which] = med
                row[which + "_reps"] = reps
            results.append(row)
            log(format_row(row))
    cold_rows = cold_runs(COLD_SHAPES, budget_s * 3) if cold else []
    return results, cold_rows


def cold_runs(shapes, budget_s, log=None, flush=None):
    """ce on float32 (n, c) problems, every call after a flush of the caches (`flush`, by
    default a read of 3x the last-level cache); the fused call writes into one preallocated
    gradient (out=), so no page faults are timed."""
    flush = flush or cache_flusher()
    rows = []
    for n, c in shapes:
        x, y = make_data(n, c, np.float32)
        g = np.empty_like(x)
        calls = {"forward": (lambda: ce.cross_entropy(x, y)),
                 "fused": (lambda: ce.cross_entropy_with_grad(x, y, out=g))}
        med, _ = interleaved_medians(calls, budget_s, min_reps=5, max_reps=30, flush=flush)
        read_bytes = x.nbytes + y.nbytes
        rows.append({"n": n, "c": c, "forward": med["forward"], "fused": med["fused"],
                     "forward_bytes": read_bytes, "fused_bytes": read_bytes + x.nbytes})
        if log:
            log(f"cold {n} x {c}: forward {fmt_time(med['forward'])}, fused {fmt_time(med['fused'])}")
        del x, y, g
    return rows


def cold_table(cold_rows, bw):
    """Markdown lines: the cold runs' time and share of the probed bandwidth."""
    lines = ["| N x C | forward | % of read bandwidth | fused | % of copy bandwidth |",
             "|---|---:|---:|---:|---:|"]
    for r in cold_rows:
        fr = r["forward_bytes"] / r["forward"] / 1e9
        fu = r["fused_bytes"] / r["fused"] / 1e9
        lines.append(f"| {r['n']} x {r['c']} | {fmt_time(r['forward'])} | "
                     f"{100 * fr / bw['read']:.0f}% ({fr:.1f} GB/s) | {fmt_time(r['fused'])} | "
                     f"{100 * fu / bw['copy']:.0f}% ({fu:.1f} GB/s) |")
    return lines


def format_row(row):
    parts = [f"{row['dtype']:8s} {row['n']:>8d} x {row['c']:<7d}"]
    for which in ("forward", "fused"):
        med = row[which]
        base = med["ce"]
        cells = [f"ce {fmt_time(base)}"]
        for k, v in med.items():
            if k != "ce":
                cells.append(f"{k} {fmt_time(v)} ({v / base:.1f}x)")
        parts.append(f"{which}: " + ", ".join(cells))
    return " | ".join(parts)


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    return f"{s * 1e3:.2f} ms"


def markdown(results, cold_rows, bw, info):
    lines = [
        f"Machine: {info['cpu']}, {info['threads']} threads, SIMD {info['simd']}; "
        f"bandwidth probe: read {bw['read']:.1f} GB/s, copy {bw['copy']:.1f} GB/s "
        "(read+write counted), write {w:.1f} GB/s.".format(w=bw["write"]),
        "",
        "Medians (implementations take turns, 5 calls each); in brackets the peer's time / ce's "
        "time (higher: ce faster).",
        "",
        "| dtype | N x C | ce fwd | torch fwd | jax fwd | numpy fwd | ce fused | torch fwd+bwd | jax value_and_grad | numpy fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = []
        for which in ("forward", "fused"):
            med = r[which]
            base = med["ce"]
            cells.append(fmt_time(base))
            for k in ("torch", "jax", "numpy"):
                cells.append(f"{fmt_time(med[k])} ({med[k] / base:.1f}x)" if k in med else "-")
        lines.append(f"| {r['dtype']} | {r['n']} x {r['c']} | " + " | ".join(cells) + " |")
    if cold_rows:
        lines += ["", f"Cold cache (float32, {fmt_bytes(flush_bytes())} read before every call, "
                  f"3x the last-level cache):", ""] + cold_table(cold_rows, bw)
    return "\n".join(lines)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which in zip(axes, ("forward", "fused")):
        rows = [r for r in results if r["dtype"] == "float32"]
        rows.sort(key=lambda r: r["n"] * r["c"])
        for impl in ("ce", "torch", "jax", "numpy"):
            pts = [(r["n"] * r["c"], r[which][impl] / (r["n"] * r["c"]) * 1e9)
                   for r in rows if impl in r[which]]
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=impl)
        ax.set_xlabel("N x C (elements)")
        ax.set_ylabel("ns per element")
        ax.set_title(f"{which} (float32)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ---- per-call overhead: the Python layer's cost on top of the kernel run ----

OVERHEAD_SHAPES = [(1, 10), (64, 10), (1, 1000)]


def overhead_cases(n, c, dtype=np.float32, seed=0):
    """(label, public function, its keywords): the common call and every option."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)).astype(dtype)
    y = rng.integers(0, c, n)
    probs = rng.random((n, c)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    w, sw = rng.random(c).astype(dtype), rng.random(n)
    loss, fused = ce.cross_entropy, ce.cross_entropy_with_grad
    every = dict(axis=1, reduction="sum", weight=w, sample_weight=sw, ignore_index=3,
                 label_smoothing=0.1, z_loss=1e-4, softcap=30.0, n_threads=1)
    return x, y, probs, [
        ("common call", loss, {}),
        ("common call, fused", fused, {}),
        ("axis=1", loss, dict(axis=1)),
        ("reduction='sum'", loss, dict(reduction="sum")),
        ("reduction='none'", loss, dict(reduction="none")),
        ("ignore_index=3", loss, dict(ignore_index=3)),
        ("label_smoothing=0.1", loss, dict(label_smoothing=0.1)),
        ("weight=", loss, dict(weight=w)),
        ("sample_weight=", loss, dict(sample_weight=sw)),
        ("z_loss=1e-4", loss, dict(z_loss=1e-4)),
        ("softcap=30", loss, dict(softcap=30.0)),
        ("n_threads=1", loss, dict(n_threads=1)),
        ("dense target", loss, dict(target="probs")),
        ("from_logits=False", loss, dict(logits="probs", from_logits=False)),
        ("fused, out=", fused, dict(out=np.empty_like(x))),
        ("fused, return_lse=True", fused, dict(return_lse=True)),
        ("fused, reduction='none', grad_output=", fused,
         dict(reduction="none", grad_output=rng.random(n))),
        ("grad, lse=", ce.cross_entropy_grad, dict(lse="lse")),
        ("every option, loss", loss, every),
        ("every option, fused", fused, dict(every, out=np.empty_like(x))),
    ]


def min_time(f, number=200, repeat=50):
    """Best mean seconds per call over `repeat` runs of `number` calls (min: the
    least disturbed run on a shared machine)."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            f()
        best = min(best, (time.perf_counter() - t) / number)
    return best


def overhead(shapes=OVERHEAD_SHAPES, log=print):
    """Per-call time of each case, of its bare kernel run (a prebuilt Call and
    preallocated outputs through ce._kernels.solve) and the difference: what the
    Python layer (normalisation, allocation, reduction) costs."""
    rows = []
    for n, c in shapes:
        x, y, probs, cases = overhead_cases(n, c)
        for label, fn, kw in cases:
            kw = dict(kw)
            logits = probs if kw.pop("logits", None) == "probs" else x
            target = probs if kw.get("target") == "probs" else y
            kw.pop("target", None)
            if kw.get("lse") == "lse":
                kw["lse"] = ce.cross_entropy_with_grad(logits, target, return_lse=True)[2]
            public = (lambda: fn(logits, target, **kw))
            call_kw = {k: v for k, v in kw.items() if k not in ("out", "return_lse")}
            call = _kernels.Call(logits=logits, target=target, **call_kw)
            outs = {}
            if fn is not ce.cross_entropy:
                outs["grad"] = np.empty_like(logits)
            if kw.get("reduction") == "none":
                outs["row_loss"] = np.empty(n)
            if kw.get("return_lse"):
                outs["row_lse"] = np.empty(n)
            bare = (lambda: _kernels.solve(call, **outs))
            t_public, t_bare = min_time(public), min_time(bare)
            rows.append({"shape": f"{n} x {c}", "case": label, "public_us": t_public * 1e6,
                         "kernel_us": t_bare * 1e6, "overhead_us": (t_public - t_bare) * 1e6})
            log(f"{n} x {c:<5} {label:40s} {t_public * 1e6:7.2f} us  kernel {t_bare * 1e6:6.2f} us  "
                f"overhead {(t_public - t_bare) * 1e6:5.2f} us")
    return rows


def overhead_markdown(rows):
    lines = ["| shape | call | per call | kernel run | overhead |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['case']} | {r['public_us']:.2f} us | {r['kernel_us']:.2f} us | "
              f"{r['overhead_us']:.2f} us |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    if "--linear" in (sys.argv[1:] if argv is None else argv):  # linear cross-entropy: its own bench
        from ._bench_linear import main as linear_main
        return linear_main(argv)
    if "--sweep" in (sys.argv[1:] if argv is None else argv):  # ns per logit against C: its own bench
        from ._bench_sweep import main as sweep_main
        return sweep_main(argv)
    ap = argparse.ArgumentParser(prog="python -m ce bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 2 minutes: fewer shapes, float32 only")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="chart of time per element (needs matplotlib)")
    ap.add_argument("--markdown", metavar="FILE", help="write the README table")
    ap.add_argument("--peers", default="ce,numpy,torch,jax", help="comma-separated implementations")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--overhead", action="store_true",
                    help="only the per-call overhead table (float32, every option; single thread "
                         "recommended: OMP_NUM_THREADS=1)")
    ap.add_argument("--sweep", action="store_true",
                    help="ns per logit for C from 2 to 262144 at 2^21 logits (see --sweep --help)")
    ap.add_argument("--linear", action="store_true",
                    help="ce.linear_cross_entropy against F.linear_cross_entropy instead (see --linear --help)")
    args = ap.parse_args(argv)
    if args.overhead:
        print(f"ce per-call overhead on {cpu_name()}, {_kernels.simd_level()}: best of 50 runs of "
              f"200 calls", flush=True)
        rows = overhead()
        print()
        print(overhead_markdown(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"overhead": rows}, f, indent=1)
        return 0
    peers = set(args.peers.split(",")) | {"ce"}
    shapes = QUICK_SHAPES if args.quick else SHAPES
    dtypes = [np.float32] if args.quick else [np.float32, np.float64]
    budget = 0.25 if args.quick else 1.0
    info = {"cpu": cpu_name(), "threads": _kernels.max_threads(), "simd": _kernels.simd_level(),
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d")}
    for mod in ("torch", "jax"):
        if mod in peers:
            try:
                info[mod] = __import__(mod).__version__
            except ImportError:
                info[mod] = None
    print(f"ce bench on {info['cpu']}, {info['threads']} threads, {info['simd']}", flush=True)
    bw = bandwidth(size_bytes=(256 << 20) if args.quick else (1 << 30))
    print("bandwidth: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items()), flush=True)
    results, cold_rows = run(shapes, dtypes, budget, peers, cold=not args.no_cold,
                             log=lambda s: print(s, flush=True))
    table = markdown(results, cold_rows, bw, info)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "bandwidth": bw, "results": results, "cold": cold_rows}, f,
                      indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
