"""Example downstream package: ce's fused loss and gradient called from Cython."""
from ._loss import loss_and_grad

__all__ = ["loss_and_grad"]
