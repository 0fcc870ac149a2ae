"""S¹/S² contract: directions are labelled on the train split and scored on the held-out split (issue #20: scoring
on the train split went unnoticed)."""

from __future__ import annotations

import numpy as np
import pytest

from jinterp.metrics import dissection as dis


def test_s1_s2_label_on_train_and_score_on_val():
    # Direction 0 looks like a detector of concept 0 on train (0.5) but generalizes poorly (0.1 on val), and is
    # best at concept 1 on val (0.3). Direction 1 is a solid detector of concept 1 on both splits.
    train = np.array([[0.5, 0.2, 0.0], [0.0, 0.6, 0.1]])
    val = np.array([[0.1, 0.3, 0.0], [0.0, 0.4, 0.1]])
    s1, s2 = dis.s1_s2(train, val)
    assert s1 == pytest.approx(0.1 + 0.4)          # val IoU at the train label; not 1.1 (train) nor 0.7 (val labels)
    assert s2 == pytest.approx(0.1 + 0.4)          # two distinct train labels, each its best val IoU
    # Labelling on val would give direction 0 the label of direction 1: S² would count one concept only.
    assert dis.s1_s2(val, val) == pytest.approx((0.7, 0.4))
    assert dis.s1_s2(train, train) == pytest.approx((1.1, 1.1))
