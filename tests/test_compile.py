"""``torch.compile`` of the network: the same predictions (to float rounding), the same weights."""

from __future__ import annotations

import pytest
import torch

import sdediff as sd
from sdediff.nets import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compiled_refuses_a_plain_function():
    model = sd.ScoreModel.from_fn(lambda x, t: -x, sd.VPSDE())
    with pytest.raises(TypeError, match="compiled\\(\\) needs a torch.nn.Module network, got function"):
        model.compiled()


@pytest.mark.slow
def test_compiled_model_predicts_what_the_model_predicts_and_shares_its_weights():
    torch.manual_seed(0)
    model = sd.ScoreModel(MLP(data_dim=2, hidden=32, depth=2, emb_dim=16).eval(), sd.VPSDE())
    fast = model.compiled()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast.predict(x, 0.3, "eps"), model.predict(x, 0.3, "eps"),
                                   rtol=1e-5, atol=1e-6)
        a = sd.sample(model, shape=(8, 2), sampler="ddim", steps=5, generator=sd.SampleSeeds(2))
        b = sd.sample(fast, shape=(8, 2), sampler="ddim", steps=5, generator=sd.SampleSeeds(2))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert next(fast.net.parameters()) is next(model.net.parameters())
