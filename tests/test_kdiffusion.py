"""k-diffusion as a peer (issue 17): its ``sampling.py`` loaded alone, the denoiser over a sdediff
model checked against sdediff's own DDIM, NFE counted, bad names refused, the sweep wiring, and
the graceful skip without k-diffusion. Tests that run k-diffusion skip when it is not installed
(``pip install --no-deps k-diffusion==0.1.1.post1``)."""

import sys

import pytest
import torch

import sdediff as sd
from sdediff import bench
from sdediff.bench import kdiffusion as kd
from sdediff.bench import problems
from sdediff.bench.metrics import rms

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py
needs_kdiffusion = pytest.mark.skipif(not kd.kdiffusion_available(),
                                      reason="k-diffusion is not installed")

T_END = 1e-3


@pytest.fixture(scope="module")
def setup():
    sde = sd.VPSDE()
    gmm = problems.gmm2d()
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sde, gmm, x_T


@needs_kdiffusion
def test_sampling_is_loaded_without_the_package():
    sampling = kd.load_sampling()
    assert sampling is kd.load_sampling()                      # cached
    assert callable(sampling.sample_euler) and callable(sampling.sample_dpm_adaptive)
    assert "k_diffusion" not in sys.modules                     # its heavy __init__ never ran
    assert kd.append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)


@needs_kdiffusion
@pytest.mark.parametrize("grid", ["karras", "vp"])
def test_euler_on_a_sigma_grid_is_sdediff_ddim_on_the_same_times(setup, grid):
    # Euler in (y, s) is DDIM in x: y' = y + (s' - s) eps = x0_hat + s' eps. The same model, the
    # same x_T, the sigma grid mapped to the process's times: equal to rounding.
    sde, gmm, x_T = setup
    model = gmm.score_model(sde)
    sigmas = kd.make_sigmas(grid, 8, sde, T_END)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 9 and float(sigmas[-1]) > 0
    denoiser = kd.KarrasDenoiser(model)
    ts = denoiser.time_of(sigmas)
    ts[0], ts[-1] = sde.T, T_END             # the pinned ends, exactly (not t(s(T)) to rounding)
    alpha_T = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
    y_end = kd.load_sampling().sample_euler(denoiser, x_T / alpha_T, sigmas, disable=True)
    x_end = float(sde.alpha(torch.tensor(T_END, dtype=torch.float64))) * y_end
    ddim = sd.samplers.get("ddim").solve(gmm.score_model(sde), x_T, ts)
    assert (x_end - ddim.x).abs().max() < 1e-10
    assert denoiser.nfe == ddim.nfe == 8 and model.nfe == 8
    # run_kdiffusion gives the same endpoint and says where it started and ended
    x, nfe, _, (y0, s0, s_end, scale) = kd.run_kdiffusion("kdiff:euler", 8, model, x_T, grid=grid,
                                                          t_end=T_END)
    assert (x - ddim.x).abs().max() < 1e-10 and nfe == 8
    s_T, s_min = sde.sigma_over_alpha(torch.tensor([sde.T, T_END], dtype=torch.float64)).tolist()
    assert (s0, s_end) == (s_T, s_min) and torch.equal(y0, x_T / alpha_T)


@needs_kdiffusion
def test_denoiser_is_the_x0_prediction_and_the_identity_at_zero(setup):
    sde, gmm, x_T = setup
    model = gmm.score_model(sde)
    denoiser = kd.KarrasDenoiser(model)
    t = torch.tensor(0.3, dtype=torch.float64)
    alpha = float(sde.alpha(t))
    s = float(sde.sigma_over_alpha(t))
    x = x_T * 0.5
    batch_sigma = torch.full((32,), s, dtype=torch.float64)
    assert torch.allclose(denoiser(x / alpha, batch_sigma), model.x0(x, t), rtol=0, atol=1e-12)
    # per-sample noise levels, one of them 0 (the identity there)
    mixed = batch_sigma.clone()
    mixed[:16] = 2 * s
    mixed[0] = 0.0
    out = denoiser(x / alpha, mixed)
    assert torch.equal(out[0], (x / alpha)[0])
    assert torch.allclose(out[16:], model.x0(x, t)[16:], rtol=0, atol=1e-12)
    calls = denoiser.nfe
    assert torch.equal(denoiser(x, torch.zeros(32, dtype=torch.float64)), x)
    assert denoiser.nfe == calls == 2                           # a batch all at s = 0: no call
    with pytest.raises(ValueError, match="sigma has 3 entries for a batch of 32"):
        denoiser(x, torch.ones(3))


@needs_kdiffusion
@pytest.mark.parametrize("name, steps, nfe, zero_nfe", [
    ("kdiff:euler", 4, 4, 4), ("kdiff:heun", 3, 6, 5), ("kdiff:dpm_2", 3, 6, 5),
    ("kdiff:lms", 5, 5, 5), ("kdiff:dpmpp_2m", 4, 4, 4), ("kdiff:dpmpp_3m_sde", 4, 4, 4),
    ("kdiff:dpm_fast", 7, 7, None),
])
def test_nfe_is_counted_and_matches_the_budget_rule(setup, name, steps, nfe, zero_nfe):
    sde, gmm, x_T = setup
    model = gmm.score_model(sde)
    grid = "exponential" if kd.KDIFF_PEERS[name].kind == "grid" else None
    x, counted, _, (_, _, s_end, _) = kd.run_kdiffusion(name, steps, model, x_T[:8], grid=grid)
    assert counted == nfe == model.nfe and torch.isfinite(x).all() and s_end > 0
    assert kd.kdiffusion_steps(name, nfe) == steps
    if zero_nfe is not None:      # k-diffusion's usual final 0: one call less for 2-stage steps
        x, counted, _, (_, _, s_end, scale) = kd.run_kdiffusion(name, steps, model, x_T[:8],
                                                                grid=grid, append_zero=True)
        assert counted == zero_nfe and s_end == 0.0 and scale == 1.0


@needs_kdiffusion
def test_adaptive_peer_counts_what_it_reports_and_tightens_with_tolerance(setup):
    sde, gmm, x_T = setup
    model = gmm.score_model(sde)
    denoiser = kd.KarrasDenoiser(model)
    s_T, s_min = sde.sigma_over_alpha(torch.tensor([sde.T, T_END], dtype=torch.float64)).tolist()
    alpha_T = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
    with kd.float64_defaults():
        _, info = kd.load_sampling().sample_dpm_adaptive(denoiser, x_T / alpha_T, s_min, s_T,
                                                         rtol=1e-2, atol=1e-2, disable=True,
                                                         return_info=True)
    assert denoiser.nfe == info["nfe"] == model.nfe > 0
    reference = problems.exact_pf_endpoint(gmm, sde, x_T, T_END)
    errors, calls = [], []
    for tol in (1e-2, 1e-4):
        x, nfe, _, (_, s0, s_end, _) = kd.run_kdiffusion("kdiff:dpm_adaptive", None, model, x_T,
                                                         rtol=tol, atol=tol)
        assert s0 == s_T and abs(s_end / s_min - 1) < 1e-4
        errors.append(rms(x, reference))
        calls.append(nfe)
    assert calls[1] > calls[0] and errors[1] < 0.2 * errors[0], (calls, errors)


def test_bad_names_and_options_raise_listing_the_allowed_ones(setup):
    sde, gmm, x_T = setup
    model = gmm.score_model(sde)
    with pytest.raises(ValueError, match=r"unknown k-diffusion peer 'kdiff:nope'; allowed: "
                                         r"kdiff:euler, kdiff:heun, .*kdiff:dpm_adaptive"):
        kd.run_kdiffusion("kdiff:nope", 4, model, x_T)
    with pytest.raises(ValueError, match=r"unknown sampler 'kdiff:nope'; allowed: .*kdiff:euler.*"
                                         r"diffusers, kdiff, all, sdediff, peers$"):
        bench.run_bench("gmm2d", samplers="ddim,kdiff:nope", nfe="5", num=8, progress=False)
    with pytest.raises(ValueError, match=r"unknown k-diffusion grid 'uniform'; allowed: karras, "
                                         r"exponential, polyexponential, vp"):
        kd.run_kdiffusion("kdiff:euler", 4, model, x_T, grid="uniform")
    with pytest.raises(ValueError, match="needs rtol and atol"):
        kd.run_kdiffusion("kdiff:dpm_adaptive", None, model, x_T)
    with pytest.raises(ValueError, match="chooses its own steps"):
        kd.run_kdiffusion("kdiff:dpm_adaptive", 5, model, x_T, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="builds its own grid"):
        kd.run_kdiffusion("kdiff:dpm_fast", 5, model, x_T, grid="karras")
    with pytest.raises(ValueError, match="adaptive: give it rtol/atol"):
        kd.kdiffusion_steps("kdiff:dpm_adaptive", 10)
    with pytest.raises(ValueError, match="the k-diffusion peers \\(kdiff:euler\\) run on the exact"):
        bench.run_bench("model", samplers="ddim,kdiff:euler", checkpoint="/no/such/run",
                        progress=False)


def test_groups_split_sdediff_diffusers_and_kdiffusion():
    ours, theirs, kdiff = bench.resolve_bench_samplers("ddim,kdiff:lms,diffusers:ddim,kdiff:lms")
    assert (ours, theirs, kdiff) == (["ddim"], ["diffusers:ddim"], ["kdiff:lms"])
    _, theirs, kdiff = bench.resolve_bench_samplers("peers")
    assert kdiff == list(kd.KDIFF_PEERS) and theirs == list(bench.peers.PEERS)
    assert bench.resolve_bench_samplers("kdiff") == ([], [], list(kd.KDIFF_PEERS))
    assert bench.resolve_bench_samplers("all")[0] == sd.samplers.available()


@needs_kdiffusion
def test_sweep_runs_the_peers_against_the_shared_exact_reference(tmp_path):
    result = bench.run_bench("gmm2d", samplers="ddim,kdiff:euler,kdiff:dpmpp_2m,kdiff:dpm_adaptive",
                             nfe="5,20", tolerances="1e-2", num=24, out=tmp_path, progress=False)
    assert not [n for n in result.notes if "failed" in n], result.notes
    rms_rows = [r for r in result.rows if r["metric"] == "rms_error"]
    peers = [r for r in rms_rows if r["source"] == kd.SOURCE]
    grids = {r["options"].get("grid") for r in peers if r["sampler"] == "kdiff:euler"}
    assert grids == set(kd.KDIFF_GRIDS)
    assert {r["sampler"] for r in peers} == {"kdiff:euler", "kdiff:dpmpp_2m", "kdiff:dpm_adaptive"}
    # the vp grid is uniform in t, sdediff's default ddim grid: Euler on it is that DDIM
    ddim = {r["budget"]: r["value"] for r in rms_rows if r["sampler"] == "ddim"}
    euler_vp = {r["budget"]: r["value"] for r in peers
                if r["sampler"] == "kdiff:euler" and r["options"].get("grid") == "vp"}
    assert euler_vp == pytest.approx(ddim, rel=1e-8)
    for name in ("kdiff:euler", "kdiff:dpmpp_2m"):
        best = {b: min(r["value"] for r in peers if r["sampler"] == name and r["budget"] == b)
                for b in (5, 20)}
        assert best[20] < 0.5 * best[5], (name, best)
    text = (tmp_path / "gmm2d.md").read_text()
    assert "| budget | sdediff | diffusers | k-diffusion |" in text and "`kdiff:euler` |" in text
    assert result.meta["k-diffusion"] == kd.KDIFF_VERSION


def test_without_kdiffusion_the_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(kd, "kdiffusion_available", lambda: False)
    result = bench.run_bench("gmm2d", samplers="ddim,kdiff:euler,kdiff:dpm_adaptive", nfe="5",
                             num=16, progress=False)
    assert {r["sampler"] for r in result.rows} == {"ddim"}
    assert any("k-diffusion is not installed" in n and "--no-deps k-diffusion" in n
               for n in result.notes), result.notes
