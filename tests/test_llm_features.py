"""z_loss and softcap: against the float64 reference (tests/reference.py) and, where
installed, PyTorch compositions (cap * tanh(x / cap), then F.cross_entropy + z * lse**2)."""
import numpy as np
import pytest

import ce
from helpers import central_difference
from reference import ref_cross_entropy


@pytest.mark.parametrize("cap", [None, 5.0, 30.0])
@pytest.mark.parametrize("z", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("c", [7, 300])
def test_loss_and_finite_difference_gradient(cap, z, c):
    rng = np.random.default_rng(c)
    x = rng.normal(size=(6, c)) * 20
    y = rng.integers(0, c, 6)
    loss, g = ce.cross_entropy_with_grad(x, y, softcap=cap, z_loss=z)

    def ref(xx):
        return ref_cross_entropy(xx, y, softcap=cap, z_loss=z)

    assert loss == pytest.approx(ref(x), rel=1e-12)
    for idx in [(0, 0), (1, y[1]), (5, c - 1)]:
        num = central_difference(ref, x, idx)
        # central differences of a loss of size L carry about 1e-16 * L / h of rounding noise
        assert g[idx] == pytest.approx(num, rel=1e-5, abs=1e-8 * max(1.0, abs(loss)))


@pytest.mark.parametrize("shape, axis", [((50, 7), -1), ((20, 300), -1), ((3, 11, 4, 5), 1)])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"z_loss": 1e-3}, {"reduction": "sum"}])
def test_matches_torch_composition(shape, axis, kw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    cap = 7.0
    x = rng.normal(size=shape) * 20
    c = shape[axis]
    y = rng.integers(0, c, tuple(d for i, d in enumerate(shape) if i != axis % len(shape)))
    loss, g, lse = ce.cross_entropy_with_grad(x, y, axis=axis, softcap=cap, return_lse=True, **kw)
    tx = torch.tensor(x, requires_grad=True)
    capped = cap * torch.tanh(tx / cap)
    tl = F.cross_entropy(capped, torch.tensor(y), **{k: v for k, v in kw.items() if k != "z_loss"})
    if "z_loss" in kw:
        tl = tl + kw["z_loss"] * (torch.logsumexp(capped, 1) ** 2).mean()
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-10)
    np.testing.assert_allclose(g, tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ce.cross_entropy_grad(x, y, axis=axis, softcap=cap, lse=lse, **kw), g, atol=1e-13)


def test_softcap_and_z_loss_are_validated():
    x, y = np.zeros((2, 3)), np.array([0, 1])
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="softcap"):
            ce.cross_entropy(x, y, softcap=bad)
    with pytest.raises(ValueError, match="z_loss"):
        ce.cross_entropy(x, y, z_loss=-1.0)
    with pytest.raises(ValueError, match="z_loss and softcap"):
        ce.cross_entropy(np.full((2, 3), 1 / 3), y, from_logits=False, z_loss=0.1)
