"""ichtrain.sampling: per-type weights against their formula, and drawn epochs against the weights."""

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.sampling import sample_epoch, type_weights


def test_type_weights_formula():
    types = np.array([32] * 90 + [1] * 10)
    w = type_weights(types, 1.0)  # balanced: each type half the mass
    assert w[32] * 90 == pytest.approx(0.5) and w[1] * 10 == pytest.approx(0.5)
    w0 = type_weights(types, 0.0)  # natural frequencies
    assert w0[32] == pytest.approx(w0[1]) == pytest.approx(0.01)
    wh = type_weights(types, 0.5)  # count ** -0.5, normalised
    assert wh[1] / wh[32] == pytest.approx((10 / 90) ** -0.5)
    with pytest.raises(UsageError, match="alpha"):
        type_weights(types, 1.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sampled_epoch_type_frequencies_match_weights(alpha):
    """Observed type shares of 200,000 draws are within 5 binomial standard deviations of
    P(type) = count_t ** (1 - alpha) / sum_u count_u ** (1 - alpha)."""
    rng = np.random.default_rng(0)
    counts = {32: 6000, 31: 300, 20: 80, 1: 5}
    types = np.concatenate([np.full(c, t) for t, c in counts.items()])
    rows = np.arange(types.size)
    n = 200_000
    drawn = sample_epoch(rows, types, alpha, n, rng)
    expected = {t: c ** (1 - alpha) for t, c in counts.items()}
    z = sum(expected.values())
    for t in counts:
        p = expected[t] / z
        observed = np.mean(types[drawn] == t)
        assert abs(observed - p) <= 5 * np.sqrt(p * (1 - p) / n), (t, observed, p)
