"""`python -m ce score`: score logits on disk against labels, in bounded memory.

LOGITS and TARGET are .npy files (memory-mapped one chunk at a time), .npz
members (``file.npz:name``, or the file's first member; stored members are
memory-mapped, compressed ones decompressed as a stream) or directories of
.npy shards (sorted by name, concatenated along the first axis). The first
axis holds the examples; the rows are scored in chunks sized to
--memory-budget and the chunks' scores are merged exactly (ce.score's sums).
"""
import argparse
import json
import math
import os
import re
import struct
import sys
import time
import zipfile

import numpy as np

from . import _args
from ._score import Score, check_top_k, score

PROG = "python -m ce score"
EXAMPLE_SHAPE, EXAMPLE_SEED = (100_000, 100), 0


class UsageError(Exception):
    pass


class DataError(Exception):
    pass


# ---- sources: rows [start, stop) of an array, read one chunk at a time ----

class Memory:
    """An array already in memory."""

    def __init__(self, name, a):
        self.name, self.a, self.shape, self.dtype = name, a, a.shape, a.dtype

    def read(self, start, stop):
        return self.a[start:stop]


class Mapped:
    """A C-ordered array at `offset` in a file: each chunk is its own memory map,
    released when the chunk is dropped, so resident memory stays one chunk."""

    def __init__(self, name, path, offset, shape, dtype):
        self.name, self.path, self.offset, self.shape, self.dtype = name, path, offset, shape, dtype
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize

    def read(self, start, stop):
        if stop <= start or self.row_bytes == 0:
            return np.empty((max(stop - start, 0),) + self.shape[1:], self.dtype)
        return np.memmap(self.path, self.dtype, "r", offset=self.offset + start * self.row_bytes,
                         shape=(stop - start,) + self.shape[1:])


class Stream:
    """A C-ordered compressed .npz member, decompressed sequentially."""

    def __init__(self, name, fp, shape, dtype):
        self.name, self.fp, self.shape, self.dtype = name, fp, shape, dtype
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self.pos = 0

    def read(self, start, stop):
        if start != self.pos:
            raise RuntimeError("a compressed member is read in order")
        data = self.fp.read((stop - start) * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise DataError(f"{self.name}: the member is truncated")
        self.pos = stop
        return np.frombuffer(data, self.dtype).reshape((stop - start,) + self.shape[1:])


class Shards:
    """Sources concatenated along the first axis."""

    def __init__(self, name, parts):
        first = parts[0]
        for s in parts[1:]:
            if s.shape[1:] != first.shape[1:] or s.dtype != first.dtype:
                raise DataError(f"{name}: shard {s.name} has shape {s.shape} {s.dtype}, but "
                                f"{first.name} has {first.shape} {first.dtype}")
        self.name, self.parts, self.dtype = name, parts, first.dtype
        self.starts = np.cumsum([0] + [s.shape[0] for s in parts])
        self.shape = (int(self.starts[-1]),) + first.shape[1:]

    def read(self, start, stop):
        pieces = []
        for s, lo in zip(self.parts, self.starts):
            a, b = max(start, lo), min(stop, lo + s.shape[0])
            if a < b:
                pieces.append(s.read(a - lo, b - lo))
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty((0,) + self.shape[1:], self.dtype)


def _npy_header(fp, name):
    try:
        version = np.lib.format.read_magic(fp)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(fp)
    except ValueError as exc:
        raise DataError(f"{name}: not a .npy array ({exc})") from None
    return shape, fortran, dtype


def open_npy(name, path):
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{name}: not a .npy file")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{name}: cannot read it as a .npy array ({exc})") from None
    if a.ndim == 0 or not a.flags.c_contiguous:
        return Memory(name, a)  # Fortran order: rows are not contiguous; map it whole
    return Mapped(name, path, a.offset, a.shape, a.dtype)


def open_npz(name, path, member):
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    if not names:
        raise DataError(f"{name}: the archive has no members")
    if member is None:
        member = names[0]
    elif member not in names and member + ".npy" in names:
        member += ".npy"
    if member not in names:
        listed = ", ".join(n.removesuffix(".npy") for n in names)
        raise DataError(f"{name}: no member {member!r} (members: {listed})")
    info = zf.getinfo(member)
    label = f"{path}:{member.removesuffix('.npy')}"
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:  # the member's data follows its local header
            f.seek(info.header_offset)
            fields = struct.unpack("<4s5H3L2H", f.read(30))
            f.seek(info.header_offset + 30 + fields[-2] + fields[-1])
            shape, fortran, dtype = _npy_header(f, label)
            offset = f.tell()
        if not fortran and len(shape) > 0 and not dtype.hasobject:
            return Mapped(name, path, offset, shape, dtype)
    fp = zf.open(member)
    shape, fortran, dtype = _npy_header(fp, label)
    if fortran or len(shape) == 0 or dtype.hasobject:
        return Memory(name, np.load(zf.open(member), allow_pickle=False))
    return Stream(name, fp, shape, dtype)


def open_source(name, spec):
    """LOGITS or TARGET: a .npy file, an .npz file[:member], or a directory of .npy shards."""
    path, member = spec, None
    if not os.path.exists(path) and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if os.path.exists(head):
            path, member = head, tail
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
        if not files:
            raise DataError(f"{name}: the directory has no .npy files")
        return Shards(name, [open_npy(os.path.join(path, f), os.path.join(path, f)) for f in files])
    if not os.path.exists(path):
        raise DataError(f"{name}: no such file or directory")
    if zipfile.is_zipfile(path):
        return open_npz(name, path, member)
    if member is not None:
        raise DataError(f"{name}: {path} is not an .npz file, so it has no member {member!r}")
    return open_npy(name, path)


# ---- options ----

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def parse_bytes(text):
    """'256MB', '1.5G', '512MiB', '1000000' -> bytes (K/M/G/T decimal, Ki/Mi/Gi/Ti binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?[iI]?)[bB]?\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256MB or 2GiB)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise argparse.ArgumentTypeError(f"the memory budget must be positive, got {text!r}")
    return n


def parse_top_k(text):
    try:
        return check_top_k([int(k) for k in text.split(",") if k.strip()] or [1])
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints >= 1, like 1,5; got {text!r}") from None


def positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser():
    ap = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Loss, perplexity and top-k accuracy of logits against labels.\n\n"
                 + __doc__.split("\n\n", 1)[1]
                 + "\nWith no LOGITS and TARGET, scores a built-in synthetic example.")
    ap.add_argument("logits", nargs="?", metavar="LOGITS",
                    help=".npy, .npz[:member] or a directory of .npy shards; float16/bfloat16/float32/float64")
    ap.add_argument("target", nargs="?", metavar="TARGET",
                    help="integer class indices, the logits' shape without the class axis")
    ap.add_argument("--axis", type=int, default=-1, help="the class axis (default -1; not 0)")
    ap.add_argument("--ignore-index", type=int, default=-100, metavar="N",
                    help="label of examples that are not counted (default -100)")
    ap.add_argument("--from-probs", action="store_true",
                    help="LOGITS holds probabilities; the loss is -log(max(p, eps))")
    ap.add_argument("--top-k", type=parse_top_k, default=None, metavar="K[,K...]",
                    help="accuracies to report (default 1,5; 1 when there are <= 5 classes)")
    ap.add_argument("--threads", type=positive_int, default=None, metavar="N",
                    help="cap on the threads the kernel uses (default: OpenMP's setting)")
    ap.add_argument("--memory-budget", type=parse_bytes, default=parse_bytes("256MB"),
                    metavar="SIZE", help="memory for one chunk of rows (default 256MB)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap


# ---- scoring ----

class Retyped:
    """A source whose rows are read as another dtype of the same size."""

    def __init__(self, src, dtype):
        self.src, self.name, self.shape, self.dtype = src, src.name, src.shape, dtype

    def read(self, start, stop):
        return self.src.read(start, stop).view(self.dtype)


def bfloat16_source(src):
    """np.save writes ml_dtypes.bfloat16 arrays (JAX's, bf16 models') with descr '<V2',
    which loads as plain 2-byte void: such logits are read as bfloat16 (needs ml_dtypes)."""
    dt = src.dtype
    if not (dt.kind == "V" and dt.itemsize == 2 and dt.names is None and dt.subdtype is None):
        return src
    try:
        import ml_dtypes
    except ImportError:
        raise DataError(f"{src.name} holds 2-byte void data (bfloat16 as np.save writes it): "
                        f"install ml_dtypes to score bfloat16 logits") from None
    return Retyped(src, np.dtype(ml_dtypes.bfloat16))


def check_shapes(x, t, axis):
    """The core's checks on the sources' shapes and dtypes, as one-line DataErrors."""
    if len(x.shape) < 2:
        raise DataError(f"logits must have a first axis of examples and a class axis; "
                        f"{x.name} has shape {x.shape}")
    try:
        (ax,) = _args.class_axes(axis, len(x.shape))
    except (TypeError, ValueError):
        raise UsageError(f"--axis {axis} is out of range for logits of shape {x.shape} "
                         f"(give 1..{len(x.shape) - 1}, or -1 for the last axis)") from None
    if ax == 0:
        raise UsageError("--axis must not be the first axis: the first axis holds the examples")
    expected = x.shape[:ax] + x.shape[ax + 1:]
    if t.shape == x.shape:
        raise DataError(f"target has the logits' shape {x.shape}, so it looks like one-hot or "
                        f"probability targets; this command scores integer class indices of shape "
                        f"{expected}. For probability targets use ce.cross_entropy(logits, target) "
                        f"from Python (or convert one-hot rows with argmax)")
    if t.shape != expected:
        raise DataError(f"target shape {t.shape} does not match logits shape {x.shape}: "
                        f"expected {expected} (the logits' shape without axis {ax})")
    try:
        _args.check_index_target(t.shape, t.dtype, expected)
    except TypeError:
        raise DataError(f"target must hold integer class indices, got dtype {t.dtype} "
                        f"(with probabilities as target, use ce.cross_entropy)") from None
    _args.check_logits_meta(x.dtype, len(x.shape), "logits")
    return ax


def chunk_rows(x, t, budget):
    """Rows per chunk so that the chunk and its per-row scratch fit in `budget` bytes."""
    per_x = math.prod(x.shape[1:])
    per_t = math.prod(t.shape[1:])
    itemsize = x.dtype.itemsize
    convert = itemsize if not x.dtype.isnative else 0  # a native-order copy
    per_row = per_x * (itemsize + convert) + per_t * (t.dtype.itemsize + 8 * 5)
    return max(1, budget // max(per_row, 1))


def bad_label_error(t, n_classes, ignore_index, start, name):
    """The one-line error for the first bad label of chunk `t` (rows from `start`), or None."""
    bad = _args.find_bad_label(t, n_classes, ignore_index)
    if bad < 0:
        return None
    rest = (start + t.shape[0],) + tuple(t.shape[1:])
    err = _args.bad_label(np.asarray(t).reshape(-1), bad, rest, n_classes, ignore_index,
                          name=name, ignore_name="--ignore-index",
                          offset=start * math.prod(t.shape[1:]))
    return DataError(str(err))


class Progress:
    """rows done, rows/s and ETA on one self-rewriting stderr line."""

    def __init__(self, total, stream):
        self.total, self.stream = total, stream
        self.t0 = self.last = time.perf_counter()

    def update(self, done):
        now = time.perf_counter()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        eta = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 8.64e6 else "?"
        self.stream.write(f"\rscoring {done:,}/{self.total:,} rows "
                          f"({100 * done / max(self.total, 1):.0f}%), {rate:,.0f} rows/s, ETA {eta} ")
        self.stream.flush()

    def close(self):
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def run(x, t, axis, ignore_index, from_logits, top_k, n_threads, budget, progress=None):
    """Score source `x` against source `t` chunk by chunk; returns the merged Score."""
    ax = check_shapes(x, t, axis)
    n_classes = x.shape[ax]
    rows = chunk_rows(x, t, budget)
    total = Score.empty(top_k)
    n = x.shape[0]
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        xc, tc = x.read(start, stop), t.read(start, stop)
        err = bad_label_error(tc, n_classes, ignore_index, start, t.name)
        if err is not None:
            raise err
        total += score(xc, tc, axis=ax, ignore_index=ignore_index, from_logits=from_logits,
                       top_k=top_k, n_threads=n_threads)
        del xc, tc  # unmap before the next chunk
        if progress is not None:
            progress.update(stop)
    return total


def example():
    """The built-in example: deterministic synthetic logits and labels."""
    n, c = EXAMPLE_SHAPE
    rng = np.random.default_rng(EXAMPLE_SEED)
    labels = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c), dtype=np.float32)
    logits[np.arange(n), labels] += 2.5  # a model that is right about half of the time
    return Memory("logits", logits), Memory("target", labels)


def _finite(v):
    if isinstance(v, dict):
        return {str(k): _finite(u) for k, u in v.items()}
    return v if not isinstance(v, float) or math.isfinite(v) else None


def report(s, x, t, args, seconds, is_example, out):
    if args.json:
        doc = {"logits": None if is_example else args.logits,
               "target": None if is_example else args.target,
               "example": is_example, "shape": list(x.shape), "dtype": str(x.dtype),
               "axis": args.axis, "ignore_index": args.ignore_index,
               "from_logits": not args.from_probs, **s.to_dict(), "seconds": seconds}
        out.write(json.dumps(_finite(doc), indent=2) + "\n")
        return
    shape = " x ".join(str(d) for d in x.shape)
    if is_example:
        out.write(f"built-in example: {shape} {x.dtype} synthetic logits and labels "
                  f"(seed {EXAMPLE_SEED}); pass LOGITS TARGET to score your own files\n")
    else:
        out.write(f"logits  {args.logits} ({shape} {x.dtype})\ntarget  {args.target}\n")
    lines = [("examples", f"{s.rows:,}"), ("counted", f"{s.count:,}"),
             ("mean loss", f"{s.mean_loss:.6f}"), ("perplexity", f"{s.perplexity:.6g}"),
             ("accuracy", f"{s.accuracy:.4%}")]
    lines += [(f"top-{k} accuracy", f"{v:.4%}") for k, v in s.top_k_accuracy.items() if k > 1]
    lines += [("loss sum", f"{s.loss_sum:.17g}"),
              ("time", f"{seconds:.3f} s ({s.rows / max(seconds, 1e-9):,.0f} rows/s)")]
    width = max(len(k) for k, _ in lines)
    out.write("".join(f"  {k:<{width}}  {v}\n" for k, v in lines))


def main(argv=None):
    """Run the score command; returns the exit code (0 ok, 1 bad data, 2 bad usage)."""
    try:
        args = parser().parse_args(argv)
        if (args.logits is None) != (args.target is None):
            raise UsageError("give both LOGITS and TARGET, or neither for the built-in example")
        is_example = args.logits is None
        x, t = example() if is_example else (
            bfloat16_source(open_source(f"logits {args.logits}", args.logits)),
            open_source(f"target {args.target}", args.target))
        ax = check_shapes(x, t, args.axis)
        top_k = args.top_k or ((1, 5) if x.shape[ax] > 5 else (1,))
        if max(top_k) > x.shape[ax]:
            raise UsageError(f"--top-k {max(top_k)} is more than the {x.shape[ax]} classes "
                             f"(a top-k accuracy needs k <= C)")
        progress = Progress(x.shape[0], sys.stderr) if sys.stderr.isatty() else None
        t0 = time.perf_counter()
        try:
            s = run(x, t, ax, args.ignore_index, not args.from_probs, top_k,
                    args.threads, args.memory_budget, progress)
        finally:
            if progress is not None:
                progress.close()
        report(s, x, t, args, time.perf_counter() - t0, is_example, sys.stdout)
        return 0
    except SystemExit as exc:  # --help
        return exc.code or 0
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (DataError, OSError, ValueError, TypeError, MemoryError, zipfile.BadZipFile) as exc:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
