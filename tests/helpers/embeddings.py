"""Separable embedding rows grouped by patient, for the classifier zoo (transfer) tests."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_classification

# (X rows, y per row, patient index per row)
Data = tuple[np.ndarray, np.ndarray, np.ndarray]


def embeddings(n_patients: int, images: int, dim: int, seed: int) -> Data:
    """Separable embeddings; every patient has ``images`` rows sharing one label."""
    X, y = make_classification(
        n_samples=n_patients,
        n_features=dim,
        n_informative=6,
        n_redundant=2,
        class_sep=1.5,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_patients), images)
    X_rows = X[rows] + rng.normal(0, 0.3, size=(rows.size, dim))
    return X_rows.astype(np.float32), y[rows], rows
