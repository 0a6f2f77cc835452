"""ichtrain.schedule: the learning rate of each epoch against hand-computed values."""

import pytest

from ichprep.errors import UsageError


def test_cosine_learning_rate_hand_values():
    from ichtrain.fit import FitConfig
    from ichtrain.schedule import learning_rate_at

    cfg = FitConfig(store="s", out="o", epochs=3, learning_rate=0.01)
    assert [learning_rate_at(cfg, e) for e in range(3)] == pytest.approx([0.01, 0.01 * (0.05 + 0.95 * 0.5), 0.0005])
    flat = FitConfig(store="s", out="o", epochs=3, learning_rate=0.01, lr_schedule="constant")
    assert [learning_rate_at(flat, e) for e in range(3)] == [0.01] * 3
    with pytest.raises(UsageError, match="lr-schedule"):
        FitConfig(store="s", out="o", lr_schedule="step")



