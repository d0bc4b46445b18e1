"""The multilevel DCDM network (not in the paper): depth grows with the grid, one set of weights
serves every resolution, a grid it cannot pool is refused naming the nearest valid sides."""

import re

import pytest
import torch

from data.errors import InputError
from operators.dcdm import DCDMNet, DCDMTrainConfig, MultilevelDCDMNet, train
from operators.dcdm.net import multilevel_depth, nearest_multilevel_sides


def test_depth_grows_with_the_grid_and_weights_are_shared():
    torch.manual_seed(0)
    net = MultilevelDCDMNet()
    assert [net.depth((n, n)) for n in (8, 16, 64, 256)] == [1, 2, 4, 6]
    # the parameter count does not depend on the grid: the blocks are shared across levels
    params = sum(p.numel() for p in net.parameters())
    assert params == 16 * 9 + (2 + 4 + 2) * 16 * 16 * 9 + 16 * 9  # bias-free
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():  # positively homogeneous: f(c r) = c f(r)
        assert torch.allclose(net(3.0 * x), 3.0 * net(x), rtol=1e-4, atol=1e-5)
    for n in (16, 64, 256):
        assert net(torch.randn(2, 1, n, n)).shape == (2, 1, n, n)
    # a point source's influence reaches the far corner at 64^2 (the paper's network: not)
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 2, 2] = 1.0
    base = torch.zeros_like(x)
    with torch.no_grad():
        far = (net(x) - net(base))[0, 0, -3:, -3:].abs().max().item()
        torch.manual_seed(0)
        paper = DCDMNet()
        far_paper = (paper(x) - paper(base))[0, 0, -3:, -3:].abs().max().item()
    assert far > 0 and far_paper == 0


def test_3d_and_depth_formula():
    net = MultilevelDCDMNet(dim=3, filters=4)
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    assert multilevel_depth(48) == 3 and multilevel_depth(7) == 0


@pytest.mark.parametrize("side,nearest", [(50, [48, 56]), (66, [64, 80]), (3, [4])])
def test_a_grid_that_does_not_pool_evenly_is_refused_naming_the_nearest(side, nearest):
    assert nearest_multilevel_sides(side) == nearest
    with pytest.raises(InputError, match=rf"grid side {side} .*nearest valid sides: {re.escape(str(nearest))}"):
        MultilevelDCDMNet()(torch.randn(1, 1, side, side))


def test_the_config_builds_and_trains_either_network():
    cfg = DCDMTrainConfig(n=16, ritz_m=30, n_samples=16, epochs=1, batch_size=8, net="multilevel")
    assert isinstance(cfg.network(), MultilevelDCDMNet) and isinstance(
        cfg.model_copy(update={"net": "paper"}).network(), DCDMNet
    )
    model, history = train(cfg)
    assert isinstance(model, MultilevelDCDMNet) and len(history) == 1
    with pytest.raises(InputError, match="grid side 18 does not pool"):
        DCDMTrainConfig(n=18, net="multilevel").network()
