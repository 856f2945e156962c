"""Correct use of ce's public API: mypy must accept this file (tests/test_typing.py).

Checked, never run: the annotated assignments tell mypy what types to expect.
"""
import numpy as np
from numpy.typing import NDArray

import ce
import ce.dask

logits = np.zeros((4, 3), dtype=np.float32)
target = np.array([0, 2, 1, 0])

loss = ce.cross_entropy(logits, target, reduction="sum", label_smoothing=0.1, z_loss=1e-4,
                        softcap=30.0, ignore_index=-1, n_threads=2)
per_example = ce.cross_entropy(logits, target, axis=(1,), reduction="none", weight=[1.0, 2.0, 1.0])
grad: NDArray[np.generic] = ce.cross_entropy_grad(logits, target, grad_output=0.5, out=logits)
fused = ce.cross_entropy_with_grad(logits, target, reduction="mean", return_lse=True)
lsm: NDArray[np.generic] = ce.log_softmax(logits, axis=-1)
sm: NDArray[np.generic] = ce.softmax(logits, out=np.empty_like(logits))
lse = ce.logsumexp(logits, axis=1)

s: ce.Score = ce.score(logits, target, top_k=(1, 2), sample_weight=np.ones(4))
total: ce.Score = s + ce.score(logits, target)
accuracy: float = total.accuracy
seq: ce.SequenceScore = ce.sequence_score(logits[None], target[None], ignore_index=-100)

hidden = np.zeros((4, 8), dtype=np.float32)
w = np.zeros((3, 8), dtype=np.float32)
linear_loss = ce.linear_cross_entropy(hidden, w, target, reduction="sum", chunk_rows=2)
l, g_hidden, g_w, g_b = ce.linear_cross_entropy_with_grad(hidden, w, target, linear_bias=np.zeros(3))
linear_s: ce.Score = ce.linear_score(hidden, w, target, top_k=(1,))
ce.show_config()
dask_loss = ce.dask.cross_entropy(logits, target, reduction="sum", n_threads=1)
dask_score = ce.dask.score(logits, target, top_k=(1, 5), compute=False)
