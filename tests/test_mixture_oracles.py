"""The labelled mixture's exact oracles (classifier, class-conditional score, posterior given
observed coordinates), against independent computations: scipy densities, quadrature over the
data, autograd, and Gaussian conditioning written with full covariance matrices."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logsumexp

import sdediff as sd
from sdediff.checks import InputTypeError, InputValueError

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
LABELS = [0, 1, 1, 2, 0]
WEIGHTS = [0.1, 0.15, 0.2, 0.25, 0.3]


def labelled(event_shape=(3,), seed=0, labels=LABELS):
    g = torch.Generator().manual_seed(seed)
    K = len(labels)
    means = 3 * torch.rand((K,) + event_shape, generator=g, dtype=F64) - 1.5
    stds = 0.2 + 0.4 * torch.rand((K,) + event_shape, generator=g, dtype=F64)
    return sd.GaussianMixture(means, stds, WEIGHTS[:K], labels=labels)


def points(n, event_shape=(3,), seed=1, scale=1.0):
    return scale * torch.randn((n,) + event_shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def noised(gmm, sde, t):
    """Component means and diagonal variances of p_t as numpy arrays (K, D), for scipy."""
    mu, var = gmm.means.numpy(), gmm.stds.numpy() ** 2
    if sde is None:
        return mu, var
    alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=F64)))
    return alpha * mu, alpha**2 * var + sigma**2


def normal_pdf(z, m, s):
    """The 1-D normal density, written out: scipy's frozen distributions cost ~0.1 ms a call in quad."""
    return math.exp(-0.5 * ((z - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


# -- classifier p_t(y | x) ---------------------------------------------------------------------

CASES = [(None, None), (sd.VPSDE(), 0.3), (sd.VESDE(), 0.5), (sd.SubVPSDE(), 0.8)]


@pytest.mark.parametrize("sde,t", CASES, ids=["t0", "vp", "ve", "subvp"])
def test_class_probabilities_sum_to_one_and_match_scipy_bayes(sde, t):
    gmm = labelled()
    x = points(6)
    mu, var = noised(gmm, sde, t)
    log_joint = np.stack([np.log(w) + stats.multivariate_normal(m, np.diag(v)).logpdf(x.numpy())
                          for m, v, w in zip(mu, var, WEIGHTS, strict=True)], axis=1)   # (B, K)
    log_evidence = logsumexp(log_joint, axis=1)
    probs = []
    for y in range(3):
        got = gmm.class_log_prob(y, x, sde, t)
        in_class = [k for k, label in enumerate(LABELS) if label == y]
        expected = logsumexp(log_joint[:, in_class], axis=1) - log_evidence
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-12)
        probs.append(got.exp())
    np.testing.assert_allclose(torch.stack(probs).sum(0).numpy(), 1.0, rtol=1e-13)
    # per-sample labels give each sample its own class's value
    ys = torch.tensor([0, 1, 2, 2, 1, 0])
    per_sample = gmm.class_log_prob(ys, x, sde, t)
    np.testing.assert_allclose(per_sample.numpy(), torch.stack(probs).log()[ys, torch.arange(6)].numpy(),
                               rtol=1e-12)


def test_noised_classifier_matches_quadrature_over_the_data():
    """p_t(y | x) = int p_0(x0, y) N(x; alpha x0, sigma^2) dx0 / p_t(x), in 1-D by quadrature: checks
    the noising of each component, not only Bayes' rule."""
    gmm = sd.GaussianMixture(torch.tensor([[-1.0], [0.2], [1.1]], dtype=F64),
                             torch.tensor([0.3, 0.5, 0.25], dtype=F64), [0.5, 0.2, 0.3], labels=[0, 1, 0])
    sde, t = sd.VPSDE(), 0.35
    alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=F64)))

    def p0(x0, members):
        return sum(w * normal_pdf(x0, m, s) for m, s, w, label in
                   zip([-1.0, 0.2, 1.1], [0.3, 0.5, 0.25], [0.5, 0.2, 0.3], [0, 1, 0], strict=True)
                   if label in members)

    for x in (-1.4, 0.3, 1.9):
        def joint(members, x=x):
            return integrate.quad(lambda x0: p0(x0, members) * normal_pdf(x, alpha * x0, sigma),
                                  -6, 6, epsabs=1e-14, limit=200)[0]
        expected = joint({1}) / joint({0, 1})
        got = float(gmm.class_log_prob(1, torch.tensor([[x]], dtype=F64), sde, t).exp())
        assert got == pytest.approx(expected, rel=1e-8)


def test_classifier_tends_to_class_prior_at_T():
    gmm, sde = labelled(), sd.VPSDE()
    prior = torch.tensor([0.1 + 0.3, 0.15 + 0.2, 0.25], dtype=F64)
    x = points(200)                           # typical points of p_T ~ N(0, I)
    errors = []
    for t in (0.3, 0.6, 0.8, 1.0):
        probs = torch.stack([gmm.class_log_prob(y, x, sde, t).exp() for y in range(3)], dim=1)
        errors.append(float((probs - prior).abs().max()))
    assert errors == sorted(errors, reverse=True)
    alpha_T = float(sde.alpha_sigma(torch.tensor(1.0, dtype=F64))[0])
    # log p_T(y|x) - log p(y) = O(alpha_T |mu| |x|): the limit is reached at rate alpha_T
    assert errors[-1] < 3 * alpha_T < 0.05
    assert errors[0] > 0.1


def test_empty_class_has_probability_zero():
    gmm = labelled(labels=[0, 2, 2, 0])
    assert gmm.num_classes == 3
    x = points(4)
    assert torch.isneginf(gmm.class_log_prob(1, x)).all()
    total = gmm.class_log_prob(0, x).exp() + gmm.class_log_prob(2, x).exp()
    np.testing.assert_allclose(total.numpy(), 1.0, rtol=1e-13)


# -- class-conditional laws and scores -----------------------------------------------------------

def test_class_mixtures_recompose_the_mixture():
    """p(x) = sum_c p(c) p(x | c): the sub-mixtures and their class weights rebuild log p."""
    gmm = labelled()
    x = points(7)
    assert gmm.num_classes == 3 and sd.GaussianMixture(gmm.means, gmm.stds).num_classes is None
    parts = []
    for y in range(3):
        sub = gmm.class_mixture(y)
        assert sub.labels.tolist() == [y] * sub.means.shape[0]
        assert float(sub.weights.sum()) == pytest.approx(1.0, abs=1e-15)
        prior_y = sum(w for w, label in zip(WEIGHTS, LABELS, strict=True) if label == y)
        parts.append(math.log(prior_y) + sub.log_prob(x, sd.VPSDE(), 0.4))
    np.testing.assert_allclose(torch.logsumexp(torch.stack(parts), 0).numpy(),
                               gmm.log_prob(x, sd.VPSDE(), 0.4).numpy(), rtol=1e-13)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE()], ids=["vp", "ve", "subvp"])
@pytest.mark.parametrize("event_shape", [(3,), (1, 2, 2)])
def test_class_score_is_gradient_of_class_mixture_log_prob(sde, event_shape):
    gmm = labelled(event_shape)
    x = points(5, event_shape, scale=1.5)
    t = torch.tensor([0.05, 0.2, 0.4, 0.7, 1.0], dtype=F64)
    ys = torch.tensor([2, 0, 1, 1, 0])
    per_sample = gmm.class_score(ys, x, t, sde)
    for y in range(3):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gmm.class_mixture(y).log_prob(xg, sde, t).sum(), xg)
        got = gmm.class_score(y, x, t, sde)
        np.testing.assert_allclose(got.numpy(), grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(per_sample[ys == y].numpy(), grad[ys == y].numpy(), rtol=1e-10, atol=1e-10)
        model = gmm.class_score_model(y, sde)
        np.testing.assert_allclose(model.score(x, t).numpy(), grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gmm.class_score_model(ys, sde).score(x, t).numpy(), per_sample.numpy(),
                               rtol=1e-15)


@pytest.mark.parametrize("sde,t", CASES[1:], ids=["vp", "ve", "subvp"])
def test_classifier_gradient_is_class_score_minus_score(sde, t):
    """Bayes: grad log p_t(y | x) = grad log p_t(x | y) - grad log p_t(x)."""
    gmm = labelled()
    x = points(6, scale=1.5)
    for y in (0, 1, 2, torch.tensor([1, 0, 2, 2, 0, 1])):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gmm.class_log_prob(y, xg, sde, t).sum(), xg)
        expected = gmm.class_score(y, x, t, sde) - gmm.score(x, t, sde)
        np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-10, atol=1e-10)


# -- posterior given observed coordinates ----------------------------------------------------------

def test_posterior_2d_matches_quadrature():
    """Weights, mean and variance of x_2 | x_1 = a by quadrature of the joint density (scipy),
    independent of the per-component factorisation."""
    mu = np.array([[-1.0, 0.5], [0.8, -0.7], [1.5, 1.2]])
    s = np.array([[0.4, 0.3], [0.6, 0.5], [0.3, 0.8]])
    w = np.array([0.5, 0.3, 0.2])
    gmm = sd.GaussianMixture(torch.tensor(mu), torch.tensor(s), w.tolist(), labels=[0, 1, 1])
    for observed_index, a in ((0, 0.9), (1, -0.2)):
        hidden_index = 1 - observed_index

        def density(u, k, a=a, observed_index=observed_index):
            """w_k N((x_1, x_2); mu_k, diag(s_k^2)) at x_observed = a, x_hidden = u."""
            point = [0.0, 0.0]
            point[observed_index], point[1 - observed_index] = a, u
            return w[k] * normal_pdf(point[0], mu[k, 0], s[k, 0]) * normal_pdf(point[1], mu[k, 1], s[k, 1])

        def moment(power, k):
            return integrate.quad(lambda u, k=k: u**power * density(u, k), -8, 8, epsabs=1e-15, limit=200)[0]

        mass = np.array([moment(0, k) for k in range(3)])
        mean = sum(moment(1, k) for k in range(3)) / mass.sum()
        var = sum(moment(2, k) for k in range(3)) / mass.sum() - mean**2

        x_known = torch.zeros(2, dtype=F64)
        x_known[observed_index] = a
        x_known[hidden_index] = float("nan")           # unobserved entries are ignored
        mask = torch.zeros(2, dtype=torch.bool)
        mask[observed_index] = True
        post = gmm.posterior(x_known, mask)
        assert post.event_shape == (1,)
        np.testing.assert_allclose(post.weights.numpy(), mass / mass.sum(), rtol=1e-9)
        np.testing.assert_allclose(post.means[:, 0].numpy(), mu[:, hidden_index])
        np.testing.assert_allclose(post.stds[:, 0].numpy(), s[:, hidden_index])
        assert float(post.mean[0]) == pytest.approx(mean, rel=1e-9)
        assert float(post.covariance[0, 0]) == pytest.approx(var, rel=1e-9)
        assert post.labels.tolist() == [0, 1, 1]


def test_posterior_4d_matches_gaussian_conditioning_and_grid_integration():
    """Event shape (2, 2), observing the diagonal: against (a) the textbook full-covariance
    conditioning of each component, mu_U + S_UO S_OO^-1 (y - mu_O), S_UU - S_UO S_OO^-1 S_OU,
    weights from N(y; mu_O, S_OO), then the law of total covariance; (b) moments of the joint
    density on a grid over the two unobserved coordinates."""
    gmm = labelled((2, 2), seed=3, labels=[0, 1, 1, 2])
    x_known = torch.tensor([[0.4, 9.0], [9.0, -0.6]], dtype=F64)
    mask = torch.tensor([[1, 0], [0, 1]])
    O, U = [0, 3], [1, 2]
    y = x_known.reshape(-1).numpy()[O]
    mu, w = gmm.means.numpy(), gmm.weights.numpy()
    covs = [np.diag(s**2) for s in gmm.stds.numpy()]

    log_w, cond_means, cond_covs = [], [], []
    for m, S, wk in zip(mu, covs, w, strict=True):
        gain = S[np.ix_(U, O)] @ np.linalg.inv(S[np.ix_(O, O)])
        cond_means.append(m[U] + gain @ (y - m[O]))
        cond_covs.append(S[np.ix_(U, U)] - gain @ S[np.ix_(O, U)])
        log_w.append(np.log(wk) + stats.multivariate_normal(m[O], S[np.ix_(O, O)]).logpdf(y))
    post_w = np.exp(np.array(log_w) - logsumexp(log_w))
    mean = post_w @ np.array(cond_means)
    cov = sum(wk * (C + np.outer(m - mean, m - mean)) for wk, m, C in zip(post_w, cond_means, cond_covs,
                                                                             strict=True))
    post = gmm.posterior(x_known, mask)
    np.testing.assert_allclose(post.weights.numpy(), post_w, rtol=1e-12)
    np.testing.assert_allclose(post.mean.numpy(), mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(post.covariance.numpy(), cov, rtol=1e-12, atol=1e-14)
    # class posterior p(c | x^O = y) from the kept labels
    assert post.labels.tolist() == [0, 1, 1, 2]

    s_u = gmm.stds.numpy()[:, U]
    lo, hi = (mu[:, U] - 10 * s_u).min(0), (mu[:, U] + 10 * s_u).max(0)   # tails below 1e-20
    u1, u2 = np.meshgrid(np.linspace(lo[0], hi[0], 501), np.linspace(lo[1], hi[1], 501), indexing="ij")
    full = np.empty(u1.shape + (4,))
    full[..., O[0]], full[..., O[1]], full[..., U[0]], full[..., U[1]] = y[0], y[1], u1, u2
    dens = np.stack([wk * stats.multivariate_normal(m, S).pdf(full) for m, S, wk in zip(mu, covs, w,
                                                                                        strict=True)])
    total = dens.sum(0)
    grid_mean = np.array([(total * u1).sum(), (total * u2).sum()]) / total.sum()
    d1, d2 = u1 - grid_mean[0], u2 - grid_mean[1]
    grid_cov = np.array([[(total * d1 * d1).sum(), (total * d1 * d2).sum()],
                         [(total * d2 * d1).sum(), (total * d2 * d2).sum()]]) / total.sum()
    np.testing.assert_allclose(post.weights.numpy(), dens.sum((1, 2)) / total.sum(), rtol=1e-8)
    np.testing.assert_allclose(post.mean.numpy(), grid_mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(post.covariance.numpy(), grid_cov, rtol=1e-7, atol=1e-10)


def mean_z(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Largest |sample mean - mean| in standard errors (from the exact variance), per coordinate."""
    se = torch.sqrt(torch.diagonal(cov) / samples.shape[0])
    return float(((samples.mean(0) - mean) / se).abs().max())


@pytest.fixture(scope="module")
def favour_rare():
    """A 3-D mixture whose observation x_1 = 2.2 selects the component of prior weight 0.05."""
    gmm = sd.GaussianMixture(torch.tensor([[-2.0, -1.0, 1.0], [2.0, 1.5, -0.5], [-1.5, 0.5, 2.0]], dtype=F64),
                             torch.tensor([[0.5, 0.4, 0.6], [0.5, 0.3, 0.4], [0.6, 0.5, 0.3]], dtype=F64),
                             [0.6, 0.05, 0.35])
    x_known = torch.tensor([2.2, 0.0, 0.0], dtype=torch.float32)
    mask = torch.tensor([1.0, 0.0, 0.0])
    return gmm, x_known, mask


def test_posterior_samples_pin_observed_and_match_the_exact_mean(favour_rare):
    gmm, x_known, mask = favour_rare
    n = 20_000
    samples = gmm.sample_posterior(x_known, mask, n, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, 3) and samples.dtype == F64
    assert torch.equal(samples[:, 0], torch.full((n,), float(x_known[0]), dtype=F64))
    post = gmm.posterior(x_known, mask)
    assert float(post.weights[1]) > 0.99                        # the rare component dominates
    assert mean_z(samples[:, 1:], post.mean, post.covariance) < 4.5


def test_mean_check_detects_an_unreweighted_posterior(favour_rare):
    """The same check fails a posterior that keeps the prior weights (a replacement-style bias)."""
    gmm, x_known, mask = favour_rare
    post = gmm.posterior(x_known, mask)
    wrong = sd.GaussianMixture(gmm.means[:, 1:], gmm.stds[:, 1:], gmm.weights)
    samples = wrong.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert mean_z(samples, post.mean, post.covariance) > 100


def test_posterior_sample_images_keep_their_shape():
    gmm = labelled((1, 2, 2), seed=5)
    x_known = points(1, (1, 2, 2))[0]
    mask = torch.tensor([[[1, 0], [1, 1]]])
    samples = gmm.sample_posterior(x_known, mask, 50, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (50, 1, 2, 2)
    assert torch.equal(samples[:, mask.bool()], x_known[mask.bool()].expand(50, 3))
    assert gmm.posterior(x_known, mask).event_shape == (1,)


def test_posterior_drops_components_whose_weight_underflows():
    gmm = sd.GaussianMixture(torch.tensor([[0.0, 0.0], [200.0, 0.0]], dtype=F64), 0.1, labels=[0, 1])
    post = gmm.posterior(torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1, 0]))
    assert post.means.shape == (1, 1) and post.labels.tolist() == [0]
    assert float(post.weights[0]) == 1.0


# -- bad input: each message names the bad value and what is allowed ------------------------------

UNLABELLED = sd.GaussianMixture(torch.zeros(2, 3, dtype=F64), 1.0)
X3 = torch.zeros(5, 3, dtype=F64)
OBS = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
BAD_INPUTS = {
    "labels float": (lambda g: labelled(labels=[0.0, 1.0, 1.0, 2.0, 0.0]), InputTypeError,
                     r"labels must be integers .*got dtype torch.float"),
    "labels bool": (lambda g: labelled(labels=[True, False, True, True, False]), InputTypeError,
                    r"labels must be integers .*torch.bool"),
    "labels shape": (lambda g: sd.GaussianMixture(g.means, g.stds, labels=[0, 1]), InputValueError,
                     r"labels has shape \(2,\), expected \(5,\): one class per component"),
    "labels negative": (lambda g: labelled(labels=[0, 1, -3, 2, 0]), InputValueError,
                        r"labels must be >= 0, got -3 for component 2"),
    "labels text": (lambda g: sd.GaussianMixture(g.means, g.stds, labels="abc"), InputTypeError,
                    r"labels must be 5 non-negative integers \(component -> class\), got 'abc'"),
    "y too large": (lambda g: g.class_mixture(3), InputValueError,
                    r"class y=3 is out of range; allowed: 0\.\.2 \(num_classes=3\)"),
    "y negative": (lambda g: g.class_log_prob(-1, X3), InputValueError,
                   r"class y=-1 is out of range; allowed: 0\.\.2"),
    "y in tensor": (lambda g: g.class_log_prob(torch.tensor([0, 1, 7, 0, 0]), X3), InputValueError,
                    r"class y=7 is out of range; allowed: 0\.\.2"),
    "y float": (lambda g: g.class_mixture(1.0), InputTypeError, r"y must be an int .*got 1\.0 \(float\)"),
    "y bool": (lambda g: g.class_mixture(True), InputTypeError, r"y must be an int .*got True \(bool\)"),
    "y float tensor": (lambda g: g.class_score(torch.zeros(5), X3, 0.5, sd.VPSDE()), InputTypeError,
                       r"tensor of integer class labels, got dtype torch.float32"),
    "y shape": (lambda g: g.class_log_prob(torch.tensor([0, 1]), X3), InputValueError,
                r"y has shape \(2,\); expected an int, a 0-d tensor or shape \(5,\) for a batch of 5"),
    "unlabelled": (lambda g: UNLABELLED.class_score_model(0, sd.VPSDE()), InputValueError,
                   r"y=0 given, but this mixture has no labels \(labels=None\); pass labels="),
    "empty class": (lambda g: labelled(labels=[0, 2, 2, 0]).class_mixture(1), InputValueError,
                    r"class y=1 owns no component of this mixture; classes with components: 0, 2"),
    "score model y": (lambda g: g.class_score_model(4, sd.VPSDE()), InputValueError,
                      r"class y=4 is out of range"),
    "sde without t": (lambda g: g.class_log_prob(0, X3, sd.VPSDE()), InputValueError,
                      r"give both sde and t .* or neither"),
    "mask shape": (lambda g: g.posterior(OBS, torch.tensor([1, 0])), InputValueError,
                   r"mask has shape \(2,\), expected \(3,\)"),
    "mask values": (lambda g: g.posterior(OBS, torch.tensor([1, 2, 0])), InputValueError,
                    r"mask must hold only 0 and 1 \(1 = observed\), got 2"),
    "mask type": (lambda g: g.posterior(OBS, [1, 0, 0]), InputTypeError,
                  r"mask must be a torch.Tensor of 0/1 \(1 = observed\) of shape \(3,\), got list"),
    "mask none": (lambda g: g.posterior(OBS, torch.zeros(3)), InputValueError,
                  r"mask observes no coordinate \(all 0\): the posterior is the prior itself"),
    "mask all": (lambda g: g.sample_posterior(OBS, torch.ones(3), 4), InputValueError,
                 r"mask observes every coordinate \(all 1\): the posterior is the point mass at x_known"),
    "x shape": (lambda g: g.posterior(OBS[None], torch.tensor([1, 0, 0])), InputValueError,
                r"x_known has shape \(1, 3\), expected \(3,\)"),
    "x int": (lambda g: g.posterior(torch.tensor([1, 0, 0]), torch.tensor([1, 0, 0])), InputTypeError,
              r"x_known must have a floating dtype"),
    "x nan": (lambda g: g.posterior(torch.tensor([float("nan"), 0.0, 1.0]), torch.tensor([1, 0, 1])),
              InputValueError,
              r"x_known has 1 non-finite observed value\(s\) .*\(unobserved ones are ignored\)"),
    "n": (lambda g: g.sample_posterior(OBS, torch.tensor([1, 0, 0]), 0), InputValueError,
          r"n must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_messages(case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(labelled())
