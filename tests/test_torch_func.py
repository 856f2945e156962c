"""ce.torch under torch.func: grad, vmap, their compositions, jacrev."""
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
ct = pytest.importorskip("ce.torch")

REDUCTIONS = ["mean", "sum", "none"]


def _data(shape=(6, 5), seed=0, probs=False):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    c = shape[1] if len(shape) > 1 else shape[0]
    if probs:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=min(1, len(shape) - 1))
    else:
        t = torch.randint(0, c, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=g)
        if t.ndim:
            t.view(-1)[::4] = -100
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    return x, t, w


def _per_sample(fn, *batched):
    """The reference for vmap: one call per sample, stacked."""
    return torch.stack([fn(*[b[i] for b in batched]) for i in range(batched[0].shape[0])])


def _batch(sample, batch=4, seed=0):
    """A batch of `batch` samples of logits of shape `sample` (classes: 5), with targets."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn((batch,) + sample, generator=g, dtype=torch.float64)
    per_example = sample[:1] + sample[2:] if len(sample) > 1 else ()
    t = torch.randint(0, 5, (batch,) + per_example, generator=g)
    if per_example:
        t.view(-1)[::4] = -100
    return x, t, torch.rand(5, generator=g, dtype=torch.float64) + 0.1


OPTIONS = [{}, {"weight": "w"}, {"weight": "w", "label_smoothing": 0.2}]


def _kw(options, w, reduction):
    kw = {k: (w if v == "w" else v) for k, v in options.items()}
    return {**kw, "reduction": reduction}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "weight", "weight-smoothing"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 2)], ids=["2d", "3d"])
def test_grad_matches_torch(reduction, options, shape):
    x, t, w = _data(shape)
    kw = _kw(options, w, reduction)

    def loss(fn):
        return lambda x: fn(x, t, **kw).sum()

    torch.testing.assert_close(torch.func.grad(loss(ct.cross_entropy))(x),
                               torch.func.grad(loss(F.cross_entropy))(x))
    torch.testing.assert_close(torch.func.jacrev(lambda x: ct.cross_entropy(x, t, **kw))(x),
                               torch.func.jacrev(lambda x: F.cross_entropy(x, t, **kw))(x))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "weight", "weight-smoothing"])
@pytest.mark.parametrize("sample", [(5,), (3, 5), (3, 5, 2)], ids=["1d", "2d", "3d"])
def test_vmap_and_per_sample_gradients(reduction, options, sample):
    """vmap of the loss, and vmap(grad) (per-sample gradients), against one
    F.cross_entropy call per sample (a mean over all-ignored rows is NaN in both)."""
    x, t, w = _batch(sample, seed=1)
    kw = _kw(options, w, reduction)

    def loss(fn):
        return lambda x, t: fn(x, t, **kw).sum()

    torch.testing.assert_close(torch.vmap(loss(ct.cross_entropy))(x, t),
                               _per_sample(loss(F.cross_entropy), x, t), equal_nan=True)
    torch.testing.assert_close(torch.vmap(torch.func.grad(loss(ct.cross_entropy)))(x, t),
                               _per_sample(torch.func.grad(loss(F.cross_entropy)), x, t))


def test_vmap_in_dims_and_batched_weight():
    x, t, w = _batch((3, 5), seed=2)
    # the batch on dim 1 of the input, one target shared by every sample
    xs = x.movedim(0, 1)
    got = torch.vmap(lambda x: ct.cross_entropy(x, t[0]), in_dims=1)(xs)
    torch.testing.assert_close(got, torch.stack([F.cross_entropy(x[i], t[0]) for i in range(4)]))
    # per-sample class weights (PyTorch's own vmap rule cannot take them: masked_select)
    ws = torch.rand(4, 5, dtype=torch.float64) + 0.1
    got = torch.vmap(lambda x, t, w: ct.cross_entropy(x, t, weight=w))(x, t, ws)
    want = torch.stack([F.cross_entropy(x[i], t[i], weight=ws[i]) for i in range(4)])
    torch.testing.assert_close(got, want)
    g = torch.vmap(torch.func.grad(lambda x, t, w: ct.cross_entropy(x, t, weight=w)))(x, t, ws)
    torch.testing.assert_close(g, torch.stack([torch.func.grad(
        lambda x: F.cross_entropy(x, t[i], weight=ws[i]))(x[i]) for i in range(4)]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_targets_under_func(reduction):
    x, p, w = _data((6, 5), probs=True)
    kw = {"weight": w, "reduction": reduction, "label_smoothing": 0.1}

    def loss(fn):
        return lambda x, p: fn(x, p, **kw).sum()

    for argnums in (0, 1, (0, 1)):
        torch.testing.assert_close(torch.func.grad(loss(ct.cross_entropy), argnums=argnums)(x, p),
                                   torch.func.grad(loss(F.cross_entropy), argnums=argnums)(x, p))
    xb, pb = x.view(2, 3, 5), p.view(2, 3, 5)
    torch.testing.assert_close(torch.vmap(loss(ct.cross_entropy))(xb, pb),
                               _per_sample(loss(F.cross_entropy), xb, pb))
    torch.testing.assert_close(torch.vmap(torch.func.grad(loss(ct.cross_entropy)))(xb, pb),
                               _per_sample(torch.func.grad(loss(F.cross_entropy)), xb, pb))


def test_grad_of_vmap_and_float32():
    x, t, _ = _batch((3, 5), seed=3)
    x32 = x.float()

    def batched(fn):
        return lambda x: torch.vmap(lambda a, b: fn(a, b))(x, t).nansum()

    torch.testing.assert_close(torch.func.grad(batched(ct.cross_entropy))(x32),
                               torch.func.grad(batched(F.cross_entropy))(x32))


def test_no_second_order():
    """No double backward (the backward is a kernel call): an error, never a silent zero."""
    x, t, _ = _data()
    w = torch.rand(5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.func.grad(lambda x: (torch.func.grad(lambda x: ct.cross_entropy(x, t))(x) * w).sum())(x)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.func.hessian(lambda x: ct.cross_entropy(x, t))(x)
    with pytest.raises(NotImplementedError):  # no forward-mode rule
        torch.func.jvp(lambda x: ct.cross_entropy(x, t), (x,), (torch.ones_like(x),))
