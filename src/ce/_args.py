"""Argument normalisation: every public call is turned into one problem here.

The logits become a strided (outer, C, inner) view in a native float dtype
(no copy unless the memory layout cannot be described that way), the target
becomes either int64 labels of length N (validated) or a dense view like the
logits, and the options are checked and resolved, all before any output is
touched.
"""
import math
import operator

import numpy as np

from . import _kernels

REDUCTIONS = ("none", "sum", "mean")


def c_array(a, dtype=None):
    """C-contiguous *and aligned* (np.ascontiguousarray keeps a misaligned buffer,
    e.g. an .npz member, as it is; the C kernels must never see one)."""
    return np.require(a, dtype, ("C", "A"))


def as_array(a, name):
    """A plain ndarray (subclasses such as np.matrix become base-class views);
    anything NumPy cannot turn into an array is a TypeError naming `name`."""
    if type(a) is np.ndarray:
        return a
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists, objects whose __array__ raises, ...
        raise TypeError(f"{name} must be array-like: {exc}") from exc


def as_logits(x, name="logits"):
    """Return (array in a computing dtype, result dtype)."""
    x = as_array(x, name)
    dt = x.dtype
    if dt.kind != "f":
        raise TypeError(f"{name} must be a float16/float32/float64 array, got dtype {dt}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis)")
    if dt.itemsize == 2:
        return x.astype(np.float32), np.dtype(np.float16)
    if dt.itemsize > 8:
        raise TypeError(f"{name} dtype {dt} is not supported (use float32 or float64)")
    if not dt.isnative:
        x = x.astype(dt.newbyteorder("="))
    return x, x.dtype


def same_dtype(a, b):
    """Equal up to byte order (out= may be the logits themselves, '>f4' included)."""
    return a == b or (a.kind == b.kind and a.itemsize == b.itemsize
                      and a.newbyteorder("=") == b.newbyteorder("="))


def class_axes(axis, ndim, name="axis"):
    """Normalise an int or tuple of ints into a sorted tuple of axes."""
    if type(axis) is int and -ndim <= axis < ndim:
        return (axis % ndim,)
    axes = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {axis!r}")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{name} must be an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axis!r} is out of range for an array of {ndim} dimensions")
        out.append(a % ndim)
    if not out:
        raise ValueError(f"{name} must name at least one axis")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis!r} repeats an axis")
    return tuple(sorted(out))


def rows_view(a, axes):
    """(outer, C, inner) view of `a` with the class axes in the middle; a copy
    only when no such strided view exists. Also returns the per-example shape."""
    nd = a.ndim
    if axes == (nd - 1,):  # the common case, class axis last
        rest = a.shape[:-1]
        v = a.reshape(math.prod(rest), a.shape[-1], 1)
        st, item = v.strides, v.itemsize
        if st[0] % item or st[1] % item or not v.flags.aligned:
            v = c_array(v)
        return v, rest
    rest = tuple(d for i, d in enumerate(a.shape) if i not in axes)
    n_classes = 1
    for i in axes:
        n_classes *= a.shape[i]
    contiguous_axes = axes == tuple(range(axes[0], axes[-1] + 1))
    if contiguous_axes:
        outer = 1
        for d in a.shape[: axes[0]]:
            outer *= d
        inner = 1
        for d in a.shape[axes[-1] + 1 :]:
            inner *= d
        src = a
    else:
        src = np.moveaxis(a, axes, range(nd - len(axes), nd))
        outer, inner = 1, 1
        for d in rest:
            outer *= d
    shape3 = (outer, n_classes, inner)
    view = _strided_reshape(src, shape3)
    return view, rest


def moved_shape(shape, axes):
    """Shape with the class axes moved to the end (the layout of a new output)."""
    rest = [d for i, d in enumerate(shape) if i not in axes]
    return tuple(rest + [shape[i] for i in axes])


def _strided_reshape(a, shape3):
    if a.shape == shape3:
        v = a
    else:
        v = a.reshape(shape3)  # a view whenever the strides allow it
    item = v.itemsize
    if any(s % item for s in v.strides) or not v.flags.aligned:
        v = c_array(v)
    return v


def check_threads(n_threads):
    if n_threads is None:
        return 0
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be None or a positive int, got {n_threads!r}")
    if n_threads < 1:
        raise ValueError(f"n_threads must be None or a positive int, got {n_threads!r}")
    return int(min(n_threads, 1 << 16))


def check_count(value, name, allow_none=True):
    """None (when allowed) or an int >= 1; a bool or a float is a TypeError."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {'None or ' if allow_none else ''}a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}a positive int, got {value!r}")
    return int(value)


def check_reduction(reduction):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_float(value, name, lo=None, hi=None, allow_none=False):
    if value is None and allow_none:
        return None
    if type(value) is float and (lo is None or value >= lo) and (hi is None or value <= hi):
        return value
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return v


class Problem:
    """A validated cross-entropy call, ready for one kernel run."""

    __slots__ = (
        "x", "rest", "dtype", "n_classes", "n_rows", "kind", "labels", "t",
        "class_weight", "class_weight_64", "class_weight_sum", "row_weight",
        "smoothing", "z_loss", "softcap", "from_logits", "ignore_index",
        "n_threads", "reduction", "axes", "shape",
    )


def problem(logits, target, axis, reduction, weight, sample_weight, ignore_index,
            label_smoothing, from_logits, n_threads, z_loss, softcap):
    p = Problem()
    p.reduction = check_reduction(reduction)
    x, p.dtype = as_logits(logits)
    p.shape = x.shape
    p.axes = class_axes(axis, x.ndim)
    p.x, p.rest = rows_view(x, p.axes)
    p.n_classes = p.x.shape[1]
    p.n_rows = p.x.shape[0] * p.x.shape[2]
    if p.n_classes == 0:
        raise ValueError(f"logits has no classes: the class axis {axis!r} has size 0")
    p.n_threads = check_threads(n_threads)
    p.smoothing = check_float(label_smoothing, "label_smoothing", 0.0, 1.0)
    p.z_loss = check_float(z_loss, "z_loss", 0.0)
    cap = check_float(softcap, "softcap", allow_none=True)
    if cap is not None and not 0.0 < cap < math.inf:
        raise ValueError(f"softcap must be > 0 and finite (or None to turn it off), got {softcap!r}")
    p.softcap = cap or 0.0
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"from_logits must be a bool, got {from_logits!r}")
    p.from_logits = bool(from_logits)
    if not p.from_logits and (p.z_loss != 0.0 or p.softcap != 0.0):
        raise ValueError("z_loss and softcap apply to logits only (from_logits=True)")
    try:
        if isinstance(ignore_index, (bool, np.bool_)):
            raise TypeError
        p.ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}") from None
    if not -(2**63) <= p.ignore_index < 2**63:
        raise ValueError(f"ignore_index={ignore_index} does not fit in int64")
    compute = p.x.dtype

    # class weights: kept in the computing dtype for the kernel, float64 for sums
    if weight is None:
        p.class_weight = p.class_weight_64 = None
        p.class_weight_sum = float(p.n_classes)
    else:
        w = _real_array(weight, "weight")
        if w.shape != (p.n_classes,):
            raise ValueError(f"weight must have shape ({p.n_classes},) (one per class), got {w.shape}")
        p.class_weight_64 = c_array(w, dtype=np.float64)
        p.class_weight = c_array(w, dtype=compute)
        p.class_weight_sum = float(p.class_weight_64.sum())

    # target: class indices (per-example shape) or dense (logits' shape)
    tgt = as_array(target, "target")
    if tgt.shape == p.shape and not (tgt.shape == p.rest and tgt.dtype.kind in "iu"):
        if tgt.dtype.kind not in "fiub":
            raise TypeError(f"target (dense) must be a real array, got dtype {tgt.dtype}")
        p.kind = _kernels.TARGET_DENSE
        t = tgt.astype(compute, copy=False)
        if not t.dtype.isnative:
            t = t.astype(compute.newbyteorder("="))
        p.t, _ = rows_view(t, p.axes)
        p.labels = None
    elif tgt.shape == p.rest:
        if tgt.dtype.kind not in "iu":
            raise TypeError(
                f"target of shape {tgt.shape} holds class indices and must be an integer array, "
                f"got dtype {tgt.dtype}")
        if tgt.dtype == np.uint64 and tgt.size and tgt.max() > np.iinfo(np.int64).max:
            pos = np.unravel_index(int(np.argmax(tgt > np.iinfo(np.int64).max)), tgt.shape)
            raise ValueError(f"target has label {tgt[pos]} at position {tuple(int(i) for i in pos)}, "
                             f"outside [0, {p.n_classes})")
        p.kind = _kernels.TARGET_INDEX
        p.labels = c_array(tgt, dtype=np.int64).reshape(-1)
        p.t = None
    else:
        raise ValueError(
            f"target must have shape {p.rest} (class indices) or {p.shape} (probabilities), "
            f"got {tgt.shape}")

    if sample_weight is None:
        p.row_weight = None
    else:
        sw = _real_array(sample_weight, "sample_weight", allow_bool=True)
        if sw.shape != p.rest:
            try:
                sw = np.broadcast_to(sw, p.rest)
            except ValueError:
                raise ValueError(
                    f"sample_weight must have the per-example shape {p.rest}, got {sw.shape}") from None
        p.row_weight = c_array(sw, dtype=np.float64).reshape(-1)
    return p


def _real_array(a, name, allow_bool=False):
    a = as_array(a, name)
    kinds = "fiub" if allow_bool else "fiu"
    if a.dtype.kind not in kinds:
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return a


def check_labels(p):
    """Validate class indices; return the mean's denominator (total weight)."""
    if p.kind == _kernels.TARGET_INDEX:
        bad, total, _ = _kernels.check_labels(p.labels, p.n_classes, p.ignore_index,
                                              p.class_weight_64, p.row_weight)
        if bad >= 0:
            pos = np.unravel_index(bad, p.rest) if p.rest else ()
            pos = tuple(int(i) for i in pos)
            raise ValueError(
                f"target has label {int(p.labels[bad])} at position {pos}, outside "
                f"[0, {p.n_classes}) and not ignore_index={p.ignore_index}")
        return total
    if p.row_weight is None:
        return float(p.n_rows)
    return float(p.row_weight.sum())


def new_output(p, dtype):
    """A fresh gradient-shaped array and its (outer, C, inner) view, never a copy."""
    if p.axes == tuple(range(p.axes[0], p.axes[-1] + 1)):
        g = np.empty(p.shape, dtype=dtype)
        return g, g.reshape(p.x.shape)  # C-ordered: always a view
    nd, k = len(p.shape), len(p.axes)
    moved = np.empty(moved_shape(p.shape, p.axes), dtype=dtype)
    view = moved.reshape(p.x.shape)
    return np.moveaxis(moved, range(nd - k, nd), p.axes), view


def output_for(p, out, name="out"):
    """The gradient buffer. Returns (array for the caller, (outer, C, inner) view the
    kernel writes, array to copy into `out` afterwards or None)."""
    if out is None:
        g, view = new_output(p, p.x.dtype)
        if p.dtype != p.x.dtype:  # float16: computed in float32, returned as float16
            return np.empty(p.shape, dtype=p.dtype), view, g
        return g, view, None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != p.shape:
        raise ValueError(f"{name} must have the logits' shape {p.shape}, got {out.shape}")
    if not same_dtype(out.dtype, p.dtype):
        raise TypeError(f"{name} must have the logits' dtype {p.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if p.t is not None and np.may_share_memory(out, p.t):
        raise ValueError(f"{name} must not overlap target")
    if out.dtype == p.x.dtype and out.size:
        view = rows_view(out, p.axes)[0]
        in_place = view.__array_interface__["data"][0] == p.x.__array_interface__["data"][0] \
            and view.strides == p.x.strides
        if np.may_share_memory(view, out) and (in_place or not np.may_share_memory(view, p.x)):
            return out, view, None
    # float16, byte-swapped, a layout no view describes, or overlapping the logits
    # other than element for element: computed aside, then copied into out
    g, view = new_output(p, p.x.dtype)
    return out, view, g
