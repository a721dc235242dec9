"""The one score interface: :class:`ScoreModel`, the prediction converter, and the exact
:class:`GaussianMixture` that is the project's ground truth.

Prediction types, all equivalent given ``(alpha, sigma)`` and ``x = alpha x0 + sigma eps``:

- ``score = -eps / sigma``;
- ``x0 = (x - sigma eps) / alpha``;
- ``v = alpha eps - sigma x0``, inverted by ``eps = (alpha v + sigma x) / (alpha^2 + sigma^2)``
  (the denominator is 1 for VP processes; kept for VE).

:func:`convert_prediction` is the only place these formulas live.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable

import torch

from .checks import (
    InputTypeError,
    InputValueError,
    check_batch_times,
    check_choice,
    check_int,
    check_same_shape,
    check_shape,
    check_tensor,
    coefficient_dtype,
)
from .sde import ForwardProcess
from .utils import batch_times, expand_like, scalar_time

PREDICTIONS = ("eps", "x0", "v", "score")
#: Lower-precision dtypes the network may run in under ``torch.autocast`` (CPU and CUDA).
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}


def convert_prediction(value: torch.Tensor, source: str, target: str, x: torch.Tensor,
                       alpha, sigma) -> torch.Tensor:
    """Convert a prediction of kind ``source`` into kind ``target`` at state ``x``.

    ``value`` and ``x``: ``(B, ...)``; ``alpha``, ``sigma``: Python floats (one time for the
    batch: used as they are, with no tensor made for them), or tensors, scalar or ``(B,)`` (cast
    to ``x``'s dtype and broadcast). Goes through ``eps``.
    """
    check_choice("prediction", source, PREDICTIONS)
    check_choice("prediction", target, PREDICTIONS)
    if source == target:
        return value
    if isinstance(alpha, torch.Tensor) or isinstance(sigma, torch.Tensor):
        a, s = expand_like(alpha, x), expand_like(sigma, x)
    else:
        a, s = alpha, sigma
    if source == "eps":
        eps = value
    elif source == "x0":
        eps = (x - a * value) / s
    elif source == "v":
        eps = (a * value + s * x) / (a * a + s * s)
    else:  # score
        eps = -s * value
    if target == "eps":
        return eps
    if target == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if target == "x0":
        return x0
    return a * eps - s * x0  # v


class ScoreModel:
    """A network (or exact function) together with its forward process.

    ``net(x, t) -> tensor`` of ``x``'s shape, predicting ``prediction`` (``"eps"``, ``"x0"``,
    ``"v"`` or ``"score"``). ``x``: ``(B, ...)``; ``t``: a scalar or shape ``(B,)``; the network
    always receives ``t`` of shape ``(B,)`` in ``x``'s dtype.

    Every call of the network increments :attr:`nfe`, so samplers report counted, not estimated,
    network evaluations. The first call checks the output's shape and dtype against the input.

    ``autocast="bfloat16"`` runs the network under ``torch.autocast`` in bfloat16 on ``x``'s device
    (CPU included) and casts its output back to ``x``'s dtype, so the prediction conversions, the
    loss and the solvers' arithmetic stay in full precision; only the network's matrix products
    are in bfloat16 (design: "the network may run in bfloat16").
    """

    #: Longest grid whose ``(alpha, sigma)`` :meth:`remember_times` keeps.
    GRID_MEMO_TIMES = 100_000

    def __init__(self, net: Callable, sde: ForwardProcess, prediction: str = "eps",
                 autocast: str | None = None):
        if not callable(net):
            raise InputTypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(sde, ForwardProcess):
            raise InputTypeError(
                "sde must be a forward process (VPSDE, SubVPSDE, VESDE, DiscreteVPSDE), got "
                f"{type(sde).__name__}"
            )
        self.net = net
        self.sde = sde
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        if autocast is not None:
            check_choice("autocast dtype", autocast, AUTOCAST_DTYPES)
        self.autocast = autocast
        self.nfe = 0
        #: Network evaluations per sample in one forward pass: 2 under classifier-free guidance
        #: (conditional and unconditional in one batch of 2B), else 1.
        self.evaluations_per_call = 1
        self._checked = False
        #: ``(process, {time: (alpha, sigma)})`` of the last grid solved on (:meth:`remember_times`).
        self._grid_memo: tuple[ForwardProcess, dict[float, tuple[float, float]]] | None = None

    @classmethod
    def from_fn(cls, score_fn: Callable, sde: ForwardProcess, prediction: str = "score"
                ) -> ScoreModel:
        """Wrap a plain callable ``score_fn(x, t) -> score`` (or another ``prediction``)."""
        return cls(score_fn, sde, prediction=prediction)

    @classmethod
    def from_diffusers(cls, unet, scheduler, autocast: str | None = None) -> ScoreModel:
        """Wrap a diffusers ``UNet2DModel`` and its scheduler (or the scheduler's config): the
        process is the scheduler's discrete chain (:class:`~sdediff.sde.DiscreteVPSDE`), the
        prediction its ``prediction_type`` (:func:`sdediff.interop.from_diffusers`)."""
        from .interop import from_diffusers

        return from_diffusers(unet, scheduler, autocast=autocast)

    def compiled(self, **options) -> ScoreModel:
        """This model with its network through ``torch.compile(net, **options)``: the same
        predictions to float rounding, and the same weights (shared, not copied); the first calls
        at each new input shape pay the compilation. On the CPU it needs a C++ compiler."""
        if not isinstance(self.net, torch.nn.Module):
            raise InputTypeError(f"compiled() needs a torch.nn.Module network, got "
                                 f"{type(self.net).__name__}")
        return self._derived(torch.compile(self.net, **options), self.prediction)

    def _derived(self, net: Callable, prediction: str, evaluations: int = 1) -> ScoreModel:
        """A model on this one's process and autocast with another network; its forward pass
        evaluates each sample ``evaluations`` times this model's own number."""
        model = ScoreModel(net, self.sde, prediction=prediction, autocast=self.autocast)
        model.evaluations_per_call = self.evaluations_per_call * evaluations
        return model

    @property
    def num_classes(self) -> int | None:
        """The classes of a conditional network (``net(x, t, y)``), or ``None``."""
        from .guidance import network_classes

        return network_classes(self.net)

    def condition(self, y, guidance: float = 0.0) -> ScoreModel:
        """This conditional model at class ``y`` with classifier-free guidance weight ``w``.

        Prediction ``(1 + w) eps(x, t, y) - w eps(x, t, null)``, the two evaluations batched as
        one forward pass of ``2B`` (so :attr:`nfe` counts forward passes and
        :attr:`evaluations_per_call` is 2); ``w = 0`` is the conditional model alone (one pass
        of ``B``). ``y``: an int in ``0 .. num_classes - 1`` (one class for every sample), or a
        ``(B,)`` integer tensor (one per sample; every batch solved must then have ``B``
        samples). ``guidance``: finite, ``>= 0``. Every sampler, ``encode`` and
        ``interpolate`` take the result unchanged (:mod:`sdediff.guidance`).
        """
        from .checks import check_labels
        from .guidance import ClassConditioned, check_guidance, label_batch

        guidance = check_guidance(guidance)
        classes = self.num_classes
        check_labels(y, classes, label_batch(y))
        return self._derived(ClassConditioned(self.net, y, guidance, classes), self.prediction,
                             1 if guidance == 0 else 2)

    def with_labels(self, y) -> ScoreModel:
        """This conditional model at per-sample labels ``y`` ``(B,)`` in ``0 .. num_classes``,
        where ``num_classes`` is the null class (unconditional): training's label dropout."""
        from .checks import check_labels
        from .guidance import ClassConditioned, label_batch

        classes = self.num_classes
        check_labels(y, classes, label_batch(y), null=True)
        return self._derived(ClassConditioned(self.net, y, 0.0, classes, null=True), self.prediction)

    def guide(self, classifier: Callable, y, scale: float = 1.0) -> ScoreModel:
        """This model guided by a noise-conditional classifier: score
        ``score(x, t) + scale * grad_x log p_t(y | x)``.

        ``classifier(x, t) -> (B, C)`` logits of ``p_t(c | x)`` (an
        :class:`~sdediff.nets.NoisyClassifier`, or :meth:`GaussianMixture.classifier` for the
        exact one); ``y``: an int or ``(B,)`` labels in ``0 .. C - 1``; ``scale``: finite,
        ``>= 0`` (1 with the exact classifier is the exact class-conditional score). Costs one
        network call plus one classifier forward and backward per evaluation.
        """
        from .checks import InputTypeError, check_labels
        from .guidance import ClassifierGuided, check_scale, label_batch, network_classes

        if not callable(classifier):
            raise InputTypeError(f"classifier must be callable as classifier(x, t) -> logits, got "
                                 f"{type(classifier).__name__}")
        scale = check_scale(scale)
        classes = network_classes(classifier)
        if classes is not None:
            check_labels(y, classes, label_batch(y))
        return self._derived(ClassifierGuided(self, classifier, y, scale), "score")

    @property
    def device(self) -> torch.device | None:
        """Where the network's weights live (its first parameter or buffer): where samplers draw
        their prior by default; ``None`` for a plain function (no weights)."""
        if isinstance(self.net, torch.nn.Module):
            for tensor in itertools.chain(self.net.parameters(), self.net.buffers()):
                return tensor.device
        return None

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating dtype of the network's weights (its first floating parameter or buffer):
        the dtype its inputs must have; ``None`` for a plain function (any dtype)."""
        if isinstance(self.net, torch.nn.Module):
            for tensor in itertools.chain(self.net.parameters(), self.net.buffers()):
                if tensor.is_floating_point():
                    return tensor.dtype
        return None

    def predict(self, x: torch.Tensor, t, kind: str) -> torch.Tensor:
        """One network call, converted to ``kind``.

        One time for the whole batch (a number, or a sampler's 0-d ``ts[i]``; see
        :func:`~sdediff.utils.scalar_time`) is read once as a float: the network gets
        ``x.new_full((B,), t)`` (``x``'s dtype and device), and the conversion gets ``alpha`` and
        ``sigma`` as Python floats computed by the process in float64 (once per grid:
        :meth:`remember_times`), so no tensor is made for them. Per-sample ``(B,)`` times take
        the tensor path. Both give the same values to rounding (a scalar float32 time gets
        float64 coefficients, as a sampler's float64 time does).
        """
        check_tensor("x", x, finite=False)
        t_scalar = scalar_time(t)
        if t_scalar is None:
            if x.device.type == "mps" and isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                t = t.to(coefficient_dtype(x.device))       # MPS has no float64
            t = batch_times(t, x)
            check_batch_times(t, x.shape[0])
            t_net = t.to(x.dtype)
        else:
            t_net = x.new_full((x.shape[0],), t_scalar)
        if self.autocast is None:
            out = self.net(x, t_net)
        else:
            with torch.autocast(x.device.type, dtype=AUTOCAST_DTYPES[self.autocast]):
                out = self.net(x, t_net)
            if isinstance(out, torch.Tensor):
                out = out.to(x.dtype)
        self.nfe += 1
        if not self._checked:
            if not isinstance(out, torch.Tensor):
                raise InputTypeError(f"net(x, t) must return a tensor, got {type(out).__name__}")
            check_same_shape("net(x, t) output", out, x, "x")
            self._checked = True
        if kind == self.prediction:
            return out
        if t_scalar is None:
            alpha, sigma = self.sde.alpha_sigma(t)
        else:
            alpha, sigma = self._alpha_sigma(t_scalar)
        return convert_prediction(out, self.prediction, kind, x, alpha, sigma)

    def remember_times(self, ts: torch.Tensor) -> None:
        """Compute ``(alpha, sigma)`` at every time of a grid once, in one vectorised float64
        call, so that a scalar time of that grid costs a dictionary look-up in :meth:`predict`.

        One scalar time alone costs the process some 15 tiny tensor operations (the linear VP:
        two ``log_alpha``, ``exp``, ``expm1``, ``sqrt``), more than a whole ``ddim`` step of a
        near-free network (``benchmarks/bench_ddim_overhead.py``).
        :meth:`~sdediff.samplers.base.Sampler.solve` calls this with its grid before the loop.
        The memo is keyed by the time's float64 value and belongs to ``self.sde`` (it is rebuilt
        when either changes), so it cannot go stale; it holds one grid (at most
        :attr:`GRID_MEMO_TIMES` times) and a time off the grid is computed alone. A grid on an
        accelerator is not memoised (its times take the tensor path on the device, with no host
        sync); :meth:`~sdediff.samplers.base.Sampler.solve` keeps its grid on the host, so the
        memo serves every device.
        """
        times = ts.detach().to(torch.float64).flatten()
        if times.numel() > self.GRID_MEMO_TIMES or not times.is_cpu:
            return
        alpha, sigma = self.sde.alpha_sigma(times)
        self._grid_memo = (self.sde, dict(zip(times.tolist(), zip(alpha.tolist(), sigma.tolist(),
                                                                  strict=True), strict=True)))

    def _alpha_sigma(self, t: float) -> tuple[float, float]:
        """``(alpha(t), sigma(t))`` as Python floats from the process's float64 ``alpha_sigma``:
        from the memo of :meth:`remember_times` when ``t`` is on its grid."""
        memo = self._grid_memo
        if memo is not None and memo[0] is self.sde:
            hit = memo[1].get(t)
            if hit is not None:
                return hit
        alpha, sigma = self.sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        return alpha.item(), sigma.item()

    def eps(self, x, t):
        """Noise prediction ``eps(x, t)``, shape of ``x``."""
        return self.predict(x, t, "eps")

    def x0(self, x, t):
        """Data (denoiser) prediction ``x0(x, t) = E[x_0 | x_t = x]`` (Tweedie)."""
        return self.predict(x, t, "x0")

    def v(self, x, t):
        """Velocity prediction ``v = alpha eps - sigma x0``."""
        return self.predict(x, t, "v")

    def score(self, x, t):
        """Score ``grad_x log p_t(x) = -eps / sigma``."""
        return self.predict(x, t, "score")

    def __repr__(self) -> str:
        extra = "" if self.autocast is None else f", autocast={self.autocast!r}"
        return (f"ScoreModel({type(self.net).__name__}, {self.sde!r}, "
                f"prediction={self.prediction!r}{extra})")


class GaussianMixture:
    """An exact data distribution: ``sum_k w_k N(mu_k, diag(s_k^2))``, optionally labelled.

    ``means``: ``(K, *event_shape)``; ``stds``: a number, ``(K,)`` (isotropic components) or
    ``(K, *event_shape)`` (diagonal); ``weights``: ``(K,)``, positive (normalised here);
    ``labels``: ``None`` (unlabelled) or ``(K,)`` non-negative integers, the class ``l(k)`` of
    each component. Internally ``means`` and ``stds`` are kept flattened, ``(K, D)``.

    Under a forward process the noised marginal is again a mixture,
    ``p_t = sum_k w_k N(alpha mu_k, alpha^2 s_k^2 + sigma^2)``, whose score is
    ``sum_k r_k(x) (alpha mu_k - x) / var_k`` with responsibilities ``r_k``; this gives the exact
    score of every marginal in closed form.

    With labels, class ``c`` owns the components ``C_c = {k : l(k) = c}`` and the mixture is the
    joint law of ``(x, c)`` with prior ``p(c) = sum_{k in C_c} w_k``. That gives, exactly and at
    every ``t``, the classifier ``p_t(c | x)`` (:meth:`class_log_prob`), the class-conditional
    law (:meth:`class_mixture`) and its score (:meth:`class_score`, :meth:`class_score_model`).
    :meth:`posterior` and :meth:`sample_posterior` give the exact law of the missing coordinates
    given observed ones (the inpainting oracle). Formulas: the controllable-generation reference,
    sections 6.2 and 6.3.
    """

    def __init__(self, means, stds, weights=None, labels=None):
        means = torch.as_tensor(means)
        check_tensor("means", means)
        if means.dim() < 2:
            raise InputValueError(f"means must have shape (K, *event_shape), got {tuple(means.shape)}")
        K = means.shape[0]
        self.event_shape = tuple(means.shape[1:])
        self.means = means.reshape(K, -1)
        stds = torch.as_tensor(stds, dtype=means.dtype)
        if stds.dim() == 0:
            stds = stds.expand(K)
        if stds.shape == (K,):
            stds = stds[:, None].expand_as(self.means)
        elif tuple(stds.shape) == tuple(means.shape):
            stds = stds.reshape(K, -1)
        else:
            raise InputValueError(f"stds has shape {tuple(stds.shape)}; expected a number, ({K},) or "
                                  f"{tuple(means.shape)}")
        if not bool((stds > 0).all()):
            raise InputValueError("stds must all be > 0")
        self.stds = stds.clone()
        weights = torch.ones(K, dtype=means.dtype) if weights is None else torch.as_tensor(
            weights, dtype=means.dtype)
        if weights.shape != (K,) or not bool((weights > 0).all()):
            raise InputValueError(f"weights must be {K} positive numbers, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        #: ``(K,)`` int64 class of each component, or ``None``.
        self.labels = None if labels is None else self._checked_labels(labels, K).to(means.device)

    @staticmethod
    def _checked_labels(labels, K: int) -> torch.Tensor:
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputTypeError(f"labels must be {K} non-negative integers (component -> class), "
                                 f"got {labels!r}") from err
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InputTypeError(f"labels must be integers (component -> class), got dtype {labels.dtype}: "
                                 f"{labels.tolist()}")
        if tuple(labels.shape) != (K,):
            raise InputValueError(f"labels has shape {tuple(labels.shape)}, expected ({K},): one class "
                                  "per component")
        if bool((labels < 0).any()):
            k = int((labels < 0).nonzero()[0])
            raise InputValueError(f"labels must be >= 0, got {int(labels[k])} for component {k}")
        return labels.to(torch.long).clone()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int | None:
        """``max(labels) + 1``, or ``None`` for an unlabelled mixture. A class below it may own
        no component (a sub-mixture keeps its labels): its probability is 0."""
        return None if self.labels is None else int(self.labels.max()) + 1

    @property
    def mean(self) -> torch.Tensor:
        """``E[x] = sum_k w_k mu_k``, shape ``event_shape``."""
        return (self.weights @ self.means).reshape(self.event_shape)

    @property
    def covariance(self) -> torch.Tensor:
        """``Cov[x] = sum_k w_k (diag(s_k^2) + (mu_k - m)(mu_k - m)^T)``, shape ``(D, D)`` over the
        flattened coordinates (law of total covariance; centred, so no cancellation)."""
        centred = self.means - self.weights @ self.means
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return between + torch.diag(self.weights @ self.stds**2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, shape ``(n, *event_shape)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim), generator=generator, dtype=self.means.dtype)
        return (self.means[k] + self.stds[k] * noise).reshape((n,) + self.event_shape)

    def _components(self, x: torch.Tensor, sde: ForwardProcess | None, t):
        """Flattened ``x`` ``(B, D)``, component means ``(B|1, K, D)`` and variances."""
        flat = x.reshape(x.shape[0], -1)
        means = self.means.to(flat)
        var = self.stds.to(flat) ** 2
        if sde is None:
            return flat, means[None], var[None]
        alpha, sigma = sde.alpha_sigma(batch_times(t, x))
        alpha = alpha.to(flat)[:, None, None]
        sigma = sigma.to(flat)[:, None, None]
        return flat, alpha * means[None], alpha**2 * var[None] + sigma**2

    def _log_joint(self, flat, means, var):
        """``log w_k + log N(x; mean_k, var_k)``, shape ``(B, K)``."""
        diff = flat[:, None, :] - means
        log_normal = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights.to(flat)) + log_normal

    @staticmethod
    def _score_from(x, flat, means, var, log_joint):
        """``sum_k r_k (mean_k - x) / var_k`` with ``r = softmax(log_joint)``, shape of ``x``.
        Components masked to ``-inf`` in ``log_joint`` get ``r_k = 0``."""
        resp = torch.softmax(log_joint, dim=1)
        grad = ((means - flat[:, None, :]) / var * resp[..., None]).sum(1)
        return grad.reshape(x.shape)

    def log_prob(self, x: torch.Tensor, sde: ForwardProcess | None = None, t=None) -> torch.Tensor:
        """``log p(x)`` per sample, shape ``(B,)``; with ``sde`` and ``t``, of the marginal ``p_t``."""
        flat, means, var = self._components(x, sde, t)
        return torch.logsumexp(self._log_joint(flat, means, var), dim=1)

    def score(self, x: torch.Tensor, t, sde: ForwardProcess) -> torch.Tensor:
        """Exact ``grad_x log p_t(x)``, shape of ``x``."""
        flat, means, var = self._components(x, sde, t)
        return self._score_from(x, flat, means, var, self._log_joint(flat, means, var))

    def score_model(self, sde: ForwardProcess) -> ScoreModel:
        """A :class:`ScoreModel` with the exact score of every noised marginal of this mixture."""
        return ScoreModel.from_fn(lambda x, t: self.score(x, t, sde), sde)

    # -- labelled mixtures: exact classifier and class-conditional laws (reference 6.3) ----------

    def _class_members(self, y, batch: int, nonempty: bool) -> torch.Tensor:
        """``(B|1, K)`` bool, ``[b, k] = (l(k) == y_b)``, for ``y`` an int or a ``(B,)`` integer
        tensor. With ``nonempty``, a class that owns no component is refused (its conditional law
        does not exist); without, it is allowed (its probability is exactly 0)."""
        if self.labels is None:
            raise InputValueError(f"y={y!r} given, but this mixture has no labels (labels=None); pass "
                                  "labels= to GaussianMixture to use its classes")
        C = self.num_classes
        if isinstance(y, torch.Tensor):
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise InputTypeError(f"y must be an int or a tensor of integer class labels, got dtype "
                                     f"{y.dtype}")
            if y.dim() > 1 or (y.dim() == 1 and y.shape[0] != batch):
                raise InputValueError(f"y has shape {tuple(y.shape)}; expected an int, a 0-d tensor or "
                                      f"shape ({batch},) for a batch of {batch}")
            ys = y.reshape(-1).to(self.labels.device)
        elif isinstance(y, numbers.Integral) and not isinstance(y, bool):
            ys = torch.tensor([int(y)], device=self.labels.device)
        else:
            raise InputTypeError(f"y must be an int or a tensor of integer class labels, got {y!r} "
                                 f"({type(y).__name__})")
        out_of_range = (ys < 0) | (ys >= C)
        if bool(out_of_range.any()):
            bad = int(ys[out_of_range][0])
            raise InputValueError(f"class y={bad} is out of range; allowed: 0..{C - 1} "
                                  f"(num_classes={C})")
        members = self.labels[None, :] == ys[:, None]
        if nonempty and not bool(members.any(1).all()):
            bad = int(ys[~members.any(1)][0])
            owned = sorted(set(self.labels.tolist()))
            raise InputValueError(f"class y={bad} owns no component of this mixture; classes with "
                                  f"components: {', '.join(map(str, owned))}")
        return members

    def class_mixture(self, y: int) -> GaussianMixture:
        """The class-conditional law ``p_0(x | y)``: the components of class ``y`` with weights
        ``w_k / sum_{j in C_y} w_j``, labels kept (all equal to ``y``). ``y``: an int in
        ``0..num_classes - 1`` whose class owns at least one component."""
        members = self._class_members(y, 1, nonempty=True)[0]
        stds = self.stds[members].reshape((-1,) + self.event_shape)
        return GaussianMixture(self.means[members].reshape((-1,) + self.event_shape), stds,
                               self.weights[members], labels=self.labels[members])

    def class_log_prob(self, y, x: torch.Tensor, sde: ForwardProcess | None = None, t=None
                       ) -> torch.Tensor:
        """The exact classifier ``log p_t(y | x)``, shape ``(B,)``.

        ``log p_t(y | x) = logsumexp_{k in C_y} [log w_k + log N_k^t(x)]
        - logsumexp_k [log w_k + log N_k^t(x)]`` with the noised components
        ``N_k^t = N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))``; without ``sde`` and ``t``, at
        ``t = 0`` (``N_k^0 = N(mu_k, diag(s_k^2))``). ``x``: ``(B, *event_shape)``; ``y``: an int
        (one class for the batch) or a ``(B,)`` integer tensor (one per sample). A class in range
        that owns no component has probability 0: ``-inf``. Differentiable in ``x``, and
        ``grad_x log p_t(y | x) = class_score - score`` (Bayes).
        """
        if (sde is None) != (t is None):
            raise InputValueError("give both sde and t (the noised marginal p_t) or neither (t = 0); got "
                                  f"sde={sde!r}, t={t!r}")
        flat, means, var = self._components(x, sde, t)
        log_joint = self._log_joint(flat, means, var)
        members = self._class_members(y, flat.shape[0], nonempty=False).to(flat.device)
        log_class = torch.logsumexp(log_joint.masked_fill(~members, -math.inf), dim=1)
        return log_class - torch.logsumexp(log_joint, dim=1)

    def class_log_probs(self, x: torch.Tensor, sde: ForwardProcess | None = None, t=None
                        ) -> torch.Tensor:
        """The exact ``log p_t(c | x)`` of every class, shape ``(B, num_classes)`` (``-inf`` for a
        class that owns no component): :meth:`class_log_prob` for ``c = 0 .. num_classes - 1``."""
        return torch.stack([self.class_log_prob(c, x, sde, t) for c in range(self.num_classes)], 1)

    def classifier(self, sde: ForwardProcess) -> Callable:
        """The exact noise-conditional classifier ``(x, t) -> log p_t(c | x)`` ``(B, num_classes)``,
        as :meth:`ScoreModel.guide` takes it (log-probabilities are valid logits): at scale 1 the
        guided score is exactly :meth:`class_score`."""
        if self.labels is None:
            raise InputValueError("this mixture has no labels (labels=None), so no classifier; pass "
                                  "labels= to GaussianMixture")

        def log_probs(x, t):
            return self.class_log_probs(x, sde, t)

        log_probs.num_classes = self.num_classes
        return log_probs

    def class_score(self, y, x: torch.Tensor, t, sde: ForwardProcess) -> torch.Tensor:
        """Exact class-conditional score ``grad_x log p_t(x | y)``, shape of ``x``.

        ``sum_{k in C_y} r_k^y(x) (alpha mu_k - x) / (alpha^2 s_k^2 + sigma^2)`` with the
        within-class responsibilities ``r_k^y = w_k N_k^t(x) / sum_{j in C_y} w_j N_j^t(x)``: the
        score of :meth:`class_mixture` ``(y)``, computed here by masking the other classes' terms so
        that ``y`` may also be a ``(B,)`` tensor of per-sample labels.
        """
        flat, means, var = self._components(x, sde, t)
        members = self._class_members(y, flat.shape[0], nonempty=True).to(flat.device)
        log_joint = self._log_joint(flat, means, var).masked_fill(~members, -math.inf)
        return self._score_from(x, flat, means, var, log_joint)

    def class_score_model(self, y, sde: ForwardProcess) -> ScoreModel:
        """A :class:`ScoreModel` with the exact score of every noised class-conditional marginal
        ``p_t(x | y)``: sampling it samples :meth:`class_mixture` ``(y)`` exactly (up to the
        solver). ``y``: an int, or a ``(B,)`` integer tensor of per-sample labels, in which case
        every batch the model sees must have ``B`` samples, in the order of ``y``."""
        batch = y.shape[0] if isinstance(y, torch.Tensor) and y.dim() == 1 else 1
        self._class_members(y, batch, nonempty=True)        # refuse a bad y now, not mid-solve
        return ScoreModel.from_fn(lambda x, t: self.class_score(y, x, t, sde), sde)

    # -- posterior given observed coordinates (reference 6.2) ------------------------------------

    def _observed(self, x_known, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened ``x_known`` ``(D,)`` in this mixture's dtype and the observed mask ``(D,)`` bool,
        after checking both."""
        check_tensor("x_known", x_known, finite=False)
        check_shape("x_known", x_known, self.event_shape)
        if not isinstance(mask, torch.Tensor):
            raise InputTypeError(f"mask must be a torch.Tensor of 0/1 (1 = observed) of shape "
                                 f"{self.event_shape}, got {type(mask).__name__}")
        check_shape("mask", mask, self.event_shape)
        if not bool(((mask == 0) | (mask == 1)).all()):
            bad = ", ".join(str(v) for v in mask[(mask != 0) & (mask != 1)].unique().tolist()[:5])
            raise InputValueError(f"mask must hold only 0 and 1 (1 = observed), got {bad}")
        observed = mask.reshape(-1).to(device=self.means.device) == 1
        if not bool(observed.any()):
            raise InputValueError("mask observes no coordinate (all 0): the posterior is the prior itself; "
                                  "observe at least one coordinate")
        if bool(observed.all()):
            raise InputValueError("mask observes every coordinate (all 1): the posterior is the point mass "
                                  "at x_known; leave at least one coordinate unobserved")
        x_flat = x_known.reshape(-1).to(self.means)
        if not bool(torch.isfinite(x_flat[observed]).all()):
            bad = int((~torch.isfinite(x_flat[observed])).sum())
            raise InputValueError(f"x_known has {bad} non-finite observed value(s) (NaN or inf); observed "
                                  "values must be finite (unobserved ones are ignored)")
        return x_flat, observed

    def posterior(self, x_known: torch.Tensor, mask: torch.Tensor) -> GaussianMixture:
        """The exact law of the unobserved coordinates given the observed ones, as a mixture.

        ``x_known``, ``mask``: shape ``event_shape``; ``mask`` is 0/1 (or bool), 1 = observed.
        With diagonal components ``x^U`` and ``x^O`` are independent within a component, so
        conditioning on ``x^O = y`` keeps each component's ``N(mu_k^U, diag(s_k^{U2}))`` and
        reweights it by its marginal likelihood of the observation,

            w'_k = w_k N(y; mu_k^O, diag(s_k^{O2})) / sum_j w_j N(y; mu_j^O, diag(s_j^{O2})),

        computed in log space (logsumexp). The result is a mixture over the ``U`` unobserved
        coordinates only: event shape ``(U,)``, in the order of the flattened event
        (``x.reshape(-1)[~mask.reshape(-1)]``); its :attr:`mean` and :attr:`covariance` are the
        posterior mean ``sum_k w'_k mu_k^U`` and covariance of ``x^U``, and its labels (if any) are
        kept, so its class weights are ``p(c | x^O = y)``. A component whose ``w'_k`` underflows to
        0 carries no mass at the mixture's precision and is dropped. For full vectors (the observed
        block pinned to ``x_known`` exactly), use :meth:`sample_posterior`. The unobserved entries
        of ``x_known`` are ignored (they may be NaN).
        """
        x_flat, observed = self._observed(x_known, mask)
        # The observed block's log marginal likelihood per component, with its weight: (1, K).
        log_joint = self._log_joint(x_flat[observed][None], self.means[:, observed][None],
                                    self.stds[:, observed][None] ** 2)
        weights = torch.softmax(log_joint[0], dim=0)
        keep = weights > 0
        hidden = ~observed
        return GaussianMixture(self.means[keep][:, hidden], self.stds[keep][:, hidden], weights[keep],
                               labels=None if self.labels is None else self.labels[keep])

    def sample_posterior(self, x_known: torch.Tensor, mask: torch.Tensor, n: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples of the full vector given the observed coordinates, shape
        ``(n, *event_shape)`` in this mixture's dtype: the unobserved block drawn from
        :meth:`posterior`, the observed block equal to ``x_known`` exactly."""
        check_int("n", n, minimum=1)
        x_flat, observed = self._observed(x_known, mask)
        out = x_flat.expand(n, -1).clone()
        out[:, ~observed] = self.posterior(x_known, mask).sample(n, generator)
        return out.reshape((n,) + self.event_shape)
