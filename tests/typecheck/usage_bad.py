"""A misspelt reduction: mypy must reject this file with a Literal error (tests/test_typing.py)."""
import numpy as np

import ce

ce.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="meam")
