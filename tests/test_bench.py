"""The sampler benchmark (issue 6): schema of its outputs, errors that fall with NFE, the CLI's
one-line errors, the exact reference against a closed form, the diffusers peers, and the harness
kept out of the core (no core module imports :mod:`sdediff.bench`)."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sdediff as sd
from sdediff import bench
from sdediff.bench import peers, problems
from sdediff.bench.metrics import frechet_distance, rms, rms_without_worst
from sdediff.cli import main
from tests.test_cli import fails_with

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = bench.run_bench("gmm2d", samplers="ddim,heun,ddpm", nfe="5,10", num=48,
                                 out=out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_tiny_sweep_writes_csv_json_and_plots_with_the_documented_schema(tiny):
    result, out = tiny
    with open(out / "gmm2d.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == bench.COLUMNS
        csv_rows = list(reader)
    saved = json.loads((out / "gmm2d.json").read_text())
    assert saved["columns"] == list(bench.COLUMNS)
    assert {"num", "seed", "budgets", "load_average_start", "seconds"} <= set(saved["meta"])
    rows = saved["rows"]
    assert len(rows) == len(csv_rows) == len(result.rows)
    assert all(tuple(r) == bench.COLUMNS for r in rows)
    # deterministic samplers: RMS error and energy distance; stochastic ddpm: energy only
    metrics = {(r["sampler"], r["budget"]): set() for r in rows}
    for r in rows:
        metrics[(r["sampler"], r["budget"])].add(r["metric"])
        assert r["problem"] == "gmm2d" and r["source"] == "sdediff"
        assert 1 <= r["nfe"] <= r["budget"] and r["seconds"] > 0 and math.isfinite(r["value"])
        assert (r["floor"] is not None) == (r["metric"] == "energy_distance")
    assert metrics[("ddim", 5)] == {"rms_error", "energy_distance"}
    assert metrics[("ddpm", 10)] == {"energy_distance"}
    # Heun's 2N - 1 calls: budget 10 is met by 5 steps (9 calls), 5 by 3 steps
    heun = {r["budget"]: (r["steps"], r["nfe"]) for r in rows if r["sampler"] == "heun"}
    assert heun == {5: (3, 5), 10: (5, 9)}
    for name in ("rms_error", "energy_distance", "time"):
        assert (out / f"gmm2d_{name}.png").stat().st_size > 5000
    assert "| `ddim` |" in (out / "gmm2d.md").read_text()


def test_rms_error_falls_with_nfe_for_a_deterministic_sampler(tiny):
    # (not Heun: on its rho = 7 grid 9 calls are worse than 5, a real pre-asymptotic effect)
    result, _ = tiny
    error = {r["budget"]: r["value"] for r in result.rows
             if r["sampler"] == "ddim" and r["metric"] == "rms_error"}
    assert error[10] < 0.7 * error[5], error


def test_budgets_pick_the_most_steps_that_fit_and_skip_with_a_note():
    sde = sd.VPSDE()
    assert sd.samplers.get("heun").steps_within(20, sde, 1e-3) == (10, 19)
    assert sd.samplers.get("pc").steps_within(5, sde, 1e-3) == (2, 4)
    # the 1000-step chain has 999 steps above t_end = 1e-3
    assert sd.samplers.get("ddpm").steps_within(1000, sde, 1e-3) == (999, 999)
    assert sd.samplers.get("ddim").steps_within(10, sde, 1e-3, reserve=1) == (9, 9)
    tasks, notes = bench.plan(["pc", "ode"], [], [1, 4], [1e-3], sde, 1e-3)
    assert [(t.sampler, t.budget, t.steps, t.options) for t in tasks] == [
        ("pc", 4, 2, {}), ("ode", None, None, {"rtol": 1e-3, "atol": 1e-3})]
    assert notes == ["pc: skipped at NFE 1 (its smallest run costs 2 calls)"]


def test_all_includes_every_registered_sampler_and_the_peers():
    ours, theirs = bench.resolve_samplers("all")
    assert ours == sd.samplers.available() and theirs == list(peers.PEERS)
    assert bench.resolve_samplers("ddim,peers,ddim") == (["ddim"], list(peers.PEERS))


def test_cli_bench_writes_outputs(capsys, tmp_path):
    assert main(["bench", "--problem", "gmm2d", "--samplers", "ddim,dpm_solver++", "--nfe",
                 "5,10", "--num", "24", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rms_error at NFE 10: best" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"gmm2d.csv", "gmm2d.json", "gmm2d.md",
                                                    "gmm2d_rms_error.png", "gmm2d_time.png"}


@pytest.mark.parametrize("argv, pattern", [
    (["--problem", "nope"], r"unknown problem 'nope'; allowed: gmm2d, gmm64, digits, model$"),
    (["--problem", "gmm2d", "--samplers", "ddim,nope"],
     r"unknown sampler 'nope'; allowed: .*\bddim, .*diffusers:ddim.*, all, sdediff, peers$"),
    (["--problem", "gmm2d", "--nfe", "10,x"], r"--nfe must be a comma-separated list"),
    (["--problem", "gmm2d", "--nfe", "0"], r"--nfe must be positive"),
    (["--problem", "digits", "--checkpoint", "/no/such/run"], r"no checkpoint .*/no/such/run"),
    (["--problem", "gmm2d", "--num", "1"], r"--num must be >= 2"),
])
def test_cli_bench_errors_are_one_line(capsys, tmp_path, argv, pattern):
    fails_with(capsys, ["bench", *argv, "--out", str(tmp_path / "never")], pattern)
    assert not (tmp_path / "never").exists()


def test_without_diffusers_the_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(peers, "diffusers_available", lambda: False)
    result = bench.run_bench("gmm2d", samplers="ddim,diffusers:ddim", nfe="5", num=16,
                             progress=False)
    assert {r["sampler"] for r in result.rows} == {"ddim"}
    assert any("diffusers is not installed" in n and "sdediff[bench]" in n for n in result.notes)


# ------------------------------------------------------------------- the exact reference

def affine_pf(x, m, s, alpha_from, sigma_from, alpha_to, sigma_to):
    """For data N(m, s^2) the PF map keeps (x_t - alpha m) / sqrt(alpha^2 s^2 + sigma^2)."""
    z = (x - alpha_from * m) / math.sqrt(alpha_from**2 * s**2 + sigma_from**2)
    return alpha_to * m + math.sqrt(alpha_to**2 * s**2 + sigma_to**2) * z


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()],
                         ids=repr)
def test_exact_pf_endpoint_matches_the_closed_form_on_one_gaussian(sde):
    m, s = 0.7, 0.4
    gaussian = sd.GaussianMixture(torch.full((1, 3), m, dtype=torch.float64), s)
    x_T = sde.prior_sample((5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def alpha_sigma(t):
        return (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=torch.float64)))

    t_end = 1e-3
    expected = affine_pf(x_T, m, s, *alpha_sigma(sde.T), *alpha_sigma(t_end))
    got = problems.exact_pf_endpoint(gaussian, sde, x_T, t_end)
    assert got.dtype == torch.float64 and (got - expected).abs().max() < 1e-8
    # and back (encoding): the same map forward in time (relative: VE's x_T is ~50 wide)
    back = problems.exact_pf_solve(gaussian, sde, got, t_end, sde.T)
    assert (back - x_T).abs().max() < 1e-8 * max(1.0, float(x_T.abs().max()))


def test_pf_flow_reaches_zero_noise_in_closed_form():
    m, s, s0 = -0.3, 0.25, 80.0
    gaussian = sd.GaussianMixture(torch.full((1, 2), m, dtype=torch.float64), s)
    y0 = s0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = m + s / math.sqrt(s**2 + s0**2) * (y0 - m)
    assert (problems.pf_flow(gaussian, y0, s0, 0.0) - expected).abs().max() < 1e-8


def test_problems_are_the_documented_mixtures():
    g2, g64 = problems.gmm2d(), problems.gmm64()
    assert g2.means.shape == (8, 2) and torch.allclose(g2.means.norm(dim=1),
                                                       torch.full((8,), 1.5, dtype=torch.float64))
    assert g64.means.shape == (10, 64) and float(g64.means.abs().max()) <= 1.5
    assert float(g2.stds.max()) == float(g64.stds.min()) == 0.15
    assert set(problems.PROBLEMS) == {"gmm2d", "gmm64"}


def test_frechet_distance_of_gaussian_fits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(x, x)) < 1e-9
    assert abs(frechet_distance(x, x + 2.0) - 12.0) < 1e-9          # |shift|^2 = 3 * 2^2
    # y = 2x: |mu - 2 mu|^2 + tr(C + 4C - 2 (4 C^2)^{1/2}) = |mu|^2 + tr C exactly
    expected = float(x.mean(0).pow(2).sum() + torch.cov(x.T).trace())
    assert abs(frechet_distance(x, 2 * x) - expected) < 1e-9
    with pytest.raises(ValueError, match="rows of one size"):
        frechet_distance(x, x[:, :2])


# ----------------------------------------------------------------------------------- peers

def test_diffusers_peers_converge_to_their_own_exact_reference():
    pytest.importorskip("diffusers")
    result = bench.run_bench("gmm2d", samplers="diffusers", nfe="10,40", num=32, progress=False)
    assert not [n for n in result.notes if "failed" in n], result.notes
    errors = {}
    for r in result.rows:
        if r["metric"] == "rms_error":
            errors.setdefault(r["sampler"], {})[r["budget"]] = r["value"]
    assert set(errors) == set(peers.PEERS)
    for name, error in errors.items():
        assert error[40] < 0.6 * error[10], (name, error)


def test_peer_model_sees_the_discrete_schedule():
    model = peers.DiscreteEps(problems.gmm2d())
    abar = sd.VPSDE().discretize(1000).alphas_cumprod
    assert model.s_of(999) == pytest.approx(math.sqrt((1 - abar[999]) / abar[999]), rel=1e-12)
    assert model.s_of(0) == pytest.approx(math.sqrt((1 - abar[0]) / abar[0]), rel=1e-12)
    # between timesteps: linear in the timestep, as diffusers interpolates its sigmas
    assert model.s_of(10.5) == pytest.approx(0.5 * (model.s_of(10) + model.s_of(11)), rel=1e-12)


# ------------------------------------------------------------------ the harness is not the library

#: Every module of the core: the library that must work without the benchmark harness.
CORE = ["sdediff", "sdediff.sde", "sdediff.score", "sdediff.ode", "sdediff.train", "sdediff.data",
        "sdediff.checkpoint", "sdediff.losses", "sdediff.checks", "sdediff.utils", "sdediff.nets",
        *(f"sdediff.nets.{p.stem}" for p in sorted((Path(sd.__file__).parent / "nets").glob("*.py"))
          if p.stem != "__init__"),
        "sdediff.samplers",
        *(f"sdediff.samplers.{p.stem}" for p in
          sorted((Path(sd.__file__).parent / "samplers").glob("*.py")) if p.stem != "__init__")]


def test_no_core_module_imports_the_benchmark_harness():
    # a fresh interpreter (this one has imported sdediff.bench already) imports the core module by
    # module and names the first one after which any sdediff.bench module is loaded
    code = ("import importlib, json, sys\n"
            f"for name in {CORE!r}:\n"
            "    importlib.import_module(name)\n"
            "    harness = sorted(m for m in sys.modules if m.startswith('sdediff.bench'))\n"
            "    if harness:\n"
            "        print(json.dumps([name, harness]))\n"
            "        break\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"core module imports the harness: {done.stdout.strip()}"
    assert len(CORE) > 20                     # every sampler and net module is in the list


def test_a_quick_benchmark_run_never_writes_the_committed_results(tmp_path):
    """Issue 19 item 9: --quick writes to a fresh temporary folder, refuses the committed one,
    and every script under benchmarks/ with a --quick goes through results_folder (or writes
    under results/quick/, which .gitignore keeps out of the repository, or writes nothing)."""
    import argparse
    from pathlib import Path

    from sdediff.bench.report import add_output_arguments, results_folder

    results = tmp_path / "results"
    parser = argparse.ArgumentParser()
    add_output_arguments(parser, results, "fewer samples")
    quick = results_folder(parser.parse_args(["--quick"]), results, "x")
    assert quick.is_dir() and quick.resolve() != results.resolve() and "x_quick_" in quick.name
    assert results_folder(parser.parse_args([]), results, "x") == results
    assert results_folder(parser.parse_args(["--quick", "--out", str(tmp_path / "o")]), results,
                          "x") == tmp_path / "o"
    with pytest.raises(SystemExit, match="--quick never writes over the committed results"):
        results_folder(parser.parse_args(["--quick", "--out", str(results)]), results, "x")
    root = Path(__file__).resolve().parent.parent
    own_folder = {"mnist_recipe.py", "bench_scale.py"}          # results/quick/ (ignored by git)
    no_files = {"bench_ddim_overhead.py"}                       # --quick writes no file
    assert "benchmarks/results/quick/" in (root / ".gitignore").read_text()
    for script in sorted((root / "benchmarks").glob("*.py")):
        text = script.read_text()
        if "--quick" not in text:
            continue
        if script.name in own_folder:
            assert '"quick"' in text, script.name
        elif script.name not in no_files:
            assert "results_folder(args" in text, f"{script.name}: --quick without results_folder"


def test_rms_without_worst_leaves_out_the_farthest_samples():
    from sdediff.checks import InputValueError

    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 64, generator=g, dtype=torch.float64)
    b = a + 0.01 * torch.randn(256, 64, generator=g, dtype=torch.float64)
    b[17] += 9.0 / 8.0                                  # one sample 9 away: it alone sets the RMS
    assert rms(a, b) > 0.5
    kept = torch.cat([torch.arange(17), torch.arange(18, 256)])
    assert rms_without_worst(a, b) == pytest.approx(rms(a[kept], b[kept]), rel=1e-12)
    assert rms_without_worst(a, b) < 0.1
    assert rms_without_worst(a, b, leave_out=0) == pytest.approx(rms(a, b), rel=1e-12)
    with pytest.raises(InputValueError, match=r"leave_out=256: must be in \[0, 255\]"):
        rms_without_worst(a, b, leave_out=256)
