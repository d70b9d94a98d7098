"""One BLAS thread for a stretch of skinny matrix products, without rescanning libraries.

``threadpoolctl.threadpool_limits`` builds a new controller on every call, which walks
every shared library the process has loaded (~3 ms, ~25 ms the first time, and more once
scikit-learn and torch are in): paid once per chunk of a fit, that is a visible share of
it. The controller here is built once, on first use (not at import: ``import dpsynth``,
and so every CLI command, would pay ~14 ms for it), when numpy's and scipy's BLAS are
loaded (the products that need limiting run on those two; a BLAS loaded later is not
limited).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache

import scipy.linalg  # noqa: F401  (loads scipy's BLAS before the controller looks)
from threadpoolctl import ThreadpoolController


@cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def blas_threads(n: int) -> AbstractContextManager:
    """Context manager: numpy's and scipy's BLAS use ``n`` threads inside it (process-wide,
    like any BLAS limit), and their previous thread counts after it."""
    return _controller().limit(limits=int(n), user_api="blas")


def one_blas_thread() -> AbstractContextManager:
    """:func:`blas_threads` at one thread (the skinny products' setting)."""
    return blas_threads(1)
