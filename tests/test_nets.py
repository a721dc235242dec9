"""Score networks: shapes, the time embedding, config round trips, gradients, attention, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sdediff.nets import (
    MLP,
    NETS,
    TIME_SCALE,
    TimeEmbedding,
    UNet,
    build_net,
    sinusoidal_embedding,
)
from sdediff.nets.unet import AttentionBlock

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def small_unet(**kwargs) -> UNet:
    options = dict(base_channels=8, num_groups=4, num_res_blocks=1, dropout=0.0)
    options.update(kwargs)
    return UNet(**options)


def perturb(net: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Move every weight off its initial value (the zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


# --- time embedding ---------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [16, 7])
def test_sinusoid_matches_numpy(dim):
    t = torch.tensor([0.0, 1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    half = dim // 2
    s = TIME_SCALE * t.numpy()[:, None]
    w = np.array([10000.0 ** (-k / half) for k in range(half)])[None, :]
    expected = np.concatenate([np.cos(s * w), np.sin(s * w)], axis=1)
    if dim % 2:
        expected = np.concatenate([expected, np.zeros((len(t), 1))], axis=1)
    got = sinusoidal_embedding(t, dim)
    assert got.shape == (5, dim) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_sinusoid_separates_times():
    t = torch.linspace(0, 1, 1001)  # the DDPM step spacing 1/1000
    emb = sinusoidal_embedding(t, 128)
    distances = torch.cdist(emb, emb) + torch.eye(len(t)) * 1e3
    assert distances.min() > 0.1
    assert sinusoidal_embedding(t.to(torch.bfloat16), 8).dtype == torch.float32


def test_sinusoid_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        sinusoidal_embedding(torch.zeros(2, 3), 8)
    with pytest.raises(ValueError, match="dim must be >= 2, got 1"):
        sinusoidal_embedding(torch.zeros(2), 1)


def test_time_embedding_shape():
    emb = TimeEmbedding(16, 40)(torch.rand(3))
    assert emb.shape == (3, 40)


# --- MLP ----------------------------------------------------------------------------------------

def test_mlp_shapes_and_zero_start():
    torch.manual_seed(0)
    net = MLP(data_dim=3, hidden=32, depth=2, emb_dim=16)
    x = torch.randn(5, 3)
    out = net(x, torch.rand(5))
    assert out.shape == (5, 3)
    assert torch.equal(out, torch.zeros_like(out))
    assert net(x, torch.tensor(0.5)).shape == (5, 3)  # a scalar t is repeated
    out64 = perturb(net.double())(x.double(), torch.rand(5, dtype=torch.float64))
    assert out64.dtype == torch.float64


def test_mlp_depends_on_x_and_t():
    torch.manual_seed(0)
    net = perturb(MLP(hidden=32, depth=2, emb_dim=16))
    x = torch.randn(4, 2)
    t = torch.full((4,), 0.3)
    assert not torch.allclose(net(x, t), net(x, t + 0.1))
    assert not torch.allclose(net(x, t), net(x + 0.1, t))


def test_mlp_rejects_wrong_shapes():
    net = MLP(hidden=16, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        net(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        net(torch.zeros(4, 2), torch.zeros(3))


# --- UNet ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_unet_shapes(size, channels):
    torch.manual_seed(0)
    mult = (1, 2) if size == 8 else (1, 2, 2, 2)[: int(math.log2(size)) - 2]
    lowest = size // 2 ** (len(mult) - 1)
    net = small_unet(in_channels=channels, image_size=size, channel_mult=mult,
                     attention_resolutions=(lowest,))
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.rand(2))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv


def attention_sizes(net: UNet, x: torch.Tensor) -> list[int]:
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
             for m in net.modules() if isinstance(m, AttentionBlock)]
    net(x, torch.rand(x.shape[0]))
    for h in hooks:
        h.remove()
    return sorted(sizes)


@pytest.mark.parametrize(("resolutions", "expected"), [
    ((4,), [4] * 6),          # 2 down + 1 middle + 3 up blocks, all on the 4x4 maps
    ((8,), [4] + [8] * 5),    # only the middle block runs at 4x4
    ((), [4]),                # the middle block always attends
])
def test_unet_attention_at_requested_resolution(resolutions, expected):
    net = small_unet(image_size=8, num_res_blocks=2, attention_resolutions=resolutions)
    assert attention_sizes(net, torch.randn(1, 1, 8, 8)) == expected


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = perturb(small_unet(num_heads=2))
    x = torch.randn(3, 1, 8, 8)
    net(x, torch.rand(3)).square().mean().backward()
    missing = [n for n, p in net.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


def test_unet_output_depends_on_t():
    torch.manual_seed(0)
    net = perturb(small_unet()).eval()
    x = torch.randn(2, 1, 8, 8)
    out_a = net(x, torch.tensor([0.1, 0.1]))
    out_b = net(x, torch.tensor([0.9, 0.9]))
    assert (out_a - out_b).abs().mean() > 1e-3 * out_a.abs().mean()
    assert torch.equal(net(x, torch.tensor([0.1, 0.9]))[0], out_a[0])  # samples independent


def test_unet_rejects_wrong_input_shape():
    net = small_unet(in_channels=3, image_size=16, attention_resolutions=(8,))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*\(2, 3, 16, 16\)"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\).*\(2, 3, 16, 16\)"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"image_size": 12, "channel_mult": (1, 2, 2, 2)}, r"image_size=12 .* multiple of 8"),
    ({"base_channels": 12, "num_groups": 8}, r"base_channels=12 .* num_groups=8"),
    ({"attention_resolutions": (3,)}, r"\[3\].*allowed: 8, 4"),
    ({"num_heads": 3}, r"num_heads=3 .* divisor of 16"),
    ({"channel_mult": ()}, r"channel_mult must have at least one entry"),
    ({"dropout": 1.0}, r"dropout must be in \[0.0, 1.0\), got 1.0"),
])
def test_unet_bad_config(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        small_unet(**{"image_size": 8, **kwargs})


# --- configs and rebuild ------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: MLP(data_dim=3, hidden=32, depth=2, emb_dim=16),
    lambda: UNet(in_channels=3, image_size=16, base_channels=8, channel_mult=(1, 2, 2),
                 attention_resolutions=(8, 4), num_groups=4, num_heads=2, dropout=0.1),
])
def test_build_net_round_trip(make):
    torch.manual_seed(0)
    net = perturb(make()).eval()
    config = json.loads(json.dumps(net.config))  # what a checkpoint stores
    assert config == net.config and config["name"] in NETS
    rebuilt = build_net(config).eval()
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    shape = (2, 3) if isinstance(net, MLP) else (2, 3, 16, 16)
    x, t = torch.randn(shape), torch.rand(2)
    assert torch.equal(rebuilt(x, t), net(x, t))


def test_unet_default_emb_dim_recorded():
    config = small_unet().config
    assert config["emb_dim"] == 4 * config["base_channels"]


def test_build_net_errors():
    with pytest.raises(ValueError, match=r"unknown network 'resnet'; allowed: mlp, unet"):
        build_net({"name": "resnet"})
    with pytest.raises(ValueError, match=r"'width'.*allowed: .*hidden"):
        build_net({"name": "mlp", "width": 64})
