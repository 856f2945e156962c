"""Argument normalisation: every public call is turned into one problem here.

The logits become a strided (outer, C, inner) view in a native float dtype
(no copy unless the memory layout cannot be described that way), the target
becomes either int64 labels of length N (validated) or a dense view like the
logits, and the options are checked and resolved, all before any output is
touched.
"""
import math
import operator
import sys
from typing import Literal, get_args

import numpy as np

Reduction = Literal["none", "sum", "mean"]   # the one list of reductions (types and checks)
REDUCTIONS = get_args(Reduction)


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


_bfloat16_type = None


def is_bfloat16(dt):
    """True for ml_dtypes.bfloat16 (an array of it exists only once ml_dtypes is imported,
    so ce never imports it)."""
    global _bfloat16_type
    if _bfloat16_type is None:
        module = sys.modules.get("ml_dtypes")
        if module is None:
            return False
        _bfloat16_type = module.bfloat16
    return dt.type is _bfloat16_type


def is_half(dt):
    """float16 or ml_dtypes.bfloat16: read by the kernels directly, computed in float32."""
    return dt.itemsize == 2 and (dt.kind == "f" or is_bfloat16(dt))


def kernel_real(dt):
    """The dtype of class weights for logits of dtype dt (float32 for half precision)."""
    return np.dtype(np.float32) if is_half(dt) else dt


def as_logits(x, name="logits"):
    """Return (array in a kernel dtype, result dtype); float16 and bfloat16 are not copied."""
    x = as_array(x, name)
    dt = x.dtype
    check_logits_meta(dt, x.ndim, name)
    if not dt.isnative:
        x = x.astype(dt.newbyteorder("="))
    return x, x.dtype


def check_logits_meta(dtype, ndim, name="logits"):
    """What a front end holding only the dtype and the number of dimensions (a Dask
    array, a file header) can check of the logits."""
    if dtype.kind != "f" and not is_bfloat16(dtype):
        raise TypeError(f"{name} must be a float16/bfloat16/float32/float64 array, got dtype {dtype}")
    if ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis)")
    if dtype.itemsize > 8:
        raise TypeError(f"{name} dtype {dtype} is not supported (use float32 or float64)")


def same_dtype(a, b):
    """Equal up to byte order (out= may be the logits themselves, '>f4' included)."""
    return a == b or (a.kind == b.kind and a.itemsize == b.itemsize
                      and a.newbyteorder("=") == b.newbyteorder("="))


def class_axes(axis, ndim, name="axis"):
    """Normalise an int or tuple of ints into a tuple of non-negative axes, in the
    order given: a class index is the C-order flat index into the class sub-array
    with its axes in that order (optax's rule)."""
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
    return tuple(out)


def rows_view(a, axes):
    """(outer, C, inner) view of `a` with the class axes in the middle (flattened in
    the order of `axes`); a copy
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


def check_classes(n_classes, axis, name="logits"):
    if n_classes == 0:
        raise ValueError(f"{name} has no classes: the class axis {axis!r} has size 0")


def check_softcap(softcap):
    """None (off: 0.0) or a finite float > 0."""
    cap = check_float(softcap, "softcap", allow_none=True)
    if cap is not None and not 0.0 < cap < math.inf:
        raise ValueError(f"softcap must be > 0 and finite (or None to turn it off), got {softcap!r}")
    return cap or 0.0


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_logit_options(from_logits, z_loss, softcap):
    if not from_logits and (z_loss != 0.0 or softcap != 0.0):
        raise ValueError("z_loss and softcap apply to logits only (from_logits=True)")


def check_ignore_index(ignore_index):
    """An int that fits in int64 (a bool is not an int here)."""
    try:
        if isinstance(ignore_index, (bool, np.bool_)):
            raise TypeError
        value = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_index={ignore_index} does not fit in int64")
    return value


def check_lse_applies(from_logits):
    if not from_logits:
        raise ValueError("lse applies to logits only (from_logits=True)")


def check_return_lse(return_lse, from_logits):
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if return_lse and not from_logits:
        raise ValueError("return_lse applies to logits only (from_logits=True)")


def eps(dtype):
    """The probability floor of from_logits=False: the result dtype's machine epsilon
    (bfloat16 included: 2^-7)."""
    return 2.0 ** -7 if is_bfloat16(dtype) else float(np.finfo(dtype).eps)


def class_weights(weight, n_classes, compute):
    """(weights in the computing dtype for the kernel, float64 weights)."""
    w = _real_array(weight, "weight")
    if w.shape != (n_classes,):
        raise ValueError(f"weight must have shape ({n_classes},) (one per class), got {w.shape}")
    return c_array(w, dtype=compute), c_array(w, dtype=np.float64)


def target_rows(target, shape, rest, axes, compute, n_classes):
    """(dense, int64 labels of length N or None, dense (outer, C, inner) view or None).

    Class indices have the per-example shape `rest`; a dense target (one-hot or
    probabilities) has the logits' `shape`."""
    tgt = as_array(target, "target")
    if tgt.shape == shape and not (tgt.shape == rest and tgt.dtype.kind in "iu"):
        if tgt.dtype.kind not in "fiub" and not is_bfloat16(tgt.dtype):
            raise TypeError(f"target (dense) must be a real array, got dtype {tgt.dtype}")
        t = tgt.astype(compute, copy=False)
        if not t.dtype.isnative:
            t = t.astype(compute.newbyteorder("="))
        return True, None, rows_view(t, axes)[0]
    if tgt.shape == rest:
        check_index_dtype(tgt.dtype, tgt.shape)
        if tgt.dtype == np.uint64 and tgt.size and tgt.max() > np.iinfo(np.int64).max:
            pos = np.unravel_index(int(np.argmax(tgt > np.iinfo(np.int64).max)), tgt.shape)
            raise ValueError(f"target has label {tgt[pos]} at position {tuple(int(i) for i in pos)}, "
                             f"outside [0, {n_classes})")
        return False, c_array(tgt, dtype=np.int64).reshape(-1), None
    raise ValueError(
        f"target must have shape {rest} (class indices) or {shape} (probabilities), "
        f"got {tgt.shape}")


def check_index_dtype(dtype, shape):
    """Class indices are integers (any width, signed or not)."""
    if dtype.kind not in "iu":
        raise TypeError(
            f"target of shape {shape} holds class indices and must be an integer array, "
            f"got dtype {dtype}")


def check_index_target(shape, dtype, rest):
    """For front ends that take class indices only (ce.score, ce.dask, the CLI):
    the per-example shape and an integer dtype."""
    if tuple(shape) != tuple(rest):
        raise ValueError(f"target must have shape {tuple(rest)} (class indices: the logits' shape "
                         f"without the class axis), got {tuple(shape)}")
    check_index_dtype(dtype, tuple(shape))


def dense_not_accepted(rest, who):
    """The TypeError of a front end that takes class indices only."""
    return TypeError(
        f"target must hold class indices of shape {tuple(rest)} (the logits' shape without the "
        f"class axis); {who} does not take one-hot or probability targets")


def check_top_k(top_k):
    """Normalise top_k (an int or ints >= 1) into a sorted tuple of unique ints."""
    ks = (top_k,) if isinstance(top_k, (int, np.integer)) else top_k
    try:
        ks = [operator.index(k) for k in ks]
    except TypeError:
        raise TypeError(f"top_k must be an int or a sequence of ints, got {top_k!r}") from None
    if isinstance(top_k, (bool, np.bool_)) or any(k < 1 for k in ks):
        raise ValueError(f"top_k values must be ints >= 1, got {top_k!r}")
    return tuple(sorted(set(ks)))


def sample_weights(sample_weight, rest):
    """Per-example weights (float, or a bool mask) broadcast to `rest`, as flat float64."""
    sw = _real_array(sample_weight, "sample_weight", allow_bool=True)
    if sw.shape != rest:
        try:
            sw = np.broadcast_to(sw, rest)
        except ValueError:
            raise ValueError(
                f"sample_weight must have the per-example shape {rest}, got {sw.shape}") from None
    return c_array(sw, dtype=np.float64).reshape(-1)


def _real_array(a, name, allow_bool=False):
    a = as_array(a, name)
    kinds = "fiub" if allow_bool else "fiu"
    if a.dtype.kind not in kinds and not is_bfloat16(a.dtype):
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    return a


class LabelError(ValueError, IndexError):
    """A class index outside [0, C): the ValueError of ce's contract, and also the
    IndexError PyTorch raises for it (as NumPy's AxisError is both)."""


def bad_label(labels, bad, rest, n_classes, ignore_index, name="target",
              ignore_name="ignore_index", offset=0):
    """The LabelError (a ValueError) for labels[bad], at flat position offset + bad of the
    per-example shape `rest` (offset: where a chunk's labels start). ignore_index
    None: the caller's API has none, so the message does not mention it."""
    pos = tuple(int(i) for i in np.unravel_index(offset + bad, rest)) if rest else ()
    ignored = "" if ignore_index is None else f" and not {ignore_name}={ignore_index}"
    return LabelError(f"{name} has label {int(labels[bad])} at position {pos}, outside "
                      f"[0, {n_classes}){ignored}")


def find_bad_label(labels, n_classes, ignore_index):
    """Flat position of the first label outside [0, C) and not ignore_index, or -1
    (the kernels' own check, for front ends that validate chunk by chunk)."""
    from . import _kernels
    return _kernels.check_labels(c_array(labels, dtype=np.int64).reshape(-1), n_classes,
                                 ignore_index, None, None)[0]


def upstream_grad(grad_output, reduction, rest):
    """grad_output -> (scalar scale, per-row float64 array or None); the mean's
    division by the total weight is applied by the caller."""
    try:
        go = np.asarray(grad_output)
    except Exception as exc:
        raise TypeError(f"grad_output must be a real number or array: {exc}") from exc
    if go.dtype.kind not in "fiub" and not is_bfloat16(go.dtype):
        raise TypeError(f"grad_output must be real, got dtype {go.dtype}")
    if reduction != "none":
        if go.ndim != 0:
            raise ValueError(
                f"grad_output must be a scalar for reduction={reduction!r}, got shape {go.shape}")
        return float(go), None
    if go.ndim == 0:
        return float(go), None
    try:
        rows = np.broadcast_to(go, rest)
    except ValueError:
        raise ValueError(
            f"grad_output of shape {go.shape} does not broadcast to the per-example shape {rest}"
        ) from None
    return 1.0, c_array(rows, dtype=np.float64).reshape(-1)


def saved_lse(lse, rest, from_logits):
    """The per-example lse of a forward (return_lse=True), as flat float64."""
    check_lse_applies(from_logits)
    lse_arr = as_array(lse, "lse")
    if lse_arr.dtype.kind != "f" and not is_bfloat16(lse_arr.dtype):
        raise TypeError(f"lse must be a float array, got dtype {lse_arr.dtype}")
    if lse_arr.shape != rest:
        raise ValueError(f"lse must have the per-example shape {rest}, got {lse_arr.shape}")
    return c_array(lse_arr, dtype=np.float64).reshape(-1)


def new_output(p, dtype):
    """A fresh gradient-shaped array and its (outer, C, inner) view, never a copy."""
    if p.axes == tuple(range(p.axes[0], p.axes[-1] + 1)):
        g = np.empty(p.shape, dtype=dtype)
        return g, g.reshape(p.rows.shape)  # C-ordered: always a view
    nd, k = len(p.shape), len(p.axes)
    moved = np.empty(moved_shape(p.shape, p.axes), dtype=dtype)
    view = moved.reshape(p.rows.shape)
    return np.moveaxis(moved, range(nd - k, nd), p.axes), view


def output_for(p, out, name="out"):
    """The gradient buffer of call `p` (a ce._kernels.Call). Returns (array for the
    caller, (outer, C, inner) view the kernel writes, array to copy into `out`
    afterwards or None)."""
    x = p.rows
    if out is None:
        g, view = new_output(p, p.x.dtype)
        return g, view, None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != p.shape:
        raise ValueError(f"{name} must have the logits' shape {p.shape}, got {out.shape}")
    if not same_dtype(out.dtype, p.dtype):
        raise TypeError(f"{name} must have the logits' dtype {p.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if p.target_rows is not None and np.may_share_memory(out, p.target_rows):
        raise ValueError(f"{name} must not overlap target")
    # inputs the kernel reads while it writes out (used as given when their dtype is right)
    for arg, arrays in (("weight", (p.class_weight, p.class_weight_64)), ("sample_weight", (p.row_weight,)),
                        ("grad_output", (p.upstream_grad,)), ("lse", (p.lse_in,)), ("target", (p.labels,))):
        if any(a is not None and np.may_share_memory(out, a) for a in arrays):
            raise ValueError(f"{name} must not overlap {arg}")
    if out.dtype == x.dtype and out.size:
        view = rows_view(out, p.axes)[0]
        in_place = view.__array_interface__["data"][0] == x.__array_interface__["data"][0] \
            and view.strides == x.strides
        if np.may_share_memory(view, out) and (in_place or not np.may_share_memory(view, x)):
            return out, view, None
    # byte-swapped, a layout no view describes, or overlapping the logits
    # other than element for element: computed aside, then copied into out
    g, view = new_output(p, x.dtype)
    return out, view, g


def check_peer_target(dense, floating, dtype, index_dtypes, ignore_index, error):
    """A peer's target rules, stricter than ce's own (ce.torch raises what PyTorch
    raises, `error`): a target of the logits' shape (`dense`) holds probabilities,
    must be floating, and takes no ignore_index >= 0 (none of its rows can be
    ignored); class indices must have one of `index_dtypes`."""
    if dense:
        if not floating:
            raise error(f"target of the input's shape holds class probabilities and must be "
                        f"floating point, got {dtype}")
        if ignore_index >= 0:
            raise error(f"ignore_index={ignore_index} applies to class-index targets only; a "
                        f"target of class probabilities has no rows to ignore")
    elif dtype not in index_dtypes:
        raise error(f"target of class indices must have dtype "
                    f"{' or '.join(str(d) for d in index_dtypes)}, got {dtype}")
