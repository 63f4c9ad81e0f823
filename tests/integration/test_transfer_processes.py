"""The classifier zoo's out-of-fold scores are the same bit for bit with one or two processes.

``n_jobs=2`` starts worker processes (tens of seconds on a busy machine): integration, not unit.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.evaluation.metrics import auroc
from helpers.embeddings import Data

pytestmark = pytest.mark.integration


def test_out_of_fold_scores_do_not_depend_on_the_process_count(embedding_train: Data) -> None:
    from cxr_triage.data.folds import dev_folds
    from cxr_triage.models.transfer import cross_validate_configs, zoo_configs

    X, y, groups = embedding_train
    folds = dev_folds(y, groups, n_folds=3, repeats=2, seed=1)
    configs = zoo_configs(["logreg", "random_forest"], X.shape[1], 150, seed=0)
    assert len({c.name for c in configs}) == len(configs) == 3 + 2
    one = cross_validate_configs(configs, X, y, groups, folds, seed=0, n_jobs=1)
    two = cross_validate_configs(configs, X, y, groups, folds, seed=0, n_jobs=2)
    assert one.scores.shape == (2, y.size, len(configs))
    assert np.array_equal(one.scores, two.scores)  # bit for bit
    assert np.isfinite(one.scores).all()
    frame = one.frame(np.arange(y.size).astype(str))
    assert len(frame) == 2 * y.size and set(frame["fold"]) == {0, 1, 2}
    assert auroc(y, one.scores[0, :, 0]) > 0.8
