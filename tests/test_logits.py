"""ichtrain/logits.py against the plain formulas and hand values."""

import numpy as np

from ichtrain.logits import EPS, logit, mean_in_logits, sigmoid


def test_logit_and_sigmoid_match_the_plain_formulas_and_invert_each_other():
    p = np.array([1e-6, 0.01, 0.25, 0.5, 0.75, 0.99, 1 - 1e-6])
    np.testing.assert_allclose(logit(p), np.log(p / (1 - p)), rtol=1e-12)
    z = np.array([-700.0, -30.0, -1.0, 0.0, 2.0, 30.0, 700.0])
    with np.errstate(over="ignore"):
        plain = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(sigmoid(z), plain, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigmoid(logit(p)), p, rtol=1e-9)
    assert logit(0.0) == np.log(EPS / (1 - EPS)) and np.isfinite(logit(1.0))  # clipped, never infinite


def test_mean_in_logits_by_hand():
    # logit(0.2) = -log 4, logit(0.8) = log 4: their mean is 0, so 0.5; logit(0.5) = 0 and logit(0.9) = log 9:
    # the mean is log 3, so 3 / 4
    np.testing.assert_allclose(mean_in_logits(np.array([0.2, 0.5]), np.array([0.8, 0.9])), [0.5, 0.75], rtol=1e-6)
    assert mean_in_logits(np.array([0.3]), np.array([0.3])).dtype == np.float32
