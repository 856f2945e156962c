"""Bad arguments raise ValueError or TypeError whose message names the argument, before anything
is written: an ``out=`` array passed along is left exactly as it was."""
import re

import numpy as np
import pytest

import ce

N, C = 5, 4
SENTINEL = 12345.0

FUNCTIONS = {
    "cross_entropy": ce.cross_entropy,
    "cross_entropy_grad": ce.cross_entropy_grad,
    "cross_entropy_with_grad": ce.cross_entropy_with_grad,
}


def good_inputs(dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(dtype)
    y = np.array([0, 3, 1, -100, 2])
    return x, y


def call_leaves_out_untouched(name, logits, target, exc, match, **kwargs):
    """Call ce.<name> expecting ``exc`` matching ``match``; for the gradient functions pass an
    out= array of the right kind filled with a sentinel and check it is not touched."""
    fn = FUNCTIONS[name]
    out = None
    logits_arr = np.asarray(logits)
    if name != "cross_entropy" and "out" not in kwargs and logits_arr.dtype.kind == "f":
        out = np.full(logits_arr.shape, SENTINEL, dtype=logits_arr.dtype)
        kwargs["out"] = out
    logits_before = np.array(logits_arr, copy=True)
    with pytest.raises(exc, match=match):
        fn(logits, target, **kwargs)
    if out is not None:
        np.testing.assert_array_equal(out, SENTINEL, err_msg="out= was written before the error")
    np.testing.assert_array_equal(np.asarray(logits), logits_before)


@pytest.fixture(params=list(FUNCTIONS))
def fname(request):
    return request.param


# --------------------------------------------------------------------------------------------
# Keyword arguments
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["avg", "", "MEAN ", None, 1])
def test_bad_reduction(fname, reduction):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, (ValueError, TypeError), r"\breduction\b",
                              reduction=reduction)


@pytest.mark.parametrize("value", [-0.1, 1.5, -1e-12, float("nan"), float("inf")])
def test_label_smoothing_outside_unit_interval(fname, value):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, ValueError, r"\blabel_smoothing\b", label_smoothing=value)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_label_smoothing_bounds_are_valid(value):
    x, y = good_inputs()
    assert np.isfinite(ce.cross_entropy(x, y, label_smoothing=value))


@pytest.mark.parametrize("value", [0, -1, -8, 1.5, 2.0, True, False, "2"])
def test_bad_n_threads(fname, value):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, (ValueError, TypeError), r"\bn_threads\b",
                              n_threads=value)


@pytest.mark.parametrize("axis", [(1, 1), (1, -1), (0, 0), (-2, 0)])
def test_duplicate_axes(fname, axis):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, ValueError, r"\baxis\b",
                              axis=axis)


@pytest.mark.parametrize("axis", [2, -3, (0, 2)])
def test_axis_out_of_range(fname, axis):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, (ValueError, IndexError, TypeError), r"\baxis\b",
                              axis=axis)


@pytest.mark.parametrize("shape", [(C + 1,), (C - 1,), (1, C), (2, C), ()])
def test_weight_of_wrong_shape(fname, shape):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, ValueError, r"\bweight\b", weight=np.ones(shape))


@pytest.mark.parametrize("shape", [(N + 1,), (N - 1,), (N, 2), (2, N)])
def test_sample_weight_of_wrong_shape(fname, shape):
    x, y = good_inputs()
    call_leaves_out_untouched(fname, x, y, ValueError, r"\bsample_weight\b",
                              sample_weight=np.ones(shape))


@pytest.mark.parametrize("kind", ["index", "dense"])
def test_sample_weight_of_wrong_shape_dense_and_nd(fname, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, C, 3))
    t = rng.integers(0, C, (2, 3)) if kind == "index" else np.full(x.shape, 1.0 / C)
    call_leaves_out_untouched(fname, x, t, ValueError, r"\bsample_weight\b", axis=1,
                              sample_weight=np.ones((3, 2)))


@pytest.mark.parametrize("option", [{"z_loss": 0.1}, {"softcap": 5.0}])
def test_z_loss_and_softcap_need_logits(fname, option):
    p = np.full((N, C), 1.0 / C)
    y = np.array([0, 1, 2, 3, 0])
    (key,) = option
    call_leaves_out_untouched(fname, p, y, ValueError, rf"\b({key}|from_logits)\b", from_logits=False,
                              **option)


# --------------------------------------------------------------------------------------------
# Labels and targets
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [C, C + 7, -1, -99, -101, 10**6])
def test_label_out_of_range_names_value_and_position(fname, bad):
    x, _ = good_inputs()
    y = np.array([0, 1, 2, 3, bad])      # the bad label is the last one: nothing written before
    call_leaves_out_untouched(fname, x, y, ValueError,
                              rf"(?s)(?=.*{re.escape(str(bad))})(?=.*\(4,\))", )


def test_label_out_of_range_position_is_an_index_tuple(fname):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, C, 3, 2))
    y = rng.integers(0, C, (2, 3, 2))
    y[1, 2, 0] = C + 3
    call_leaves_out_untouched(fname, x, y, ValueError,
                              rf"(?s)(?=.*{C + 3})(?=.*\(1, 2, 0\))", axis=1)


def test_label_equal_to_custom_ignore_index_is_fine_but_minus_100_is_not():
    x, _ = good_inputs()
    y = np.array([0, 1, 2, 3, -100])
    assert np.isfinite(ce.cross_entropy(x, y))
    with pytest.raises(ValueError, match=r"-100"):
        ce.cross_entropy(x, y, ignore_index=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_class_index_target(fname, dtype):
    x, _ = good_inputs()
    y = np.array([0, 1, 2, 3, 0], dtype=dtype)
    call_leaves_out_untouched(fname, x, y, TypeError, r"\btarget\b")


@pytest.mark.parametrize("shape", [(N + 1,), (N, C + 1), (N, 1), (1, N), (N, C, 1), (C, N)])
def test_target_of_wrong_shape(fname, shape):
    x, _ = good_inputs()
    t = np.zeros(shape, dtype=np.int64)
    call_leaves_out_untouched(fname, x, t, ValueError, r"\btarget\b")


# --------------------------------------------------------------------------------------------
# Logits
# --------------------------------------------------------------------------------------------

def test_zero_classes(fname):
    x = np.zeros((N, 0))
    y = np.zeros(N, dtype=np.int64)
    with pytest.raises(ValueError, match=r"\blogits\b"):
        FUNCTIONS[fname](x, y)
    with pytest.raises(ValueError, match=r"\blogits\b"):
        FUNCTIONS[fname](np.zeros((2, 0, 3)), np.zeros((2, 3), dtype=np.int64), axis=1)


def test_zero_dimensional_logits(fname):
    with pytest.raises(ValueError, match=r"\blogits\b"):
        FUNCTIONS[fname](np.array(1.0), np.array(0))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_or_bool_logits(fname, dtype):
    x = np.ones((N, C), dtype=dtype)
    y = np.array([0, 1, 2, 3, 0])
    with pytest.raises(TypeError, match=r"\blogits\b"):
        FUNCTIONS[fname](x, y)


# --------------------------------------------------------------------------------------------
# out=, lse=, grad_output=
# --------------------------------------------------------------------------------------------

GRAD_FUNCTIONS = ["cross_entropy_grad", "cross_entropy_with_grad"]


def bad_outs(dtype):
    readonly = np.full((N, C), SENTINEL, dtype=dtype)
    readonly.flags.writeable = False
    other = np.float32 if dtype == np.float64 else np.float64
    return {
        "shape": np.full((N, C + 1), SENTINEL, dtype=dtype),
        "transposed shape": np.full((C, N), SENTINEL, dtype=dtype),
        "flat": np.full(N * C, SENTINEL, dtype=dtype),
        "dtype": np.full((N, C), SENTINEL, dtype=other),
        "int dtype": np.full((N, C), 7, dtype=np.int64),
        "readonly": readonly,
        "list": [[SENTINEL] * C] * N,
    }


@pytest.mark.parametrize("name", GRAD_FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("which", list(bad_outs(np.float64)))
def test_bad_out(name, dtype, which):
    x, y = good_inputs(dtype)
    out = bad_outs(dtype)[which]
    before = np.array(out, copy=True)
    with pytest.raises((ValueError, TypeError), match=r"\bout\b"):
        FUNCTIONS[name](x, y, out=out)
    np.testing.assert_array_equal(np.asarray(out), before)


@pytest.mark.parametrize("fn", [ce.softmax, ce.log_softmax], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("which", list(bad_outs(np.float64)))
def test_bad_out_softmax(fn, which):
    x, _ = good_inputs()
    out = bad_outs(np.float64)[which]
    before = np.array(out, copy=True)
    with pytest.raises((ValueError, TypeError), match=r"\bout\b"):
        fn(x, out=out)
    np.testing.assert_array_equal(np.asarray(out), before)


@pytest.mark.parametrize("shape", [(N + 1,), (N, 1), (1,), (N, C)])
def test_lse_of_wrong_shape(shape):
    x, y = good_inputs()
    out = np.full((N, C), SENTINEL)
    with pytest.raises(ValueError, match=r"\blse\b"):
        ce.cross_entropy_grad(x, y, lse=np.zeros(shape), out=out)
    np.testing.assert_array_equal(out, SENTINEL)


@pytest.mark.parametrize("name", GRAD_FUNCTIONS)
@pytest.mark.parametrize("shape", [(N + 1,), (2, N), (3,)])
def test_grad_output_not_broadcastable_for_none(name, shape):
    x, y = good_inputs()
    out = np.full((N, C), SENTINEL)
    with pytest.raises(ValueError, match=r"\bgrad_output\b"):
        FUNCTIONS[name](x, y, reduction="none", grad_output=np.ones(shape), out=out)
    np.testing.assert_array_equal(out, SENTINEL)


def test_errors_checked_before_writing_in_place():
    """out=logits with a bad label: the logits must survive."""
    x, _ = good_inputs()
    before = x.copy()
    y = np.array([0, 1, 2, 3, C])
    with pytest.raises(ValueError):
        ce.cross_entropy_grad(x, y, out=x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError):
        ce.cross_entropy_with_grad(x, y, out=x)
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------------------------------
# A few of each kind together: labels, options, arrays
# ------------------------------------------------------------------------------------------

def test_bad_label_names_value_and_position_and_writes_nothing():
    x = np.zeros((2, 3, 4))
    y = np.zeros((2, 4), np.int64)
    y[1, 2] = 7
    out = np.full_like(x, 42.0)
    with pytest.raises(ValueError, match=r"label 7 at position \(1, 2\)"):
        ce.cross_entropy_grad(x, y, axis=1, out=out)
    assert (out == 42.0).all()


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"weight": np.ones(4)}, ValueError, "weight"),
    ({"sample_weight": np.ones(5)}, ValueError, "sample_weight"),
    ({"n_threads": 0}, ValueError, "n_threads"),
    ({"n_threads": 1.5}, TypeError, "n_threads"),
    ({"axis": 2}, ValueError, "axis"),
    ({"out": np.zeros((2, 3), np.float32)}, TypeError, "out"),
    ({"out": np.zeros((3, 2))}, ValueError, "out"),
    ({"grad_output": np.ones(2)}, ValueError, "grad_output"),
])
def test_bad_options_raise_naming_the_argument(kwargs, exc, word):
    x = np.zeros((2, 3))
    with pytest.raises(exc, match=word):
        ce.cross_entropy_grad(x, np.array([0, 1]), **kwargs)


def test_bad_arrays():
    with pytest.raises(TypeError, match="logits"):
        ce.cross_entropy(np.zeros((2, 3), int), np.array([0, 1]))
    with pytest.raises(ValueError, match="logits"):
        ce.cross_entropy(np.float64(1.0), np.array(0))
    with pytest.raises(ValueError, match="logits"):
        ce.cross_entropy(np.zeros((2, 0)), np.array([0, 1]))
    with pytest.raises(TypeError, match="target"):
        ce.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target"):
        ce.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


@pytest.mark.parametrize("arg", ["weight", "sample_weight"])
def test_out_must_not_overlap_an_input_the_kernel_reads(arg):
    """out= sharing memory with the weights (used as given, no copy) would be read after it
    was written: refused, naming the argument, before anything is written."""
    n, c = 300, 8
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((n, c)), rng.integers(0, c, n)
    buf = np.full(n * c, 0.5)
    out = buf.reshape(n, c)
    kw = {"weight": out[0]} if arg == "weight" else {"sample_weight": buf[:n]}
    before = buf.copy()
    with pytest.raises(ValueError, match=f"out must not overlap {arg}"):
        ce.cross_entropy_grad(x, y, reduction="sum", out=out, **kw)
    np.testing.assert_array_equal(buf, before)
