"""ichtrain.metrics: the evaluation figures against hand-computed values, and the paired patient bootstrap."""

import numpy as np
import pytest

from ichtrain.metrics import confusion_rates, paired_bootstrap, roc_auc, weighted_log_loss


def test_roc_auc_hand_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_confusion_rates_and_weighted_log_loss_hand_values():
    r = confusion_rates([1, 1, 0, 0, 0], [0.9, 0.3, 0.6, 0.2, 0.1], np.array([0.5]))
    assert r["sensitivity"][0] == 0.5 and r["specificity"][0] == pytest.approx(2 / 3)
    assert r["fall_out"][0] == pytest.approx(1 / 3) and r["miss_rate"][0] == 0.5
    y = np.array([[0, 0, 0, 0, 1, 1]], float)
    p = np.array([[0.1, 0.1, 0.1, 0.1, 0.8, 0.9]])
    expected = (4 * -np.log(0.9) - np.log(0.8) - 2 * np.log(0.9)) / 7
    assert weighted_log_loss(y, p) == pytest.approx(expected)





def _patients(rng, n_patients=12, per=5):
    groups = np.repeat([f"p{k}" for k in range(n_patients)], per)
    y = (rng.random((groups.size, 6)) < 0.3).astype(np.float32)
    y[:, 5] = y[:, :5].max(1)
    return y, groups


def test_paired_bootstrap_resamples_patients_whole_and_pairs_the_difference():
    """Identical predictions differ by exactly 0 in every resample; predictions better on every slice give a
    difference interval below 0; the point values are the metrics on all slices; and a resample's loss is the
    loss of whole patients drawn with replacement (the first resample rebuilt by hand from the same draws)."""
    rng = np.random.default_rng(0)
    y, groups = _patients(rng)
    p = np.clip(np.where(y > 0, 0.6, 0.3) + rng.normal(0, 0.1, y.shape), 0.01, 0.99)
    better = np.clip(np.where(y > 0, p + 0.1, p - 0.1), 0.01, 0.99)
    first, same, good = paired_bootstrap(y, [p, p.copy(), better], groups, bootstrap=200, seed=3)
    assert first["weighted_log_loss"]["value"] == pytest.approx(weighted_log_loss(y, p))
    assert first["auc_any"]["value"] == pytest.approx(roc_auc(y[:, 5], p[:, 5]))
    assert same["weighted_log_loss_minus_first"]["value"] == 0.0
    assert same["weighted_log_loss_minus_first"]["ci"] == [0.0, 0.0]
    lo, hi = good["weighted_log_loss_minus_first"]["ci"]
    assert lo < hi < 0
    # the first resample by hand: patients (sorted) drawn by the generator paired_bootstrap seeds
    uniq = np.unique(groups)
    draw = np.random.default_rng(3).integers(0, uniq.size, uniq.size)
    idx = np.concatenate([np.flatnonzero(groups == uniq[k]) for k in draw])
    one = paired_bootstrap(y, [p], groups, bootstrap=1, seed=3)[0]["weighted_log_loss"]["ci"]
    assert one == pytest.approx([weighted_log_loss(y[idx], p[idx])] * 2, rel=1e-12)
