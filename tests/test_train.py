"""Training: a trained MLP matches the exact mixture eps; resume is exact; checkpoints load."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import sdediff as sd
from sdediff.checkpoint import load_model, resolve_checkpoint
from sdediff.data import ring_means
from sdediff.nets import MLP


def ring_mixture():
    return sd.GaussianMixture(ring_means(4, 1.2, torch.float64), 0.3)


def eps_relative_error(model, exact, gmm, sde, times, n=4000):
    """mean ||eps_theta - eps*||^2 / mean ||eps*||^2 over x_t ~ p_t, averaged over ``times``."""
    g = torch.Generator().manual_seed(123)
    errors = []
    with torch.no_grad():
        for t in times:
            x0 = gmm.sample(n, generator=g).float()
            xt, _ = sde.perturb(x0, torch.full((n,), t), generator=g)
            ref = exact.eps(xt.double(), t).float()
            errors.append(float((model.eps(xt, t) - ref).pow(2).mean() / ref.pow(2).mean()))
    return sum(errors) / len(errors)


@pytest.mark.slow   # 45-90 s on 2 cores: `pytest -m slow`
def test_trained_mlp_matches_exact_eps(tmp_path):
    torch.manual_seed(0)
    sde, gmm = sd.VPSDE(), ring_mixture()
    data = gmm.sample(50_000, generator=torch.Generator().manual_seed(0)).float()
    config = sd.TrainConfig(steps=2000, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.995,
                            checkpoint_every=2000)
    trainer = sd.Trainer(MLP(data_dim=2), sde, data, tmp_path, config=config, progress=False)
    trainer.fit()
    model, _ = load_model(tmp_path)
    times = [0.05 + 0.95 * i / 19 for i in range(20)]
    error = eps_relative_error(model, gmm.score_model(sde), gmm, sde, times)
    print(f"trained-vs-exact eps relative MSE over t in [0.05, 1]: {error:.4f}")
    assert error < 0.1


def small_trainer(out, steps_total=40):
    torch.manual_seed(0)  # the same initial weights for every trainer built here
    data = ring_mixture().sample(1000, generator=torch.Generator().manual_seed(1)).float()
    config = sd.TrainConfig(steps=steps_total, batch_size=32, lr=1e-3, warmup=5,
                            checkpoint_every=7, seed=3)
    net = MLP(data_dim=2, hidden=32, depth=2, emb_dim=16)
    return sd.Trainer(net, sd.VPSDE(), data, out, config=config, progress=False)


def states(trainer):
    opt = trainer.optimizer.state_dict()["state"]
    return ([p.detach().clone() for p in trainer.net.parameters()],
            [p.detach().clone() for p in trainer.ema_net.parameters()],
            [v.clone() for s in opt.values() for v in s.values() if torch.is_tensor(v)])


def test_resume_is_bit_for_bit(tmp_path):
    straight = small_trainer(tmp_path / "a")
    straight.fit(40)
    first = small_trainer(tmp_path / "b")
    first.fit(20)
    second = small_trainer(tmp_path / "b")
    assert second.resume() == 20
    second.fit(40)
    for xs, ys in zip(states(straight), states(second), strict=True):
        assert len(xs) == len(ys) > 0
        assert all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))
    rows = {p: list(csv.reader(open(tmp_path / p / "loss.csv"))) for p in ("a", "b")}
    assert rows["a"][0] == rows["b"][0] == ["step", "loss", "lr", "seconds"]
    assert [r[:3] for r in rows["a"]] == [r[:3] for r in rows["b"]]
    assert len(rows["a"]) == 41


def test_resume_drops_log_rows_past_the_checkpoint(tmp_path):
    trainer = small_trainer(tmp_path)
    trainer.fit(10)  # checkpoints at 7 and 10
    with open(tmp_path / "loss.csv", "a") as fh:  # rows a crash left after the checkpoint
        fh.write("11,0.5,0.001,1.0\n12,0.5,0.001,1.0\n")
    resumed = small_trainer(tmp_path)
    assert resumed.resume() == 10
    steps = [int(r[0]) for r in list(csv.reader(open(tmp_path / "loss.csv")))[1:]]
    assert steps == list(range(1, 11))


def test_checkpoint_contents_and_loading(tmp_path):
    trainer = small_trainer(tmp_path)
    trainer.fit(14)
    folder = resolve_checkpoint(tmp_path)
    assert folder.name == "step-00000014"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000007", "step-00000014"]
    config = json.loads((folder / "config.json").read_text())
    assert config["step"] == 14 and config["format_version"] == 1
    assert config["sde"]["name"] == "vp" and config["prediction"] == "eps"
    assert config["net"]["name"] == "mlp" and config["train"]["batch_size"] == 32
    ema = load_file(str(folder / "ema.safetensors"))
    for name, value in trainer.ema_net.state_dict().items():
        assert torch.equal(ema[name], value)
    model, _ = load_model(tmp_path)
    x, t = torch.randn(5, 2), torch.full((5,), 0.4)
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t), trainer.ema_net(x, t))
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_lr_warmup_and_ema_schedule(tmp_path):
    trainer = small_trainer(tmp_path)
    assert trainer.lr_at(0) == pytest.approx(2e-4)
    assert trainer.lr_at(4) == pytest.approx(1e-3) == trainer.lr_at(100)
    assert trainer.ema_decay_at(0) == pytest.approx(0.1)
    assert trainer.ema_decay_at(10**6) == pytest.approx(0.999)


def test_non_finite_loss_stops_with_a_message(tmp_path):
    net = MLP(data_dim=2, hidden=8, depth=1, emb_dim=8)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))  # a diverged weight
    trainer = sd.Trainer(net, sd.VPSDE(), torch.zeros(16, 2), tmp_path,
                         config=sd.TrainConfig(steps=3, batch_size=4), progress=False)
    with pytest.raises(sd.NumericalError, match=r"training loss at step 0 is (nan|inf)"):
        trainer.fit()


def test_train_config_validation():
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got -4"):
        sd.TrainConfig(batch_size=-4)
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'"):
        sd.TrainConfig(weighting="snr")
