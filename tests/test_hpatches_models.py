from __future__ import annotations

import pytest
import torch

from tripletkit_hpatches.models import CourseworkDescriptor, DeepUNet, L2Net, ShallowUNet, build_denoiser


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_published_architectures():
    assert _params(L2Net()) == 1_334_560
    assert _params(ShallowUNet()) == 59_777
    assert _params(DeepUNet()) == 1_926_433


def test_l2net_loads_hardnet_state_dict_keys():
    kornia = pytest.importorskip("kornia")
    theirs = kornia.feature.HardNet(pretrained=False)
    ours = L2Net()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(4, 1, 32, 32) * 255
    ours.eval()
    theirs.eval()
    # kornia's input norm uses eps 1e-6 on std (ours: 1e-7, as HardNet's code): same output to ~1e-6
    torch.testing.assert_close(ours(x), theirs(x / 255.0), rtol=1e-4, atol=1e-4)


def test_shapes_normalisation_and_input_scale_invariance():
    m = L2Net().eval()
    x = torch.rand(8, 1, 32, 32) * 255
    y = m(x)
    assert y.shape == (8, 128)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(8), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x / 255.0), y, rtol=1e-4, atol=1e-4)  # per-patch normalisation inside forward
    for d in (ShallowUNet(), DeepUNet(), ShallowUNet(residual=True)):
        assert d(x).shape == x.shape
    assert build_denoiser("none") is None
    with pytest.raises(ValueError, match="unknown denoiser 'medium'; valid: none, shallow, deep"):
        build_denoiser("medium")


def test_coursework_descriptor_is_l2net_with_bias_affine_bn_and_no_normalisation():
    m = CourseworkDescriptor()
    # L2-Net's 1,334,560 weights + 7 conv biases (32+32+64+64+128+128+128) + affine BN γ, β (2 × the same channels)
    assert _params(m) == 1_334_560 + 576 + 2 * 576
    y = m.eval()(torch.rand(3, 1, 32, 32) * 255)
    assert y.shape == (3, 128) and not torch.allclose(y.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("p", [0.3, 0.5, 0.05])
def test_fast_dropout_rate_scaling_and_gradient(p):
    from tripletkit_hpatches.models import FastDropout

    torch.manual_seed(0)
    drop = FastDropout(p)
    x = torch.randn(64, 128, 8, 8, requires_grad=True)
    y = drop(x)
    kept = y != 0
    # 524,288 Bernoulli draws: the drop rate is p to within 5 standard errors
    rate = 1 - kept.float().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5 + 2**-16
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / (1 - p))
    # each 16-bit slice of a word decides one element: neighbours are not correlated
    k = kept.flatten().float()
    corr = torch.corrcoef(torch.stack([k[:-1], k[1:]]))[0, 1].item()
    assert abs(corr) < 0.02


def test_fast_dropout_eval_edge_rates_and_other_layouts():
    from tripletkit_hpatches.models import FastDropout

    x = torch.randn(4, 3, 5, 7)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    # an odd element count (not a multiple of the 4 slices per word) and bf16
    y = FastDropout(0.5)(torch.ones(3, 5, 7, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, 2.0}
    assert not any(isinstance(m, torch.nn.Dropout) and type(m) is torch.nn.Dropout for m in L2Net().modules())
