"""ce on Dask arrays: scores and losses of logits chunked along rows and classes.

Needs the optional extra: ``pip install "ce[dask]"`` (dask[array] and distributed).

Each row chunk is scored where it lives and only the per-chunk `Score` sums
travel. Logits chunked along the classes too (a vocabulary split over
workers) are combined as vocab-parallel implementations do: per class chunk,
each row's log-sum-exp (float64), maximum, argmax and top-k values and the
target logit where the label falls in the chunk; then per row
``lse = logaddexp over chunks`` and ``loss = lse - x[label]``. Only O(rows)
numbers per chunk cross the network; the logits are read once.

Running on a cluster
--------------------
ce uses whatever scheduler Dask is set to, so connect a client first::

    from dask.distributed import Client
    import dask.array as da
    import ce.dask

    client = Client("tcp://scheduler-host:8786")   # or LocalCluster(), SLURMCluster(), ...
    logits = da.from_zarr("s3://bucket/logits.zarr")        # (N, C), chunks (rows, C) or (rows, C/k)
    labels = da.from_zarr("s3://bucket/labels.zarr")        # (N,), any chunks
    s = ce.dask.score(logits, labels, top_k=(1, 5))         # a ce Score, computed on the cluster
    print(s.mean_loss, s.perplexity, s.accuracy, s.top_k_accuracy[5])
    loss = ce.dask.cross_entropy(logits, labels).compute()  # lazy 0-d dask array

Every worker needs ce installed (the same version as the client) and numpy;
the data should be readable from the workers (zarr/HDF5/npy stacks on shared
or object storage, ``da.from_npy_stack``, ...), not pulled through the client.
Chunks of 64-512 MB work well. ce's kernels are multithreaded: with several
Dask threads per worker pass ``n_threads=1`` (or set OMP_NUM_THREADS=1 in the
workers' environment); with one thread per worker (``--nthreads 1``) leave
``n_threads=None`` so each task uses the worker's cores.
"""
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _args, _kernels
from ._loss import _finite_lse, cross_entropy as _cross_entropy
from ._score import Score, check_top_k, score as _score, tally

__all__ = ["score", "cross_entropy"]


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(
            "ce.dask needs Dask: pip install 'ce[dask]' (or: pip install 'dask[array]' "
            f"distributed) ({exc})") from None
    return dask, da


# ---- arguments: flatten to (rows, C) logits and (rows,) labels with matching chunks ----

def _prepare(logits, target, sample_weight, axis):
    _, da = _dask()
    x, t = da.asarray(logits), da.asarray(target)
    _args.check_logits_meta(x.dtype, x.ndim)
    if isinstance(axis, tuple):
        raise TypeError(f"axis must be an int for ce.dask, got {axis!r}")
    (ax,) = _args.class_axes(axis, x.ndim)
    x = da.moveaxis(x, ax, -1)
    rest, n_classes = x.shape[:-1], x.shape[-1]
    _args.check_classes(n_classes, axis)
    _args.check_index_target(t.shape, t.dtype, rest)
    x = x.reshape(-1, n_classes) if x.ndim != 2 else x
    t = t.reshape(-1).rechunk((x.chunks[0],))
    w = None
    if sample_weight is not None:
        w = da.broadcast_to(da.asarray(sample_weight), rest).reshape(-1).rechunk((x.chunks[0],))
    return x, t, w, rest


def _blocks(x, t, w):
    """Per row chunk: (first row, [logits chunks along the classes], labels, weights)."""
    xd, td = x.to_delayed(), t.to_delayed()
    wd = w.to_delayed() if w is not None else [None] * len(td)
    starts = np.cumsum((0,) + x.chunks[0][:-1])
    return [(int(starts[i]), list(xd[i]), td[i], wd[i]) for i in range(len(td))]


def _class_starts(x):
    return [int(s) for s in np.cumsum((0,) + x.chunks[1][:-1])]


# ---- per-chunk work (runs on the workers) ----

def _check(labels, n_classes, ignore_index, start, rest):
    """The core's label check on one row chunk, reporting the global position."""
    bad = _args.find_bad_label(labels, n_classes, ignore_index)
    if bad >= 0:
        raise _args.bad_label(labels, bad, rest, n_classes, ignore_index, offset=start)


def _row_score(x, labels, w, start, rest, kw):
    _check(labels, x.shape[1], kw["ignore_index"], start, rest)
    return _score(x, labels, sample_weight=w, **kw)


def _row_losses(x, labels, w, start, rest, kw):
    _check(labels, x.shape[1], kw["ignore_index"], start, rest)
    return _cross_entropy(x, labels, reduction="none", sample_weight=w, **kw)


def _partial(x, labels, col, n_top, from_logits, n_threads):
    """One (rows, Cj) chunk: float64 lse (None for probabilities), row max, global
    argmax, target flag and value, and the chunk's n_top largest values (descending)."""
    call = _kernels.Call(logits=x, n_threads=n_threads or None)
    v = call.rows[:, :, 0]
    n, c = v.shape
    rows = np.arange(n)
    lse, argmax = None, np.empty(n, dtype=np.int64)
    if from_logits:
        lse = np.empty(n)
        _kernels.solve(call, row_lse=lse, row_argmax=argmax)
        _finite_lse(call, lse)  # all -inf (e.g. a padded vocabulary chunk) or +inf rows
    else:
        argmax = np.argmax(v, axis=1)
    local = labels - col
    has = (local >= 0) & (local < c)
    xy = np.where(has, v[rows, np.where(has, local, 0)], 0.0).astype(np.float64)
    top = None
    if n_top > 1:
        k = min(n_top, c)
        top = -np.sort(-np.partition(v, c - k, axis=1)[:, c - k:], axis=1).astype(np.float64)
        if k < n_top:
            top = np.pad(top, ((0, 0), (0, n_top - k)), constant_values=-np.inf)
    return lse, v[rows, argmax].astype(np.float64), argmax + col, has, xy, top


def _combine(parts, from_logits, eps):
    """Per row: (loss, argmax, target logit, top values) from the class chunks' partials."""
    lses, maxes, argmaxes, has, xys, tops = zip(*parts)
    maxes = np.stack(maxes)
    j = np.argmax(maxes, axis=0)  # the first chunk holding the row max: the first argmax
    argmax = np.stack(argmaxes)[j, np.arange(maxes.shape[1])]
    xy = np.select(has, xys, 0.0)
    if from_logits:
        lse = np.stack(lses)
        m = lse.max(axis=0)
        with np.errstate(invalid="ignore", over="ignore"):
            total = m + np.log(np.exp(lse - np.where(np.isfinite(m), m, 0.0)).sum(axis=0))
        total = np.where(np.isfinite(m), total, m)
        loss = total - xy
    else:
        loss = -np.log(np.maximum(xy, eps))
    top = None
    if tops[0] is not None:
        allv = np.concatenate(tops, axis=1)
        k = tops[0].shape[1]
        top = -np.sort(-np.partition(allv, allv.shape[1] - k, axis=1)[:, -k:], axis=1)
    return loss, argmax, xy, top


def _masked(labels, w, ignore_index):
    keep = labels != ignore_index
    return keep if w is None else keep & (w != 0)


def _merge_score(parts, labels, w, start, rest, n_classes, ks, kw, eps):
    _check(labels, n_classes, kw["ignore_index"], start, rest)
    loss, argmax, xy, top = _combine(parts, kw["from_logits"], eps)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    keep = _masked(labels, w, kw["ignore_index"])
    row_loss = np.where(keep, loss if w is None else loss * np.where(keep, w, 0), 0.0)
    hits = {k: (None if k == 1 else top[:, k - 1] <= xy) for k in ks}
    return tally(labels, row_loss, argmax, hits, w, kw["ignore_index"])


def _merge_losses(parts, labels, w, start, rest, n_classes, kw, eps, dtype):
    _check(labels, n_classes, kw["ignore_index"], start, rest)
    loss = _combine(parts, kw["from_logits"], eps)[0]
    keep = _masked(labels, w, kw["ignore_index"])
    if w is not None:
        loss = loss * np.where(keep, w, 0)
    return np.where(keep, loss, 0.0).astype(dtype)


def _sum_scores(scores):
    return sum(scores[1:], scores[0])


def _tree_sum(dask, items, fan_in=16):
    while len(items) > 1:
        items = [dask.delayed(_sum_scores, pure=True)(items[i:i + fan_in])
                 for i in range(0, len(items), fan_in)]
    return items[0]


def _options(ignore_index, from_logits, n_threads):
    """The per-task keywords, checked on the client; and the kernel's thread count."""
    ignore_index = _args.check_ignore_index(ignore_index)
    from_logits = _args.check_bool(from_logits, "from_logits")
    threads = _args.check_threads(n_threads)
    return dict(ignore_index=ignore_index, from_logits=from_logits, n_threads=n_threads), threads


def _scores(logits, target, axis, ignore_index, sample_weight, from_logits, top_k, n_threads):
    """A list of delayed per-row-chunk Scores."""
    dask, _ = _dask()
    ks = check_top_k(top_k)
    x, t, w, rest = _prepare(logits, target, sample_weight, axis)
    kw, threads = _options(ignore_index, from_logits, n_threads)
    delayed = dask.delayed
    out = []
    cols = _class_starts(x)
    for start, xs, labels, weights in _blocks(x, t, w):
        if len(xs) == 1:
            out.append(delayed(_row_score, pure=True)(xs[0], labels, weights, start, rest,
                                                      dict(kw, top_k=ks)))
            continue
        n_top = max(ks, default=1)
        parts = [delayed(_partial, pure=True)(xj, labels, col, n_top, kw["from_logits"], threads)
                 for xj, col in zip(xs, cols)]
        out.append(delayed(_merge_score, pure=True)(parts, labels, weights, start, rest,
                                                    x.shape[1], ks, kw, _args.eps(x.dtype)))
    return out or [delayed(Score.empty)(ks)]


def score(logits: Any, target: Any, *, axis: int = -1, ignore_index: int = -100,
          sample_weight: Any = None, from_logits: bool = True, top_k: int | Iterable[int] = (1,),
          n_threads: int | None = None, compute: bool = True) -> Any:
    """`ce.score` on Dask arrays; the chunks' Scores are merged exactly.

    Parameters
    ----------
    logits : dask array (or array-like), float16/32/64
        Chunked along the rows and, optionally, along the class axis.
    target : dask array of ints
        Class indices, the logits' shape without the class axis; rechunked to
        the logits' row chunks.
    axis : int, default -1
        The class axis.
    ignore_index, sample_weight, from_logits, top_k, n_threads
        As in `ce.score` (``n_threads`` applies to each task).
    compute : bool, default True
        False: return a ``dask.delayed`` object whose ``.compute()`` is the Score.

    Returns
    -------
    Score
        The same fields as `ce.score`. With chunks along the rows only it
        equals ``ce.score`` on the whole array bit for bit, for any row
        chunking (the sums are exact). With class chunks a row's loss comes
        from a logaddexp merge of the chunks' float64 log-sum-exps and may
        differ from ``ce.score``'s in the last bits.

    Notes
    -----
    Runs on the current Dask scheduler: a ``dask.distributed.Client`` when one
    is active (see the module docstring for a real cluster). With class chunks
    a row's top-1 prediction is the first argmax over all classes, as in
    `ce.score`; top-k (k > 1) compares the label's logit with the k-th largest
    logit of the row (ties count in the label's favour, as in `ce.score`).
    """
    dask, _ = _dask()
    total = _tree_sum(dask, _scores(logits, target, axis, ignore_index, sample_weight,
                                    from_logits, top_k, n_threads))
    return total.compute() if compute else total


def cross_entropy(logits: Any, target: Any, *, axis: int = -1, reduction: _args.Reduction = "mean",
                  ignore_index: int = -100, sample_weight: Any = None, from_logits: bool = True,
                  n_threads: int | None = None) -> Any:
    """`ce.cross_entropy` on Dask arrays, lazily (class-index targets).

    Parameters
    ----------
    logits, target, axis, ignore_index, sample_weight, from_logits, n_threads
        As in `score`.
    reduction : {"mean", "sum", "none"}
        As in `ce.cross_entropy`.

    Returns
    -------
    dask array
        0-d ("mean", "sum") or of the target's shape ("none"), in the logits'
        dtype; call ``.compute()``. "mean" and "sum" come from `score`'s
        exact sums, so they do not depend on the row chunking.
    """
    dask, da = _dask()
    _args.check_reduction(reduction)
    x, t, w, rest = _prepare(logits, target, sample_weight, axis)
    dtype = x.dtype
    if reduction != "none":
        total = _tree_sum(dask, _scores(logits, target, axis, ignore_index, sample_weight,
                                        from_logits, (1,), n_threads))
        value = total.mean_loss if reduction == "mean" else total.loss_sum
        return da.from_delayed(dask.delayed(dtype.type)(value), shape=(), dtype=dtype)
    kw, threads = _options(ignore_index, from_logits, n_threads)
    cols, delayed, out = _class_starts(x), dask.delayed, []
    for (start, xs, labels, weights), n in zip(_blocks(x, t, w), x.chunks[0]):
        if len(xs) == 1:
            d = delayed(_row_losses, pure=True)(xs[0], labels, weights, start, rest, kw)
        else:
            parts = [delayed(_partial, pure=True)(xj, labels, col, 1, kw["from_logits"],
                                                  threads)
                     for xj, col in zip(xs, cols)]
            d = delayed(_merge_losses, pure=True)(parts, labels, weights, start, rest,
                                                  x.shape[1], kw, _args.eps(dtype), dtype)
        out.append(da.from_delayed(d, shape=(n,), dtype=dtype))
    rows = da.concatenate(out) if out else da.zeros((0,), dtype=dtype)
    return rows.reshape(rest)
