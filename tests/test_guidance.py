"""Class conditioning, classifier-free guidance and classifier guidance, against exact answers.

The oracle is a labelled Gaussian mixture (``GaussianMixture(labels=...)``): its class-conditional
score and its classifier ``p_t(y | x)`` are exact at every ``t``, so

- sampling with the exact conditional score must reproduce the class's sub-mixture (energy
  distance to exact draws within a few two-sample floors), for an SDE and an ODE sampler;
- classifier guidance with the exact classifier at scale 1 *is* the conditional score (Bayes), so
  the ODE endpoints from one ``x_T`` agree to solver tolerance;
- classifier-free guidance of an exact conditional "network" at weight ``w`` is the score of
  ``p_t(x) p_t(y | x)^(1 + w)``, i.e. classifier guidance at scale ``1 + w``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, two_sample_floor
from sdediff.nets import MLP, UNet

SDE = sd.VPSDE()


def labelled_mixture() -> sd.GaussianMixture:
    """3-D, six components in three classes of unequal weight (a low-weight component in each)."""
    g = torch.Generator().manual_seed(7)
    means = 2.0 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    stds = torch.tensor([0.3, 0.5, 0.25, 0.4, 0.6, 0.35], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.05, 0.2, 0.1, 0.25, 0.1], dtype=torch.float64)
    return sd.GaussianMixture(means, stds, weights, labels=[0, 0, 1, 1, 2, 2])


class ExactConditionalNet(torch.nn.Module):
    """A conditional 'network' ``(x, t, y) -> eps`` from a labelled mixture: class ``y``'s exact
    eps, and the unconditional one for the null class ``num_classes`` (or ``y=None``)."""

    def __init__(self, gmm: sd.GaussianMixture):
        super().__init__()
        self.gmm = gmm
        self.num_classes = gmm.num_classes

    def forward(self, x, t, y=None):
        sigma = SDE.alpha_sigma(t)[1].to(x)[:, None]
        score = self.gmm.score(x, t, SDE)
        if y is not None:
            conditional = y < self.num_classes
            if bool(conditional.any()):
                labels = torch.where(conditional, y, 0)
                score = torch.where(conditional[:, None], self.gmm.class_score(labels, x, t, SDE), score)
        return -sigma * score


@pytest.mark.parametrize("sampler, options", [("euler_maruyama", {"steps": 500}),
                                              ("ode", {"rtol": 1e-6, "atol": 1e-6})])
def test_exact_conditional_score_samples_the_class(sampler, options, one_thread):
    gmm = labelled_mixture()
    y, n = 1, 1000
    target = gmm.class_mixture(y)
    g = torch.Generator().manual_seed(3)
    x = sd.sample(gmm.class_score_model(y, SDE), shape=(n, 3), sampler=sampler, generator=g,
                  dtype=torch.float64, **options)
    floor = two_sample_floor(target.sample, n)
    distance = energy_distance(x, target.sample(n, torch.Generator().manual_seed(11)))
    assert distance <= 3 * floor, (distance, floor)
    # ... and the test can fail: the unconditional mixture is far from class 1
    other = gmm.sample(n, torch.Generator().manual_seed(12))
    assert energy_distance(other, target.sample(n, torch.Generator().manual_seed(11))) > 10 * floor


def test_classifier_guidance_at_scale_one_is_the_conditional_score(one_thread):
    gmm = labelled_mixture()
    x_T = SDE.prior_sample((64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = {"sampler": "ode", "rtol": 1e-8, "atol": 1e-8, "denoise": False}
    exact = sd.sample(gmm.class_score_model(2, SDE), x_T=x_T, **options)
    guided_model = gmm.score_model(SDE).guide(gmm.classifier(SDE), 2, scale=1.0)
    guided = sd.sample(guided_model, x_T=x_T, **options)
    assert (guided - exact).abs().max() < 1e-5
    # scale 0 is the unguided model: far from class 2's endpoints
    unguided = sd.sample(gmm.score_model(SDE).guide(gmm.classifier(SDE), 2, scale=0.0), x_T=x_T,
                         **options)
    assert (unguided - exact).abs().max() > 0.1


def test_guided_score_is_bayes_rule_pointwise():
    gmm = labelled_mixture()
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(32, 3, generator=g, dtype=torch.float64)
    for t in (0.01, 0.3, 0.9):
        tt = torch.full((32,), t, dtype=torch.float64)
        guided = gmm.score_model(SDE).guide(gmm.classifier(SDE), 0).score(x, tt)
        torch.testing.assert_close(guided, gmm.class_score(0, x, tt, SDE), rtol=1e-9, atol=1e-9)


def test_classifier_free_guidance_is_classifier_guidance_at_one_plus_w():
    """With exact conditional and unconditional eps, (1 + w) eps_c - w eps_u is the score of
    p_t(x) p_t(y|x)^(1+w): classifier guidance with the exact classifier at scale 1 + w."""
    gmm = labelled_mixture()
    model = sd.ScoreModel(ExactConditionalNet(gmm), SDE)
    g = torch.Generator().manual_seed(2)
    x = 2 * torch.randn(16, 3, generator=g, dtype=torch.float64)
    for w in (0.0, 0.5, 3.0):
        for t in (0.05, 0.5):
            tt = torch.full((16,), t, dtype=torch.float64)
            cfg = model.condition(1, guidance=w).score(x, tt)
            cg = gmm.score_model(SDE).guide(gmm.classifier(SDE), 1, scale=1 + w).score(x, tt)
            torch.testing.assert_close(cfg, cg, rtol=1e-8, atol=1e-8)


def test_cfg_is_one_batched_pass_of_the_two_predictions(one_thread):
    torch.manual_seed(0)
    net = MLP(data_dim=2, hidden=32, depth=2, emb_dim=16, num_classes=4)
    with torch.no_grad():
        net.class_embed.table.weight.normal_()           # classes that differ
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x, t = torch.randn(5, 2), torch.rand(5)
    y = torch.tensor([0, 1, 2, 3, 1])
    w = 2.5
    guided = sd.ScoreModel(net, SDE).condition(y, guidance=w)
    with torch.no_grad():
        out = guided.eps(x, t)
        cond = net(x, t, y)
        uncond = net(x, t, torch.full((5,), 4))
    assert calls[0] == 10 and guided.nfe == 1 and guided.evaluations_per_call == 2
    torch.testing.assert_close(out, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-6)
    # w = 0: the conditional prediction alone, one pass of B
    plain = sd.ScoreModel(net, SDE).condition(y)
    with torch.no_grad():
        torch.testing.assert_close(plain.eps(x, t), cond)
    assert calls[-1] == 5 and plain.evaluations_per_call == 1
    # the result reports network evaluations per sample
    r = sd.sample(guided, shape=(5, 2), sampler="ddim", steps=4, generator=torch.Generator().manual_seed(0),
                  return_info=True)
    assert r.nfe == 5 and r.evaluations == 10


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_cfg_in_any_prediction_gives_the_same_eps(prediction, one_thread):
    """The CFG combination is affine with weights summing to 1: taken in x0, v or score space it
    gives the eps-space combination."""
    torch.manual_seed(1)
    net = MLP(data_dim=2, hidden=32, depth=2, emb_dim=16, num_classes=3).double()
    with torch.no_grad():
        net.class_embed.table.weight.normal_()
        net.out.weight.normal_(std=0.3)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.full((6,), 0.4, dtype=torch.float64)
    model = sd.ScoreModel(net, SDE, prediction=prediction)
    with torch.no_grad():
        cfg = model.condition(2, guidance=1.5).eps(x, t)
        eps_c = model.condition(2).eps(x, t)
        eps_u = model.eps(x, t)                        # y=None: the null class
    torch.testing.assert_close(cfg, 2.5 * eps_c - 1.5 * eps_u, rtol=1e-10, atol=1e-10)


def test_guided_models_encode_and_decode_unchanged(one_thread):
    gmm = labelled_mixture()
    model = sd.ScoreModel(ExactConditionalNet(gmm), SDE).condition(0, guidance=1.0)
    x0 = gmm.class_mixture(0).sample(8, torch.Generator().manual_seed(4))
    z = sd.encode(model, x0, sampler="ode", rtol=1e-7, atol=1e-7)
    back = sd.decode(model, z, sampler="ode", rtol=1e-7, atol=1e-7)
    assert (back - x0).abs().max() < 1e-3


def test_label_dropout_replaces_labels_by_the_null_class():
    seen = []

    class Recorder(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x)

    model = sd.ScoreModel(Recorder(), SDE)
    labels = torch.randint(3, (4000,), generator=torch.Generator().manual_seed(0))
    x0 = torch.zeros(4000, 2)
    for p in (0.0, 0.1, 1.0):
        sd.dsm_loss(model, x0, labels=labels, label_dropout=p, generator=torch.Generator().manual_seed(1))
        dropped = seen[-1] == 3
        assert abs(float(dropped.float().mean()) - p) < 0.02
        assert torch.equal(seen[-1][~dropped], labels[~dropped])


def test_conditional_nets_round_trip_and_the_null_class():
    from sdediff.nets import build_net

    for net in (MLP(num_classes=5), UNet(base_channels=16, num_classes=10)):
        assert build_net(net.config).num_classes == net.num_classes
    unet = UNet(base_channels=16, num_classes=10)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        unet.class_embed.table.weight.normal_()
        # y=None is the null class, row num_classes of the table
        torch.testing.assert_close(unet(x, t), unet(x, t, torch.tensor([10, 10])))
    assert "num_classes" not in MLP().config                  # unconditional configs unchanged


def test_trainer_labels_match_the_network(tmp_path):
    data = torch.randn(64, 2)
    with pytest.raises(ValueError, match="conditional .num_classes=3. but no labels"):
        sd.Trainer(MLP(num_classes=3), SDE, data, tmp_path, progress=False)
    with pytest.raises(ValueError, match="model is unconditional"):
        sd.Trainer(MLP(), SDE, data, tmp_path, progress=False, labels=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class labels=4 is out of range; allowed: 0..2 \(num_classes=3\)"):
        sd.Trainer(MLP(num_classes=3), SDE, data, tmp_path, progress=False,
                   labels=torch.full((64,), 4))


@pytest.mark.parametrize("call, message", [
    (lambda m: m.condition(10), r"class y=10 is out of range; allowed: 0..9"),
    (lambda m: m.condition(-1), r"class y=-1 is out of range; allowed: 0..9"),
    (lambda m: m.condition(1.5), r"y must be an int or a tensor of integer class labels, got 1.5"),
    (lambda m: m.condition(torch.tensor([1.0])), r"y must be an int or a tensor of integer class labels"),
    (lambda m: m.condition(3, guidance=-0.5), r"guidance must be in \[0.0, inf\), got -0.5"),
    (lambda m: m.condition(3, guidance=math.nan), r"guidance must be in \[0.0, inf\), got nan"),
    (lambda m: m.condition(3, guidance=math.inf), r"guidance must be in \[0.0, inf\), got inf"),
    (lambda m: m.guide(lambda x, t: x, 3, scale=-1), r"scale must be in \[0.0, inf\), got -1"),
    (lambda m: m.guide(None, 3), r"classifier must be callable"),
])
def test_bad_guidance_inputs(call, message):
    model = sd.ScoreModel(UNet(base_channels=16, num_classes=10), SDE)
    with pytest.raises((ValueError, TypeError), match=message):
        call(model)


def test_labels_on_an_unconditional_model_are_refused():
    model = sd.ScoreModel(MLP(), SDE)
    with pytest.raises(ValueError, match="y=2 given, but the model is unconditional"):
        model.condition(2)


def test_per_sample_labels_must_match_the_batch():
    model = sd.ScoreModel(MLP(num_classes=3), SDE).condition(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="conditioned on 3 labels .one per sample. but is called on a "
                                         "batch of 4"):
        model.eps(torch.randn(4, 2), torch.rand(4))


# --- the command line ---------------------------------------------------------------------------

def cli_error(capsys, argv) -> str:
    """Run ``sdediff argv``; assert the one-line error and exit status 2, return the line."""
    from sdediff import cli

    try:
        status = cli.main(argv)
    except SystemExit as exit:         # argparse's usage errors
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--class", "10"], r"class y=10 is out of range; allowed: 0..9"),
    (["--class", "-1"], r"class y=-1 is out of range; allowed: 0..9"),
    (["--class", "3", "--guidance", "-1"], r"guidance must be in \[0.0, inf\), got -1.0"),
    (["--class", "3", "--guidance", "nan"], r"guidance must be in \[0.0, inf\), got nan"),
    (["--guidance", "2"], r"--guidance 2 needs --class"),
])
def test_cli_bad_class_and_guidance_are_one_line(capsys, tmp_path, flags, message):
    err = cli_error(capsys, ["sample", "--steps", "2", "--num", "2", "--out", str(tmp_path / "s.npy"),
                             *flags])
    assert re.search(message, err), err


def test_cli_class_on_an_unconditional_checkpoint_is_one_line(capsys, tmp_path):
    torch.manual_seed(0)
    sd.Trainer(MLP(hidden=8, depth=1, emb_dim=8), SDE, torch.randn(20, 2), tmp_path / "run",
               config=sd.TrainConfig(steps=1, batch_size=4), progress=False).fit()
    err = cli_error(capsys, ["sample", "--checkpoint", str(tmp_path / "run"), "--class", "1",
                             "--out", str(tmp_path / "s.npy")])
    assert "--class 1 given, but the checkpoint's model is unconditional" in err
