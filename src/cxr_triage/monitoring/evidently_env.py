"""How this package calls Evidently: quietly, and timed.

Evidently is imported only inside functions of ``cxr_triage.monitoring`` (import-linter
contract "Evidently is used by monitoring only"), so importing the package does nothing.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["Timer", "quiet"]


class Timer:
    """Adds the seconds a block took to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.timings[self.name] = self.timings.get(self.name, 0.0) + elapsed


@contextmanager
def quiet() -> Iterator[None]:
    """Silence Evidently's harmless warnings.

    Its stat tests divide by zero on constant columns; its import warns about numpy.core and
    litestar deprecations.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
