"""Training by denoising score matching: :class:`Trainer`.

The same loop trains a noise-conditional classifier (:class:`~sdediff.nets.NoisyClassifier`, for
classifier guidance) by cross-entropy on ``x_t`` from the same process
(:func:`~sdediff.losses.classifier_loss`): the objective follows the network, and everything
below -- checkpoints, EMA, exact resume, DDP, non-finite handling -- holds for both.

AdamW with linear learning-rate warm-up, gradient-norm clipping, EMA weights (with score_sde's
warm-up ``decay_n = min(decay, (1 + n) / (10 + n))``), a tqdm bar with the running loss, a CSV loss
log and a loss-curve PNG, and atomic checkpoints (:mod:`sdediff.checkpoint`).

Exact resume. All randomness of step ``n`` (batch indices, times, noise, dropout) comes from
generators seeded with ``(seed, n, shard)`` inside :func:`torch.random.fork_rng` (a shard is a
fixed part of the step's global batch, see below), so the random stream is a function of the step
and the global RNG is left untouched. With the model, EMA and optimizer states restored, training
``2N`` steps equals ``N`` steps, resume, ``N`` steps, bit for bit.

Non-finite losses and gradients. ``on_nonfinite="stop"`` (default) raises
:class:`~sdediff.checks.NumericalError` before the bad step touches the weights; nothing is saved,
so the newest checkpoint is the last good state. ``"skip"`` drops the step instead (no update, no
EMA update, the step counter advances so the next step draws new data) and stops only after
``max_skips`` consecutive bad steps; skipped steps are listed in ``Trainer.skipped``. Skipping is
a function of the step's data and the weights, so resume stays exact.

Mixed precision. ``autocast="bfloat16"`` runs the network's forward (and so its backward) under
``torch.autocast`` in bfloat16, on CPU as on GPU; weights, optimizer state, EMA and loss stay
float32 (see :class:`~sdediff.score.ScoreModel`).

Distributed. When ``torch.distributed`` is initialised (``torchrun``, see ``docs/scale.md``), the
network is wrapped in ``DistributedDataParallel`` and only rank 0 writes checkpoints, logs and the
progress bar; see :class:`Trainer` for how the global batch is split so that ``W`` ranks train
exactly what one process would.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import (
    OPTIMIZER_FILE,
    WEIGHT_FILES,
    load_optimizer_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from .checks import InputValueError, check_batch, check_choice, check_finite_value, check_float, check_int
from .losses import LOGITS, WEIGHTINGS, classifier_loss, dsm_loss
from .score import AUTOCAST_DTYPES, PREDICTIONS, ScoreModel

LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
#: Decay of the running loss shown by the progress bar and returned by fit().
RUNNING_DECAY = 0.98
#: What a non-finite loss or gradient norm does: raise, or drop the step.
NONFINITE_POLICIES = ("stop", "skip")
# Large odd multipliers keep the per-step seeds of different (seed, step, rank) apart.
_SEED_STRIDE_STEP = 1_000_003
_SEED_STRIDE_RANK = 7_919


@dataclass
class TrainConfig:
    """Options of a training run (all saved in the checkpoint config)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "eps"
    checkpoint_every: int = 500
    seed: int = 0
    on_nonfinite: str = "stop"
    max_skips: int = 10
    autocast: str | None = None
    micro_batches: int = 1
    #: Probability that an example's label is replaced by the null class (conditional runs only).
    label_dropout: float = 0.1

    def __post_init__(self):
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_float("lr", self.lr, 0.0, None, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0, None)
        check_int("warmup", self.warmup, minimum=0)
        check_float("grad_clip", self.grad_clip, 0.0, None, low_open=True)
        check_float("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_choice("on_nonfinite policy", self.on_nonfinite, NONFINITE_POLICIES)
        check_int("max_skips", self.max_skips, minimum=1)
        check_int("micro_batches", self.micro_batches, minimum=1)
        check_float("label_dropout", self.label_dropout, 0.0, 1.0)
        if self.batch_size % self.micro_batches:
            raise InputValueError(f"batch_size {self.batch_size} does not split into micro_batches="
                                  f"{self.micro_batches} equal parts; allowed: a batch_size that is a "
                                  f"multiple of {self.micro_batches}, or fewer micro-batches")
        if self.autocast is not None:
            check_choice("autocast dtype", self.autocast, AUTOCAST_DTYPES)


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Train ``net`` (predicting ``prediction``) on ``data`` ``(N, ...)`` under process ``sde``.

    Objective. A score network (``prediction`` one of ``eps``, ``x0``, ``v``, ``score``; default
    ``eps``) is trained by denoising score matching (:func:`~sdediff.losses.dsm_loss`, with
    ``config.weighting``). A :class:`~sdediff.nets.NoisyClassifier` (``prediction`` ``"logits"``,
    its default and only allowed value) is trained by cross-entropy on ``x_t`` drawn from the same
    process with ``t ~ U(t_min, T)`` (:func:`~sdediff.losses.classifier_loss`); it needs
    ``labels``, and ``weighting`` and ``label_dropout`` do not apply to it. The checkpoint
    records the prediction, so :func:`~sdediff.checkpoint.load_model` and
    :func:`~sdediff.checkpoint.load_classifier` each refuse the other kind.

    ``labels`` ``(N,)`` (a conditional network, ``net.num_classes`` set): each example's class,
    dropped to the null class with probability ``config.label_dropout`` (classifier-free
    guidance training, :func:`~sdediff.losses.dsm_loss`); for a classifier, the targets.
    ``meta`` is stored in the checkpoint config (for instance the data description);
    ``out_dir`` receives checkpoints, ``loss.csv`` and ``loss.png``. ``compile=True`` runs the
    forward passes through ``torch.compile`` (:meth:`ScoreModel.compiled
    <sdediff.score.ScoreModel.compiled>`); it changes speed, not the run (not saved).

    Batches, shards and world size. ``config.batch_size`` ``b`` is the batch of one process; with
    ``W`` processes (``torchrun``) a step trains on a global batch of ``W * b`` examples. Each
    process cuts its batch into ``m = config.micro_batches`` equal parts (forward and backward one
    part at a time: gradient accumulation), so the global batch is ``S = W * m`` *shards* of
    ``b / m`` examples, shard ``k = rank * m + j`` for part ``j``. Everything random about shard
    ``k`` at step ``n`` -- which examples (drawn uniformly with replacement from all of ``data``,
    which every rank holds), their times ``t``, their noise, dropout -- comes from generators
    seeded with ``(seed, n, k)``: a shard is drawn the same way whichever process draws it. The
    loss of a shard is its mean; each part is back-propagated with weight ``1 / m`` and DDP
    averages the gradients over the ``W`` ranks, so every rank holds the gradient of the mean
    loss over the global batch (identical on all ranks, hence the same gradient clipping, AdamW
    step and EMA), and the logged loss is that mean too (all-reduced). Hence a run depends on
    ``S`` and the shard size, not on how the shards are spread over processes: ``W`` ranks with
    batch ``b`` train what one process with ``batch_size = W * b`` and ``micro_batches = W``
    trains, to float rounding (tested: ``tests/test_distributed.py``). The default
    ``W = m = 1`` is the single shard ``k = 0``, the layout of a plain run.

    Non-finite values across ranks. The loss of each part is all-reduced before its backward, so
    a nan or inf on one rank is seen by every rank, and all of them stop (or skip the step)
    together; the gradient norm is computed after DDP's all-reduce, so it is the same on every
    rank. No rank is left waiting in a collective that another rank skipped.
    """

    def __init__(self, net: torch.nn.Module, sde, data: torch.Tensor, out_dir,
                 config: TrainConfig | None = None, prediction: str | None = None,
                 meta: dict | None = None, progress: bool = True, device=None,
                 compile: bool = False, labels: torch.Tensor | None = None):
        self.config = config or TrainConfig()
        self.prediction = self._checked_prediction(net, prediction)
        self.rank, self.world_size = _dist_rank_world()
        from .checks import check_device

        self.device = torch.device("cpu") if device is None else check_device(device)
        self.net = net.to(self.device)
        train_net = self._ddp = None
        if self.world_size > 1:
            # Before the EMA copy: DDP's constructor broadcasts rank 0's weights to every rank.
            index = self.device.index if self.device.type == "cuda" else None
            train_net = self._ddp = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=None if index is None else [index])
        self.ema_net = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.sde = sde
        self.data = check_batch("data", data)
        self.labels = self._checked_labels(labels, net)
        self.out_dir = Path(out_dir)
        self.meta = meta or {}
        self.progress = progress and self.rank == 0
        self.step = 0
        self.skipped: list[int] = []
        self._consecutive_skips = 0
        if self.prediction == LOGITS:   # a classifier: logits, not a score (no ScoreModel)
            self.model = None
            self._classifier = train_net or self.net
            if compile:
                self._classifier = torch.compile(self._classifier)
        else:
            self.model = ScoreModel(train_net or self.net, sde, prediction=self.prediction,
                                    autocast=self.config.autocast)
            if compile:    # the forward passes only: weights, EMA and checkpoints are self.net's
                self.model = self.model.compiled()
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)

    @staticmethod
    def _checked_prediction(net, prediction: str | None) -> str:
        """``prediction``, defaulting by the network (``logits`` for a classifier, else ``eps``); a
        classifier trained as a score network, or the reverse, is refused."""
        from .nets.classifier import is_classifier  # networks only when a model is trained

        classifier = is_classifier(net)
        if prediction is None:
            return LOGITS if classifier else "eps"
        if classifier and prediction != LOGITS:
            raise InputValueError(f"prediction {prediction!r} given for a NoisyClassifier, which "
                                  f"predicts class logits; allowed: {LOGITS!r} (or leave it out)")
        if not classifier and prediction == LOGITS:
            raise InputValueError(f"prediction {LOGITS!r} is for a NoisyClassifier, and the network "
                                  f"is a {type(net).__name__}; allowed: {', '.join(PREDICTIONS)}")
        return check_choice("prediction", prediction, (*PREDICTIONS, LOGITS))

    def _checked_labels(self, labels, net) -> torch.Tensor | None:
        """A conditional network or a classifier needs one label per example; an unconditional
        score network takes none."""
        from .checks import check_labels
        from .guidance import network_classes

        classes = network_classes(net)
        if labels is None:
            if self.prediction == LOGITS:
                raise InputValueError(f"the network is a classifier (num_classes={classes}) and needs "
                                      "labels; pass labels= (one class per example)")
            if classes is not None:
                raise InputValueError(f"the network is conditional (num_classes={classes}) but no labels "
                                      "were given; pass labels= (one class per example)")
            return None
        return check_labels(labels, classes, len(self.data), what="labels")

    # --- state ------------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        return {"net": self.net.config, "sde": self.sde.config(), "prediction": self.prediction,
                "data": self.meta, "train": asdict(self.config), "world_size": self.world_size}

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank waits for it)."""
        folder = None
        if self.rank == 0:
            folder = save_checkpoint(self.out_dir, self.step, self.net, self.ema_net,
                                     self.optimizer, self.checkpoint_config())
            self._plot_loss()
        if self.world_size > 1:
            dist.barrier()
        return folder

    def resume(self, path=None) -> int:
        """Restore model, EMA, optimizer and step from ``path`` (default: this run's newest)."""
        folder = resolve_checkpoint(path or self.out_dir)
        config = read_config(folder)
        load_weights(self.net, folder / WEIGHT_FILES[0], config)
        load_weights(self.ema_net, folder / WEIGHT_FILES[1], config)
        state = load_optimizer_state(folder / OPTIMIZER_FILE, config, map_location=self.device)
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise InputValueError(f"optimizer state in {str(folder / OPTIMIZER_FILE)!r} does not fit "
                                  f"the network described by the config ({err})") from err
        self.step = int(config["step"])
        if self.rank == 0:
            self._truncate_log(self.step)
        return self.step

    # --- one step ---------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup`` steps, then constant."""
        warmup = self.config.warmup
        return self.config.lr * min(1.0, (step + 1) / warmup) if warmup else self.config.lr

    def ema_decay_at(self, step: int) -> float:
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def _step_seed(self, step: int, shard: int) -> int:
        return (self.config.seed * _SEED_STRIDE_STEP + step) * _SEED_STRIDE_RANK + shard

    def _mean_over_ranks(self, loss: torch.Tensor) -> float:
        """The mean of ``loss`` over the ranks (all-reduced; this process's value when alone). It
        is non-finite everywhere once it is on one rank, so every rank takes the same branch."""
        value = loss.detach().to(torch.float64).reshape(1)
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            return float(value) / self.world_size
        return float(value)

    def _nonfinite(self, what: str, value: float) -> None:
        """Apply ``on_nonfinite`` to a non-finite ``value``: raise, or record a skipped step."""
        advice = ("lower --lr or raise the warm-up; nothing of this step was applied and the last "
                  "good checkpoint is kept")
        if self.config.on_nonfinite == "stop":
            check_finite_value(f"{what} at step {self.step}", value,
                               f"{advice} (or train with on_nonfinite='skip')")
        self._consecutive_skips += 1
        self.skipped.append(self.step)
        if self._consecutive_skips >= self.config.max_skips:
            check_finite_value(f"{what} at step {self.step}", value,
                               f"{self._consecutive_skips} consecutive steps were skipped "
                               f"(max_skips={self.config.max_skips}); {advice}")

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None,
             generator: torch.Generator) -> torch.Tensor:
        """The training objective on one shard: denoising score matching, or a classifier's
        cross-entropy (see :class:`Trainer`), its draws from ``generator``."""
        cfg = self.config
        if self.model is not None:
            return dsm_loss(self.model, x0, weighting=cfg.weighting, generator=generator,
                            labels=labels, label_dropout=cfg.label_dropout)
        with contextlib.nullcontext() if cfg.autocast is None else torch.autocast(
                x0.device.type, dtype=AUTOCAST_DTYPES[cfg.autocast]):
            return classifier_loss(self._classifier, self.sde, x0, labels, generator=generator)

    def train_step(self) -> float:
        """One optimisation step at ``self.step``; returns the loss (mean over the global batch).

        A non-finite loss or gradient norm is handled by ``config.on_nonfinite`` before the
        optimizer or the EMA see it (see the module docstring); every rank decides alike.
        """
        cfg = self.config
        parts = cfg.micro_batches
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total, good = 0.0, True
        with torch.random.fork_rng(devices=[]):
            for part in range(parts):
                seed = self._step_seed(self.step, self.rank * parts + part)
                generator = torch.Generator(device=self.device).manual_seed(seed)
                torch.manual_seed(seed)  # dropout draws from the global RNG
                # DDP all-reduces the gradients in the backward of the last part only.
                last = self._ddp is None or part == parts - 1
                with contextlib.nullcontext() if last else self._ddp.no_sync():
                    idx = torch.randint(len(self.data), (cfg.batch_size // parts,),
                                        generator=generator, device=self.device)
                    x0 = self.data[idx.to(self.data.device)].to(self.device)
                    labels = None if self.labels is None else self.labels[idx.to(self.labels.device)]
                    loss = self.loss(x0, labels, generator)
                    value = self._mean_over_ranks(loss)
                    if not math.isfinite(value):  # on every rank alike: none runs the backward
                        good = False
                        break
                    (loss / parts).backward()
                total += value
            if not good:
                self.optimizer.zero_grad(set_to_none=True)
                self._nonfinite("training loss", value)
            else:
                value = total / parts
                # After DDP's all-reduce: the same gradients, so the same norm, on every rank.
                norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip))
                good = math.isfinite(norm)
                if not good:  # an overflow in backward; clipping would spread it to every weight
                    self.optimizer.zero_grad(set_to_none=True)
                    self._nonfinite("gradient norm", norm)
                else:
                    self.optimizer.step()
        if not good:  # skipped: no update, no EMA update; the next step draws new data
            self.step += 1
            return value
        self._consecutive_skips = 0
        decay = self.ema_decay_at(self.step)
        with torch.no_grad():
            for ema_p, p in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
                ema_p.lerp_(p, 1.0 - decay)
            for ema_b, b in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
                ema_b.copy_(b)
        self.step += 1
        return value

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, steps: int | None = None) -> dict:
        """Train until ``steps`` (default ``config.steps``) total steps; checkpoint every
        ``checkpoint_every`` steps and at the end. Returns throughput figures."""
        total = check_int("steps", steps if steps is not None else self.config.steps, minimum=0)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Rows past the current step were written by a run killed before its next
            # checkpoint (also when it died before the first one and this is a fresh start).
            self._truncate_log(self.step)
        log = self._open_log() if self.rank == 0 else None
        bar = tqdm(total=total, initial=self.step, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        start, first_step = time.perf_counter(), self.step
        running, ema_sum, ema_weight = None, 0.0, 0.0
        try:
            while self.step < total:
                loss = self.train_step()
                skipped = bool(self.skipped) and self.skipped[-1] == self.step - 1
                if not skipped:  # a skipped step is logged (as nan/inf), not averaged
                    # bias-corrected EMA (Adam-style): short runs show the current loss, not step 1's
                    ema_sum = RUNNING_DECAY * ema_sum + (1 - RUNNING_DECAY) * loss
                    ema_weight = RUNNING_DECAY * ema_weight + (1 - RUNNING_DECAY)
                    running = ema_sum / ema_weight
                    bar.set_postfix(loss=f"{running:.4f}")
                if log is not None:
                    log.writerow([self.step, f"{loss:.6g}", f"{self.lr_at(self.step - 1):.6g}",
                                  f"{time.perf_counter() - start:.3f}"])
                bar.update(1)
                if self.step % self.config.checkpoint_every == 0 or self.step == total:
                    if log is not None:
                        self._log_file.flush()
                    self.save()
        finally:
            bar.close()
            if log is not None:
                self._log_file.close()
        seconds = time.perf_counter() - start
        done = self.step - first_step
        return {"steps": done, "seconds": seconds,
                "examples_per_second": done * self.config.batch_size * self.world_size
                / max(seconds, 1e-9), "final_loss": running}

    # --- loss log ---------------------------------------------------------------------------
    def _open_log(self):
        path = self.out_dir / LOSS_CSV
        fresh = not path.exists()
        self._log_file = open(path, "a", newline="")
        writer = csv.writer(self._log_file)
        if fresh:
            writer.writerow(["step", "loss", "lr", "seconds"])
        return writer

    def _truncate_log(self, step: int) -> None:
        """Drop log rows past the resumed step (written after the checkpoint, before a crash)."""
        path = self.out_dir / LOSS_CSV
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(kept)

    def _plot_loss(self) -> None:
        from .plotting import plot_loss_curve

        path = self.out_dir / LOSS_CSV
        if path.exists():
            plot_loss_curve(path, self.out_dir / LOSS_PNG)


def train_config_from(mapping: dict) -> TrainConfig:
    """A :class:`TrainConfig` from a dict, refusing unknown keys by name."""
    from .checks import check_options

    check_options("training", mapping, [f.name for f in fields(TrainConfig)])
    return TrainConfig(**mapping)

