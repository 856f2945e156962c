"""Run the peers' own test samples with ce substituted for the peer.

PyTorch: every OpInfo sample of ``nn.functional.cross_entropy`` and every ModuleInfo sample of
``nn.CrossEntropyLoss``, taken from the installed torch's ``torch.testing._internal`` (which
needs the ``expecttest`` package), in every dtype the OpInfo lists for the CPU that ce computes
(float16 and bfloat16 in float32, float32, float64). For each sample, ``ce.torch`` and PyTorch get
the same tensors (cloned); the loss and the gradient with respect to every input that requires
one (the logits, a probability target) are compared with ``torch.testing.assert_close`` at its
default tolerances for the dtype. The upstream gradient is a fixed random tensor, so the
backward of ``reduction="none"`` is checked with a non-uniform grad_output.

Intended differences are listed in INTENDED below, each with its reason; a sample that hits one is
counted apart, and any other mismatch or error is a failure. The last line is
"N passed, N failed" and the exit code is 1 when anything failed.

    python tools/peer_suites.py            (-v: one line per sample)
"""
import argparse
import sys
import warnings

import torch
import torch.nn.functional as F

import ce.torch

# A sample that needs something ce.torch deliberately does not do. Each entry: a test on the
# sample's (constructor or call) keyword arguments and tensors, and the reason.
INTENDED = [
    (lambda kw, tensors: isinstance(kw.get("weight"), torch.Tensor) and kw["weight"].requires_grad,
     "no gradient with respect to the class weights: ce.torch treats `weight` as a constant "
     "(PyTorch differentiates it); the loss itself is compared in the forward check"),
]

HALF = (torch.float16, torch.bfloat16)
HALF_REASON = ("float16/bfloat16: ce computes in float32 and rounds once, PyTorch's CPU kernel "
               "rounds the log-softmax to the half type first; where the two disagree, ce's "
               "result is compared with PyTorch's float64 result of the same sample instead")


def _intended(kw, tensors):
    for test, reason in INTENDED:
        if test(kw, tensors):
            return reason
    return None


def _clone(v):
    if isinstance(v, torch.Tensor):
        c = v.detach().clone()
        return c.requires_grad_(v.requires_grad)
    return v


def _loss_and_grads(fn, args, kwargs, grad_seed):
    """Loss and the gradients of (grad_output * loss).sum() for the tensors needing one."""
    args = [_clone(a) for a in args]
    kwargs = {k: _clone(v) for k, v in kwargs.items()}
    loss = fn(*args, **kwargs)
    needs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = []
    if needs and loss.requires_grad:
        gen = torch.Generator().manual_seed(grad_seed)
        go = torch.rand(loss.shape, generator=gen, dtype=torch.float64).to(loss.dtype) + 0.5
        grads = torch.autograd.grad(loss, needs, go, allow_unused=True)
    return loss, grads


def _compare(name, reference, ours, args, kwargs, seed, verbose, counts, options=None):
    """One sample: PyTorch's result against ce's; updates counts. `options`: the keywords
    that configure the call (the call's own, or a module's constructor's)."""
    reason = _intended(kwargs if options is None else options, args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want_loss, want_grads = _loss_and_grads(reference, args, kwargs, seed)
            if reason is not None:  # forward only: the loss must still agree
                with torch.no_grad():
                    got = ours(*[_clone(a).detach() for a in args],
                               **{k: _clone(v).detach() if isinstance(v, torch.Tensor) else v
                                  for k, v in kwargs.items()})
                torch.testing.assert_close(got, want_loss.detach())
                counts["intended"].setdefault(reason, 0)
                counts["intended"][reason] += 1
                if verbose:
                    print(f"intended  {name}: {reason}")
                return
            got_loss, got_grads = _loss_and_grads(ours, args, kwargs, seed)
            try:
                _assert_same(got_loss, got_grads, want_loss, want_grads)
            except AssertionError:
                if got_loss.dtype not in HALF:
                    raise
                # the same sample in float64 (PyTorch), rounded to the half type at the end
                up = [_as_double(a) for a in args]
                up_kw = {k: _as_double(v) for k, v in kwargs.items()}
                want_loss, want_grads = _loss_and_grads(_in_double(reference), up, up_kw, seed)
                _assert_same(got_loss, got_grads, want_loss.to(got_loss.dtype),
                             [w.to(g.dtype) for g, w in zip(got_grads, want_grads)])
                counts["intended"][HALF_REASON] = counts["intended"].get(HALF_REASON, 0) + 1
                if verbose:
                    print(f"intended  {name}: {HALF_REASON}")
                return
    except Exception as exc:  # a mismatch or an error: both are failures
        counts["failed"].append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if verbose:
            print(f"FAILED    {name}: {exc}")
        return
    counts["passed"] += 1
    if verbose:
        print(f"passed    {name}")


def _assert_same(loss, grads, want_loss, want_grads):
    torch.testing.assert_close(loss, want_loss)
    assert len(grads) == len(want_grads)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)


def _as_double(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().double().requires_grad_(v.requires_grad)
    return v


def _in_double(reference):
    """The reference, with a module's floating buffers (weight) in float64 too."""
    if isinstance(reference, torch.nn.Module):
        return reference.double()
    return reference


def _describe(t):
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)}{str(t.dtype).replace('torch.', ' ')}{' grad' if t.requires_grad else ''}"
    return repr(t)


def opinfo_samples(counts, verbose):
    from torch.testing._internal.common_methods_invocations import op_db

    ops = [op for op in op_db if op.name == "nn.functional.cross_entropy"]
    if not ops:
        raise SystemExit("this torch has no OpInfo for nn.functional.cross_entropy")
    for op in ops:
        dtypes = [d for d in sorted(op.supported_dtypes("cpu"), key=str)
                  if d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)]
        for dtype in dtypes:
            for i, s in enumerate(op.sample_inputs("cpu", dtype, requires_grad=True)):
                args = [s.input, *s.args]
                name = (f"OpInfo {op.name}{'.' + op.variant_test_name if op.variant_test_name else ''} "
                        f"{str(dtype).replace('torch.', '')} #{i} "
                        f"({', '.join(_describe(a) for a in args)}; {s.kwargs})")
                _compare(name, F.cross_entropy, ce.torch.cross_entropy, args, dict(s.kwargs),
                         seed=i, verbose=verbose, counts=counts)
                counts["opinfo"] += 1


def moduleinfo_samples(counts, verbose):
    from torch.testing._internal.common_modules import module_db

    infos = [m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss]
    if not infos:
        raise SystemExit("this torch has no ModuleInfo for nn.CrossEntropyLoss")
    for info in infos:
        for dtype in (torch.float32, torch.float64):
            inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                             training=True)
            for i, mi in enumerate(inputs):
                ctor, fwd = mi.constructor_input, mi.forward_input
                if fwd is None:
                    continue
                ref_module = torch.nn.CrossEntropyLoss(*ctor.args, **ctor.kwargs)
                our_module = ce.torch.CrossEntropyLoss(*ctor.args, **ctor.kwargs)
                name = (f"ModuleInfo CrossEntropyLoss {str(dtype).replace('torch.', '')} {mi.desc} "
                        f"({', '.join(_describe(a) for a in fwd.args)}; ctor {ctor.kwargs})")
                _compare(name, ref_module, our_module, list(fwd.args), dict(fwd.kwargs),
                         seed=i, verbose=verbose, counts=counts, options=ctor.kwargs)
                counts["moduleinfo"] += 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per sample")
    args = ap.parse_args(argv)
    counts = {"passed": 0, "failed": [], "intended": {}, "opinfo": 0, "moduleinfo": 0}
    opinfo_samples(counts, args.verbose)
    moduleinfo_samples(counts, args.verbose)
    print(f"torch {torch.__version__}: {counts['opinfo']} OpInfo samples of "
          f"nn.functional.cross_entropy, {counts['moduleinfo']} ModuleInfo samples of "
          f"nn.CrossEntropyLoss, ce.torch against PyTorch (loss and gradients, assert_close)")
    for reason, n in counts["intended"].items():
        print(f"intended difference ({n} samples): {reason}")
    for line in counts["failed"]:
        print(f"FAILED {line}")
    n_intended = sum(counts["intended"].values())
    print(f"{counts['passed'] + n_intended} passed, {len(counts['failed'])} failed"
          + (f" ({n_intended} with an intended difference)" if n_intended else ""))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
