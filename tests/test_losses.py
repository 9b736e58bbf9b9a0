"""The training losses against independent numpy computations."""

import numpy as np
import torch

from m2s2l_deploy.jobs.train import gradient_loss


def test_gradient_loss_matches_numpy_and_ignores_a_brightness_offset():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 2, 1, 6, 7)).astype(np.float32)
    expected = sum(np.mean(np.abs(np.abs(np.diff(pred, axis=a)) - np.abs(np.diff(target, axis=a))))
                   for a in (-1, -2))
    got = gradient_loss(torch.from_numpy(pred), torch.from_numpy(target)).item()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert gradient_loss(torch.from_numpy(target + 0.3), torch.from_numpy(target)).item() < 1e-6

