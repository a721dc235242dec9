"""The noise-conditional classifier p_t(y | x_t) and `sdediff train-classifier`.

The oracle is the labelled ``gmm`` toy set, whose exact classifier is known at every ``t``
(``gmm_distribution().classifier(sde)``): a briefly trained :class:`NoisyClassifier` must come
close to it (KL and Bayes accuracy), and guide sampling of the exact mixture score into the
requested component about as well as the exact classifier does. Then: exact resume, the
checkpoint round trip through ``load_classifier``, and every refusal as one line.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdediff as sd
import sdediff.pretrained
from sdediff.checkpoint import resolve_checkpoint
from sdediff.cli.classifier import EVAL_TIMES, held_out_accuracy
from sdediff.data import gmm_distribution, load_dataset
from sdediff.nets import MLP, NoisyClassifier, build_net

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

SDE = sd.VPSDE()
#: The noise levels the trained classifier is compared with the exact one at.
TIMES = (0.05, 0.3, 0.6)


@pytest.fixture(scope="module")
def gmm_set():
    return load_dataset("gmm", n=20_000)


@pytest.fixture(scope="module")
def trained(gmm_set, tmp_path_factory):
    """A small classifier trained briefly on the gmm set; its EMA weights reloaded."""
    out = tmp_path_factory.mktemp("gmm_clf")
    torch.manual_seed(0)
    net = NoisyClassifier((2,), 8, width=64, depth=2, emb_dim=32)
    config = sd.TrainConfig(steps=300, batch_size=512, lr=3e-3, warmup=20, ema_decay=0.95,
                            checkpoint_every=300)
    sd.Trainer(net, SDE, gmm_set.train, out, config=config, labels=gmm_set.train_labels,
               progress=False).fit()
    classifier, config = sd.load_classifier(out)
    return classifier, out


def log_probs_at(classifier, x0, t, seed):
    xt, _ = SDE.perturb(x0, torch.full((len(x0),), t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return xt, torch.log_softmax(classifier(xt, torch.full((len(x0),), t)).double(), dim=1)


class KL:
    """``KL(p || q)`` per sample, averaged, for log-probabilities ``(B, C)`` (``0 log 0 = 0``)."""

    def __init__(self, log_p):
        self.log_p = log_p

    def __call__(self, log_q) -> float:
        p = self.log_p.exp()
        return float(torch.where(p > 0, p * (self.log_p - log_q), 0.0).sum(1).mean())


def test_trained_classifier_is_close_to_the_exact_one(gmm_set, trained):
    classifier, _ = trained
    exact = gmm_distribution().classifier(SDE)
    untrained = NoisyClassifier((2,), 8, width=64, depth=2, emb_dim=32)  # zero head: uniform
    x0, labels = gmm_set.test, gmm_set.test_labels       # 2000 points
    for i, t in enumerate(TIMES):
        xt, learned = log_probs_at(classifier, x0, t, seed=i)
        _, uniform = log_probs_at(untrained, x0, t, seed=i)
        tt = torch.full((len(x0),), t, dtype=torch.float64)
        target = exact(xt.double(), tt)
        kl = KL(target)
        bayes = float((target.argmax(1) == labels).double().mean())
        accuracy = float((learned.argmax(1) == labels).double().mean())
        print(f"t={t}: KL(exact || trained) {kl(learned):.4f} (untrained {kl(uniform):.3f}), "
              f"accuracy {accuracy:.3f} vs Bayes {bayes:.3f}")
        assert kl(learned) < 0.1 and kl(learned) < 0.1 * kl(uniform)
        assert accuracy > bayes - 0.02


def test_guidance_with_the_trained_classifier_selects_the_class(trained):
    classifier, _ = trained
    gmm = gmm_distribution(torch.float32)
    y, n = 1, 400                     # a diagonal component: prior weight 1/16
    x_T = SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(5))

    def share_in_class(model):
        x = sd.sample(model, x_T=x_T, sampler="ddim", steps=20)
        return float((gmm.class_log_probs(x).argmax(1) == y).double().mean())

    unguided = share_in_class(gmm.score_model(SDE))
    learned = share_in_class(gmm.score_model(SDE).guide(classifier, y, 1.0))
    exact = share_in_class(gmm.score_model(SDE).guide(gmm.classifier(SDE), y, 1.0))
    print(f"share of samples in class {y}: unguided {unguided:.3f}, trained classifier "
          f"{learned:.3f}, exact classifier {exact:.3f}")
    assert unguided < 0.15
    assert learned > 0.85 and learned > exact - 0.1


def test_guide_with_the_exact_classifier_is_the_class_score_pointwise():
    """grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y) on an (x, t) grid."""
    gmm = gmm_distribution()
    axis = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)                                  # (81, 2)
    per_sample = torch.arange(len(x)) % 8
    for t in (0.01, 0.1, 0.5, 0.9, 1.0):
        tt = torch.full((len(x),), t, dtype=torch.float64)
        for y in (0, 3, per_sample):
            guided = gmm.score_model(SDE).guide(gmm.classifier(SDE), y, 1.0).score(x, tt)
            torch.testing.assert_close(guided, gmm.class_score(y, x, tt, SDE), rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ training, checkpoints, resume

def tiny_trainer(out, kind, steps_total=12):
    torch.manual_seed(0)      # the same initial weights (and data) for every trainer built here
    if kind == "points":
        data, net = torch.randn(200, 2), NoisyClassifier((2,), 3, width=16, depth=1, emb_dim=8)
    else:
        data = torch.randn(64, 1, 8, 8)
        net = NoisyClassifier((1, 8, 8), 3, width=8, depth=1, num_groups=4, dropout=0.1)
    labels = torch.randint(3, (len(data),))
    config = sd.TrainConfig(steps=steps_total, batch_size=16, lr=1e-3, warmup=3,
                            checkpoint_every=6, seed=3)
    return sd.Trainer(net, SDE, data, out, config=config, labels=labels, progress=False)


def weights(trainer):
    opt = trainer.optimizer.state_dict()["state"]
    return ([p.detach().clone() for p in trainer.net.parameters()],
            [p.detach().clone() for p in trainer.ema_net.parameters()],
            [v.clone() for s in opt.values() for v in s.values() if torch.is_tensor(v)])


@pytest.mark.parametrize("kind", ["points", "images"])
def test_resume_is_exact(tmp_path, kind):
    straight = tiny_trainer(tmp_path / "a", kind)
    straight.fit(12)
    first = tiny_trainer(tmp_path / "b", kind)
    first.fit(6)
    second = tiny_trainer(tmp_path / "b", kind)
    assert second.resume() == 6
    second.fit(12)
    for xs, ys in zip(weights(straight), weights(second), strict=True):
        assert len(xs) == len(ys) > 0
        assert all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def test_checkpoint_round_trip(tmp_path):
    trainer = tiny_trainer(tmp_path, "points", steps_total=8)
    trainer.fit()
    classifier, config = sd.load_classifier(tmp_path)
    assert config["prediction"] == "logits" and config["net"]["name"] == "noisy_classifier"
    assert config["step"] == 8 and config["sde"]["name"] == "vp"
    assert isinstance(classifier, NoisyClassifier) and classifier.num_classes == 3
    assert not classifier.training
    x, t = torch.randn(5, 2), torch.rand(5)
    with torch.no_grad():
        assert torch.equal(classifier(x, t), trainer.ema_net(x, t))
        raw, _ = sd.load_classifier(resolve_checkpoint(tmp_path), ema=False)
        assert torch.equal(raw(x, t), trainer.net.eval()(x, t))
    assert build_net(config["net"]).config == classifier.config


def test_classifier_loss_is_seeded_and_starts_at_log_classes():
    net = NoisyClassifier((2,), 4, width=16, depth=1, emb_dim=8)
    x0, labels = torch.randn(32, 2), torch.randint(4, (32,))
    with torch.no_grad():
        losses = [sd.losses.classifier_loss(net, SDE, x0, labels, torch.Generator().manual_seed(1))
                  for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    assert float(losses[0]) == pytest.approx(math.log(4))     # the zero head: uniform logits


# ------------------------------------------------------------------------------- refusals

def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_load_model_and_load_classifier_refuse_each_other(tmp_path):
    tiny_trainer(tmp_path, "points", steps_total=2).fit()
    with pytest.raises(ValueError, match=r"is a noise-conditional classifier.*load_classifier") as err:
        sd.load_model(tmp_path)
    one_line(err)
    with pytest.raises(ValueError, match=r"is a score model \(prediction 'eps'\).*sdediff.load_model") as err:
        sd.load_classifier(sdediff.pretrained.DIGITS)
    one_line(err)


def test_trainer_refusals(tmp_path):
    data, labels = torch.randn(10, 2), torch.zeros(10, dtype=torch.long)
    net = NoisyClassifier((2,), 3, width=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match=r"is a classifier \(num_classes=3\) and needs labels"):
        sd.Trainer(net, SDE, data, tmp_path)
    with pytest.raises(ValueError, match=r"prediction 'eps' given for a NoisyClassifier.*allowed: 'logits'"):
        sd.Trainer(net, SDE, data, tmp_path, prediction="eps", labels=labels)
    with pytest.raises(ValueError, match=r"prediction 'logits' is for a NoisyClassifier.*MLP"):
        sd.Trainer(MLP(hidden=8, depth=1, emb_dim=8), SDE, data, tmp_path, prediction="logits")
    with pytest.raises(ValueError, match=r"class labels=3 is out of range; allowed: 0..2"):
        sd.Trainer(net, SDE, data, tmp_path, labels=torch.full((10,), 3))
    with pytest.raises(ValueError, match=r"option dropout is for image classifiers"):
        NoisyClassifier((2,), 3, dropout=0.1)


# ----------------------------------------------------------------------------------- the CLI

def main(argv):
    """``sdediff.cli.main``, with argparse's usage errors as their exit status."""
    from sdediff import cli

    try:
        return cli.main(argv)
    except SystemExit as exit:
        return exit.code


def fails_with(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    assert pytest.importorskip("re").search(pattern, err), err


def test_cli_trains_and_reports_accuracy_by_noise_level(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train-classifier", "--data", "moons", "--out", str(out), "--steps", "30",
            "--batch-size", "64", "--checkpoint-every", "20", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "final loss" in text and "held-out accuracy" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in
            [[f"{t:g}"] for t in EVAL_TIMES]]
    assert [r[0] for r in rows] == [f"{t:g}" for t in EVAL_TIMES]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows)
    classifier, config = sd.load_classifier(out)
    assert config["step"] == 30 and config["sde"]["name"] == "vp" and classifier.num_classes == 2
    fails_with(capsys, argv, r"already holds a training run; pass --resume")
    assert main([*argv[:5], "--steps", "40", "--resume", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert sd.load_classifier(out)[1]["step"] == 40
    fails_with(capsys, ["train", "--data", "moons", "--out", str(out), "--steps", "50", "--resume"],
               r"holds a classifier, not a score-model run; resume it with sdediff train-classifier")


def test_cli_errors_are_one_line(capsys, tmp_path):
    fails_with(capsys, ["train-classifier", "--data", "swissroll", "--out", str(tmp_path / "r")],
               r"train-classifier needs labelled data, and 'swissroll' has no labels; labelled sets: "
               r"moons, .*digits")
    score_run = tmp_path / "score"
    torch.manual_seed(0)
    sd.Trainer(MLP(hidden=8, depth=1, emb_dim=8), SDE, torch.randn(20, 2), score_run,
               config=sd.TrainConfig(steps=1, batch_size=4), progress=False).fit()
    fails_with(capsys, ["train-classifier", "--data", "moons", "--out", str(score_run),
                                     "--resume"],
               r"holds a score-model run, not a classifier run; resume it with sdediff train --resume")
    fails_with(capsys, ["train-classifier", "--data", "moons", "--out", str(tmp_path / "r"),
                                     "--sde", "nope"], r"invalid choice: 'nope'")


def test_held_out_accuracy_of_the_exact_classifier_is_bayes(gmm_set):
    exact = gmm_distribution(torch.float32).classifier(SDE)
    accuracy = held_out_accuracy(exact, SDE, gmm_set.test[:2000], gmm_set.test_labels[:2000], 0.01,
                                 generator=torch.Generator().manual_seed(0))
    assert 0.9 < accuracy <= 1.0       # the components barely overlap at t = 0.01
