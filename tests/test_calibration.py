"""ichtrain.calibration against hand values and independent numpy references."""

import numpy as np
import pytest

from ichtrain.calibration import (Calibration, expected_calibration_error, fit_calibration, fit_platt,
                                  prior_shift_offsets, reliability)
from ichtrain.metrics import weighted_log_loss


def _logit(p):
    return np.log(p / (1 - p))


def test_prior_shift_offset_hand_values():
    y = np.zeros((100, 6))
    y[:10, 5] = 1  # 'any' positive in 10 of 100 slices
    w = np.where(y[:, 5] == 1, 9.0, 1.0)  # positives drawn 9x as often: half of the draws
    offset, natural, sampled = prior_shift_offsets(y, w)
    assert natural[5] == pytest.approx(10.5 / 101) and sampled[5] == pytest.approx(50.5 / 101)
    assert offset[5] == pytest.approx(_logit(10.5 / 101) - _logit(50.5 / 101))
    assert offset[0] == pytest.approx(0.0)  # a label without positives is not shifted by the weights


def test_prior_shift_recovers_the_natural_posterior():
    """A model calibrated to the weighted (sampled) distribution, shifted by the offset, equals the
    Bayes posterior under the natural prior: p(y|x) = pi L / (pi L + (1 - pi)), L the likelihood ratio."""
    rng = np.random.default_rng(0)
    n = 200_000
    y = (rng.random(n) < 0.08).astype(float)
    x = rng.normal(np.where(y == 1, 1.5, 0.0), 1.0)
    w = np.where(y == 1, 6.0, 1.0)
    labels = np.repeat(y[:, None], 6, axis=1)
    offset, natural, sampled = prior_shift_offsets(labels, w)
    lr = np.exp(1.5 * x - 1.125)  # N(1.5, 1) / N(0, 1)
    p_sampled = sampled[0] * lr / (sampled[0] * lr + 1 - sampled[0])
    p_natural = natural[0] * lr / (natural[0] * lr + 1 - natural[0])
    np.testing.assert_allclose(_logit(p_sampled) + offset[0], _logit(p_natural), atol=1e-9)


def test_platt_matches_a_grid_search_and_recovers_known_parameters():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 5000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(float)
    a, b = fit_platt(z, y, ridge=0.0)
    assert a == pytest.approx(0.5, abs=0.06) and b == pytest.approx(-1.0, abs=0.1)
    # the ridge objective, minimised on a grid (independent of Newton's method)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    z_small, t_small = z[:300], t[:300]
    a_r, b_r = fit_platt(z_small, y[:300], ridge=5.0)
    grid_a, grid_b = np.meshgrid(np.linspace(0, 2, 401), np.linspace(-3, 1, 401), indexing="ij")
    q = 1 / (1 + np.exp(-(grid_a[..., None] * z_small + grid_b[..., None])))
    obj = -(t_small * np.log(q) + (1 - t_small) * np.log(1 - q)).sum(-1) + 5.0 * ((grid_a - 1) ** 2 + grid_b ** 2)
    i, j = np.unravel_index(np.argmin(obj), obj.shape)
    assert a_r == pytest.approx(grid_a[i, j], abs=0.01) and b_r == pytest.approx(grid_b[i, j], abs=0.02)


def test_calibration_beats_overconfident_outputs_and_the_prior_on_fresh_data():
    """Outputs trained under balanced sampling (too high for a 10% label) become better than the constant
    prior once calibrated on a val sample, and the map is sigmoid(a (logit p + offset) + b)."""
    rng = np.random.default_rng(2)

    def draw(n):
        y = (rng.random((n, 6)) < 0.1).astype(float)
        score = rng.normal(np.where(y == 1, 1.0, -1.0), 1.2) + 1.5  # ranks well, centred far too high
        return y, 1 / (1 + np.exp(-score))

    y_train, _ = draw(2000)
    w = np.where(y_train[:, 5] == 1, 9.0, 1.0)
    y_val, p_val = draw(1500)
    y_test, p_test = draw(3000)
    cal = fit_calibration(y_train, w, y_val, p_val)
    p_cal = cal.apply(p_test)
    z = _logit(np.clip(p_test, 1e-7, 1 - 1e-7)) + np.array(cal.offset)
    np.testing.assert_allclose(p_cal, 1 / (1 + np.exp(-(np.array(cal.scale) * z + np.array(cal.shift)))), rtol=1e-5)
    prior = np.broadcast_to(y_train.mean(0), y_test.shape)
    assert weighted_log_loss(y_test, p_cal) < weighted_log_loss(y_test, prior) < weighted_log_loss(y_test, p_test)
    assert abs(p_cal[:, 5].mean() - y_test[:, 5].mean()) < 0.02
    assert expected_calibration_error(y_test[:, 5], p_cal[:, 5]) < expected_calibration_error(y_test[:, 5], p_test[:, 5])


def test_calibration_round_trips_and_refuses_damage(tmp_path):
    cal = fit_calibration(np.eye(6)[np.arange(30) % 6], np.ones(30), None, None)
    assert cal.scale == (1.0,) * 6 and cal.shift == (0.0,) * 6 and cal.val_slices == 0
    cal.save(str(tmp_path))
    assert Calibration.load(str(tmp_path)) == cal
    (tmp_path / "calibration.json").write_text('{"offset": [1, 2]}')
    with pytest.raises(OSError, match="damaged"):
        Calibration.load(str(tmp_path))
    assert Calibration.load(str(tmp_path / "none")) is None


def test_ece_and_reliability_hand_values():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.85])
    r = reliability(y, p, bins=10)
    assert r["count"][0] == 1 and r["count"][1] == 2 and r["count"][8] == 1 and r["count"][9] == 1
    assert r["rate"][1] == pytest.approx(0.5) and r["mean_prob"][1] == pytest.approx(0.135)
    expected = (1 * 0.05 + 2 * abs(0.5 - 0.135) + 1 * abs(1 - 0.85) + 1 * abs(1 - 0.95)) / 5
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(expected)


def test_val_evidence_grows_with_patients_not_slices():
    """Each val patient weighs one in total: the outputs say 0.1 and the val slices are half positive;
    the calibrated value moves toward 0.5 as patients are added (30 slices each), while weighing slices
    would let a single patient's 30 slices move it all the way."""
    rng = np.random.default_rng(3)

    def calibrated(patients, by_patient=True):
        groups = np.repeat([f"p{i}" for i in range(patients)], 30)
        y = np.zeros((groups.size, 6))
        y[:, 5] = rng.random(groups.size) < 0.5
        y_train = np.zeros((100, 6))
        y_train[:10] = 1
        cal = fit_calibration(y_train, np.ones(100), y, np.full((groups.size, 6), 0.1),
                              val_groups=groups if by_patient else None)
        return float(cal.apply(np.full((1, 6), 0.1))[0, 5])

    moved = [calibrated(n) for n in (1, 3, 10, 300)]
    assert all(a < b for a, b in zip(moved, moved[1:])), moved
    assert moved[0] < 0.3 and moved[-1] == pytest.approx(0.5, abs=0.03)
    assert calibrated(1, by_patient=False) > 0.45  # one patient's slices, counted one by one


def test_platt_never_reverses_the_ranking():
    z = np.linspace(-3, 3, 200)
    y = (z < 0).astype(float)  # a val split whose labels run against the outputs
    a, b = fit_platt(z, y, ridge=0.1)
    assert a == pytest.approx(0.05) and np.isfinite(b)
