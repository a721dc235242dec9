"""Numerical robustness and determinism of the samplers, and bfloat16 autocast on CPU.

- Every registered sampler, in float32 and float64, ending at ``t_end`` from 1e-5 to 1e-2 and
  started from latents that include extreme values (|x| up to 10), returns finite samples (both
  the state at ``t_end`` and its denoised ``x0``) on the exact mixture score; the smallest
  ``t_end`` also under the cosine VP, sub-VP and VE processes.
- The network may run in bfloat16 under ``torch.autocast`` on CPU, in training and in sampling.
- Same seed, same samples: twice in one process, with and without the progress bar, and in a
  fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sdediff as sd
from sdediff.bench import problems
from sdediff.cli import main
from sdediff.nets import MLP

NAMES = sd.samplers.available()
T_ENDS = [1e-5, 1e-4, 1e-3, 1e-2]
STEPS = 10


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def extreme_latents(dtype) -> torch.Tensor:
    """64 starting points: a standard normal draw with rows pushed to |x| = 10 on each side."""
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:8] = torch.tensor([[10.0, 10.0], [-10.0, -10.0], [10.0, -10.0], [-10.0, 10.0],
                          [10.0, 0.0], [0.0, -10.0], [0.0, 0.0], [9.99, -0.01]])
    x[8:16] = (6.0 * x[8:16]).clamp(-10.0, 10.0)
    return x.to(dtype)


def steps_for(name: str) -> int | None:
    sampler = sd.samplers.get(name)
    return None if sampler.adaptive else max(STEPS, sampler.min_steps)


def assert_finite_run(name, model, dtype, t_end):
    x_T = extreme_latents(dtype)
    result = sd.sample(model, x_T=x_T, sampler=name, steps=steps_for(name), t_end=t_end,
                       denoise=False, return_info=True,
                       generator=torch.Generator().manual_seed(1))
    assert result.x.dtype == dtype
    bad = (~torch.isfinite(result.x)).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"{name} {dtype} t_end={t_end}: non-finite x at rows {bad} from {x_T[bad]}"
    with torch.no_grad():
        x0 = model.x0(result.x, t_end)  # what denoise=True returns
    assert bool(torch.isfinite(x0).all()), f"{name} {dtype} t_end={t_end}: non-finite denoise"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_samples_at_small_t_end_and_extreme_latents(name, dtype):
    model = problems.gmm2d().score_model(sd.VPSDE())
    for t_end in T_ENDS:
        assert_finite_run(name, model, dtype, t_end)


@pytest.mark.parametrize("sde", [sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()],
                         ids=["vp-cosine", "subvp", "ve"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_samples_under_other_processes(name, sde):
    model = problems.gmm2d().score_model(sde)
    for dtype in (torch.float32, torch.float64):
        assert_finite_run(name, model, dtype, T_ENDS[0])


# --- bfloat16 autocast -------------------------------------------------------------------------

def small_trainer(out, autocast=None, steps=12):
    torch.manual_seed(0)
    data = problems.gmm2d().sample(512, generator=torch.Generator().manual_seed(1)).float()
    net = MLP(data_dim=2, hidden=32, depth=2, emb_dim=16)
    config = sd.TrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup=2, checkpoint_every=6,
                            seed=1, autocast=autocast)
    return sd.Trainer(net, sd.VPSDE(), data, out, config=config, progress=False)


def record_linear_dtypes(net) -> list[torch.dtype]:
    """The output dtypes of the network's first Linear layer, call by call."""
    seen: list[torch.dtype] = []
    net.inp.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    return seen


def test_bfloat16_autocast_training_on_cpu(tmp_path):
    bf16 = small_trainer(tmp_path / "bf16", autocast="bfloat16")
    seen = record_linear_dtypes(bf16.net)
    bf16.fit()
    assert seen and set(seen) == {torch.bfloat16}  # the network really ran in bfloat16
    assert all(p.dtype == torch.float32 and bool(torch.isfinite(p).all())
               for p in (*bf16.net.parameters(), *bf16.ema_net.parameters()))
    f32 = small_trainer(tmp_path / "f32")
    f32.fit()
    diffs = [float((a - b).detach().abs().max()) for a, b in
             zip(bf16.net.parameters(), f32.net.parameters(), strict=True)]
    assert max(diffs) > 0  # bfloat16 changed the arithmetic...
    assert max(diffs) < 0.05  # ...but not the training (12 steps of lr 2e-3)
    # autocast is part of the saved config and resume stays exact under it
    half = small_trainer(tmp_path / "half", autocast="bfloat16")
    half.fit(6)
    resumed = small_trainer(tmp_path / "half", autocast="bfloat16")
    assert resumed.resume() == 6
    resumed.fit()
    for a, b in zip(bf16.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_bfloat16_autocast_sampling_on_cpu(tmp_path):
    trainer = small_trainer(tmp_path, steps=30)
    trainer.fit()
    model_bf16, config = sd.checkpoint.load_model(tmp_path, autocast="bfloat16")
    model_f32, _ = sd.checkpoint.load_model(tmp_path)
    assert config["train"]["autocast"] is None
    seen = record_linear_dtypes(model_bf16.net)
    for name in NAMES:
        kw = {"x_T": extreme_latents(torch.float32), "sampler": name, "steps": steps_for(name),
              "generator": torch.Generator().manual_seed(2)}
        if sd.samplers.get(name).adaptive:  # error control at bfloat16's own precision
            kw |= {"rtol": 1e-2, "atol": 1e-2}
        x = sd.sample(model_bf16, **kw)
        kw["generator"] = torch.Generator().manual_seed(2)
        ref = sd.sample(model_f32, **kw)
        assert x.dtype == torch.float32 and bool(torch.isfinite(x).all()), name
        sampler = sd.samplers.get(name)
        if sampler.adaptive and sampler.stochastic:
            # bfloat16 rounding moves the error estimate, hence the accepted steps; on the same
            # Brownian path other steps give another sample (strong order 1/2), not a rounded one
            continue
        assert float((x - ref).abs().max()) < 0.5, name  # same samples up to bfloat16 rounding
    assert seen and set(seen) == {torch.bfloat16}


def test_cli_train_with_bfloat16_autocast(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "8gaussians", "--out", str(out), "--steps", "3",
                 "--batch-size", "8", "--autocast", "bfloat16", "--no-progress"]) == 0
    _, config = sd.checkpoint.load_model(out)
    assert config["train"]["autocast"] == "bfloat16"


# --- determinism --------------------------------------------------------------------------------

def draw_all(progress: bool) -> dict[str, torch.Tensor]:
    model = problems.gmm2d().score_model(sd.VPSDE())
    return {name: sd.sample(model, shape=(32, 2), sampler=name, steps=steps_for(name),
                            generator=torch.Generator().manual_seed(7), progress=progress)
            for name in NAMES}


CHILD = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_reliability_robustness import draw_all
torch.save(draw_all(progress=False), sys.argv[1])
"""


def test_same_seed_same_samples_across_runs_and_progress(tmp_path, capsys):
    quiet, again, shown = draw_all(False), draw_all(False), draw_all(True)
    assert "%" in capsys.readouterr().err  # the bar was really drawn
    child = CHILD.format(tests=str(Path(__file__).parent))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", child, str(tmp_path / "x.pt")], check=True, env=env,
                   timeout=300)
    fresh = torch.load(tmp_path / "x.pt", weights_only=True)
    for name in NAMES:
        for other in (again, shown, fresh):
            assert torch.equal(quiet[name], other[name]), name
    stochastic = [n for n in NAMES if sd.samplers.get(n).is_stochastic()]
    assert stochastic  # the seed matters for these: another seed gives other samples
    model = problems.gmm2d().score_model(sd.VPSDE())
    for name in stochastic:
        other = sd.sample(model, shape=(32, 2), sampler=name, steps=steps_for(name),
                          generator=torch.Generator().manual_seed(8))
        assert not torch.equal(quiet[name], other), name
