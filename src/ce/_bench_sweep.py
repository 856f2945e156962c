"""`python -m ce bench --sweep`: ns per logit against the class count, ce and its peers.

Every class count C of the grid gets the same number of logits (N = 2^21 / C rows, integer
labels), so a cost per logit that jumps with C shows as a step in the table and the plot.
ce, PyTorch, JAX and NumPy run on the same arrays, taking turns every repetition (a burst
of 5 calls each, see ce._bench.interleaved_medians); the table has medians in ns per logit
and ce's lead over the faster of PyTorch and JAX (their time / ce's). Also: few wide rows
(1 x 262144, 4 x 128256) on 1 and 2 threads, and a cold-cache table at 2^26 logits, the
caches flushed by a buffer larger than the last-level cache.
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

import ce

from . import _bench, _kernels

CLASS_COUNTS = [2, 3, 4, 5, 8, 10, 12, 16, 17, 20, 24, 32, 48, 64, 96, 100, 128, 200, 256, 384,
                500, 512, 1000, 2048, 4096, 10000, 32000, 50000, 128256, 262144]
QUICK_CLASS_COUNTS = [2, 10, 16, 17, 32, 64, 100, 256, 1000, 32000, 262144]
LOGITS = 1 << 21
WIDE_SHAPES = [(1, 262144), (4, 128256)]
COLD_LOGITS = 1 << 26
COLD_CLASS_COUNTS = [10, 16, 256, 1000, 32000]
MODES = ("forward", "fused")


def implementations(x, y, peers):
    """{name: (forward, fused)} of the peers that are installed."""
    impls = {}
    for name, maker in _bench.PEERS:
        if name in peers:
            pair = maker(x, y)
            if pair is not None:
                impls[name] = pair
    return impls


def lead(ns):
    """ce's lead over the faster of torch and jax: their time / ce's (None without them)."""
    peers = [ns[k] for k in ("torch", "jax") if k in ns]
    return min(peers) / ns["ce"] if peers else None


def sweep(classes=CLASS_COUNTS, dtypes=(np.float32, np.float64), budget_s=1.0,
          peers=("ce", "torch", "jax", "numpy"), logits=LOGITS, log=print):
    """One row per (dtype, C): {"dtype", "c", "n", "forward"/"fused": {impl: ns per logit},
    "forward_lead"/"fused_lead": the faster of torch and jax over ce, or None}."""
    rows = []
    for dtype in dtypes:
        for c in classes:
            n = max(1, logits // c)
            x, y = _bench.make_data(n, c, dtype)
            impls = implementations(x, y, set(peers) | {"ce"})
            row = {"dtype": np.dtype(dtype).name, "c": c, "n": n}
            for index, mode in enumerate(MODES):
                med, reps = _bench.interleaved_medians({k: v[index] for k, v in impls.items()},
                                                       budget_s)
                row[mode] = {k: t / (n * c) * 1e9 for k, t in med.items()}
                row[mode + "_lead"] = lead(row[mode])
                row[mode + "_reps"] = reps
            rows.append(row)
            log(format_row(row))
    return rows


def format_row(row):
    parts = [f"{row['dtype']:8s} C={row['c']:<7d}"]
    for mode in MODES:
        cells = " ".join(f"{k} {v:.3f}" for k, v in row[mode].items())
        ratio = row[mode + "_lead"]
        parts.append(f"{mode} ns/logit: {cells}" + (f" (lead {ratio:.2f}x)" if ratio else ""))
    return " | ".join(parts)


def wide_rows(shapes=WIDE_SHAPES, dtype=np.float32, budget_s=1.0, log=print):
    """Few rows, many classes: ce on 1 and 2 threads, interleaved; speed-up = t1 / t2."""
    out = []
    for n, c in shapes:
        x, y = _bench.make_data(n, c, dtype)
        calls = {}
        for threads in (1, 2):
            calls[f"forward {threads}"] = (lambda k=threads: ce.cross_entropy(x, y, n_threads=k))
            calls[f"fused {threads}"] = (lambda k=threads: ce.cross_entropy_with_grad(x, y, n_threads=k))
        med, _ = _bench.interleaved_medians(calls, budget_s)
        row = {"n": n, "c": c, "dtype": np.dtype(dtype).name}
        for mode in MODES:
            row[mode] = {"1": med[f"{mode} 1"], "2": med[f"{mode} 2"],
                         "speedup": med[f"{mode} 1"] / med[f"{mode} 2"]}
        out.append(row)
        log(f"{n} x {c}: " + ", ".join(
            f"{m} {_bench.fmt_time(row[m]['1'])} on 1 thread, {_bench.fmt_time(row[m]['2'])} on 2 "
            f"({row[m]['speedup']:.2f}x)" for m in MODES))
    return out


def cold(classes=COLD_CLASS_COUNTS, logits=COLD_LOGITS, budget_s=3.0, log=print):
    """ce on arrays of `logits` float32 logits, every call after a flush of the caches."""
    return _bench.cold_runs([(max(1, logits // c), c) for c in classes], budget_s, log)


def markdown(rows, wide, cold_rows, bw, info):
    lines = [f"Machine: {info['cpu']}, {info['threads']} threads, SIMD {info['simd']}; "
             f"{info['logits']} logits per class count, medians in ns per logit (implementations "
             "take turns); lead: the faster of torch and jax / ce (above 1: ce is faster).", ""]
    impls = [k for k in ("ce", "torch", "jax", "numpy") if any(k in r["forward"] for r in rows)]
    for dtype in sorted({r["dtype"] for r in rows}, key=lambda d: d != "float32"):
        head = ["C"] + [f"{k} fwd" for k in impls] + ["lead fwd"] + \
            [f"{k} fused" for k in impls] + ["lead fused"]
        lines += [f"{dtype}:", "", "| " + " | ".join(head) + " |",
                  "|" + "---:|" * len(head)]
        for r in rows:
            if r["dtype"] != dtype:
                continue
            cells = [str(r["c"])]
            for mode in MODES:
                cells += [f"{r[mode][k]:.3f}" if k in r[mode] else "-" for k in impls]
                ratio = r[mode + "_lead"]
                cells.append(f"{ratio:.2f}x" if ratio else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if wide:
        lines += ["Few wide rows (ce, float32): 1 thread vs 2.", "",
                  "| N x C | forward 1 thread | 2 threads | speed-up | fused 1 thread | 2 threads | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in wide:
            cells = [f"{_bench.fmt_time(r[m]['1'])} | {_bench.fmt_time(r[m]['2'])} | "
                     f"{r[m]['speedup']:.2f}x" for m in MODES]
            lines.append(f"| {r['n']} x {r['c']} | " + " | ".join(cells) + " |")
        lines.append("")
    if cold_rows:
        lines += [f"Cold cache (ce, float32, {_bench.fmt_bytes(info['flush_bytes'])} read before "
                  f"every call; last-level cache {_bench.fmt_bytes(info['llc_bytes'])}); bandwidth "
                  f"probe: read {bw['read']:.1f} GB/s, copy {bw['copy']:.1f} GB/s (read+write).", "",
                  ] + _bench.cold_table(cold_rows, bw)
    return "\n".join(lines).rstrip() + "\n"


def plot(rows, path):
    """ns per logit against C (log x), one panel per dtype and mode. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    dtypes = sorted({r["dtype"] for r in rows}, key=lambda d: d != "float32")
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(11, 4.2 * len(dtypes)), squeeze=False)
    for axes_row, dtype in zip(axes, dtypes):
        mine = sorted((r for r in rows if r["dtype"] == dtype), key=lambda r: r["c"])
        for ax, mode in zip(axes_row, MODES):
            for impl in ("ce", "torch", "jax", "numpy"):
                pts = [(r["c"], r[mode][impl]) for r in mine if impl in r[mode]]
                if pts:
                    ax.semilogx(*zip(*pts), marker="o", label=impl)
            ax.set_xlabel("classes C")
            ax.set_ylabel("ns per logit")
            ax.set_title(f"{mode} ({dtype})")
            ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ce bench --sweep",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help=f"C in {QUICK_CLASS_COUNTS}, a quarter of the time per point, no cold runs")
    ap.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    ap.add_argument("--peers", default="ce,torch,jax,numpy", help="comma-separated implementations")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per point and mode (default 1, 0.25 with --quick)")
    ap.add_argument("--logits", type=int, default=LOGITS,
                    help=f"logits per class count (default 2^21 = {LOGITS}; N = logits / C)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache table")
    ap.add_argument("--no-wide", action="store_true", help="skip the few-wide-rows table")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    ap.add_argument("--plot", metavar="FILE.png", help="ns per logit against C (needs matplotlib)")
    args = ap.parse_args(argv)
    dtypes = [np.float32, np.float64] if args.dtype == "both" else [np.dtype(args.dtype).type]
    budget = args.budget if args.budget is not None else (0.25 if args.quick else 1.0)
    info = {"cpu": _bench.cpu_name(), "threads": _kernels.max_threads(),
            "simd": _kernels.simd_level(), "logits": args.logits, "python": platform.python_version(),
            "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"),
            "llc_bytes": _bench.last_level_cache_bytes(), "flush_bytes": _bench.flush_bytes()}
    print(f"ce bench --sweep on {info['cpu']}, {info['threads']} threads, {info['simd']}", flush=True)
    log = (lambda s: print(s, flush=True))
    rows = sweep(QUICK_CLASS_COUNTS if args.quick else CLASS_COUNTS, dtypes, budget,
                 args.peers.split(","), logits=args.logits, log=log)
    wide = [] if args.no_wide else wide_rows(budget_s=budget, log=log)
    cold_rows, bw = [], None
    if not (args.no_cold or args.quick):
        bw = _bench.bandwidth()
        cold_rows = cold(budget_s=3 * budget, log=log)
    table = markdown(rows, wide, cold_rows, bw, info)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "bandwidth": bw, "sweep": rows, "wide": wide,
                       "cold": cold_rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
