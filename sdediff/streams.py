"""Per-sample random streams: every draw for sample ``i`` depends only on ``(seed, i)``.

A ``torch.Generator`` hands out numbers in order, so sample ``i`` of a batch depends on the batch
size, on the samples before it and on the order in which batches run. :class:`SampleSeeds` is
counter-based instead (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"): the
``j``-th number of stream ``s`` of sample ``i`` is a hash of ``(seed, i, s, j)``, computed for a
whole batch at once on the tensors' device. So a batch of 1, of 7 or of 64, any split across
processes and any order of batches give sample ``i`` the same prior draw, the same Brownian path
(:class:`~sdediff.samplers.noise.SampleBrownian`), the same Hutchinson probes and the same
dequantization noise.

The hash is the SplitMix64 finaliser (Steele, Lea & Flood 2014, "Fast splittable pseudorandom
number generators"), a bijection of 64-bit words; it runs on int64 tensors with wrap-around
multiplication, and ``tests/test_streams.py`` checks it bit for bit against numpy's ``uint64``
arithmetic. Uniforms take the top 53 bits; normals are ``ndtri`` of a uniform (inverse CDF, in
float64; float32 and 24 bits where the device has no float64).

:func:`normal`, :func:`uniform` and :func:`rademacher` are the one place where a draw is made
from either kind of source: a ``torch.Generator`` (or ``None``), as ``torch.randn`` would, or a
:class:`SampleSeeds`.
"""

from __future__ import annotations

import math

import torch

from .checks import InputTypeError, check_int, coefficient_dtype

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit word as the int64 that holds its bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _signed(0x9E3779B97F4A7C15)    # SplitMix64's increment (the golden ratio)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)

# Streams: one per kind of draw, so that no two kinds share numbers.
PRIOR = 1
DEQUANTIZE = 2
PROBES = 3
#: Brownian tree nodes take streams ``BROWNIAN + node`` (node ids below ``2**28``).
BROWNIAN = 1 << 28
#: Corrector normals take streams ``CORRECTOR + step * 256 + k`` (``k < 256``).
CORRECTOR = 1 << 40


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 words (``>>`` on int64 is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser of int64 words (bits as uint64), elementwise."""
    z = (z ^ _shift_right(z, 30)) * _MUL1
    z = (z ^ _shift_right(z, 27)) * _MUL2
    return z ^ _shift_right(z, 31)


def _words(values, device) -> torch.Tensor:
    """Stream ids as a 1-D int64 tensor on ``device``: an int is filled there (a kernel argument,
    not a host-to-device copy); a tensor already there is used as it is."""
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=torch.int64).reshape(-1)
    return torch.full((1,), values, dtype=torch.int64, device=device)


class SampleSeeds:
    """Random streams for samples ``start, start + 1, ...``: a batch of ``B`` draws uses indices
    ``start .. start + B - 1``, so ``SampleSeeds(seed, start=k)`` continues a run at sample ``k``.

    Pass it wherever a ``generator`` is taken (``sd.sample``, ``Sampler.solve``,
    ``sde.prior_sample``, ``log_likelihood``, ``dequantize``).
    """

    def __init__(self, seed: int, start: int = 0):
        self.seed = check_int("seed", seed)
        self.start = check_int("start", start, minimum=0)

    def shifted(self, offset: int) -> SampleSeeds:
        """The streams of samples ``start + offset, ...`` (a later batch of the same run)."""
        return SampleSeeds(self.seed, self.start + check_int("offset", offset, minimum=0))

    def keys(self, batch: int, device=None) -> torch.Tensor:
        """One 64-bit key per sample, ``(batch,)`` int64."""
        base = torch.full((), _signed(self.seed), dtype=torch.int64, device=device)
        index = torch.arange(self.start, self.start + batch, dtype=torch.int64, device=device)
        return mix64(mix64(base) + index * _GAMMA)

    def bits(self, batch: int, streams, size: int, device=None) -> torch.Tensor:
        """Hashed words ``(S, batch, size)`` for ``streams`` (an int, ``S = 1``, or a 1-D int64
        tensor of ``S`` ids): entry ``[s, i, j]`` is number ``j`` of stream ``streams[s]`` of
        sample ``start + i``."""
        streams = _words(streams, device)
        counter = mix64(streams * _GAMMA)[:, None] + torch.arange(size, dtype=torch.int64,
                                                                 device=device) * _GAMMA
        return mix64(self.keys(batch, device)[None, :, None] ^ mix64(counter)[:, None, :])

    def uniform(self, shape, stream: int = DEQUANTIZE, dtype=torch.float32, device=None,
                streams=None) -> torch.Tensor:
        """Uniforms in ``(0, 1)`` of ``shape`` ``(B, ...)``; with ``streams`` (a 1-D int64
        tensor of ids) the result is ``(len(streams), *shape)``, one draw per stream."""
        return self._draw(shape, stream, dtype, device, streams, "uniform")

    def normal(self, shape, stream: int = PRIOR, dtype=torch.float32, device=None,
               streams=None) -> torch.Tensor:
        """Standard normals of ``shape`` ``(B, ...)`` (``(len(streams), *shape)`` with
        ``streams``)."""
        return self._draw(shape, stream, dtype, device, streams, "normal")

    def rademacher(self, shape, stream: int = PROBES, dtype=torch.float32,
                   device=None) -> torch.Tensor:
        """``+-1`` with probability 1/2 each, of ``shape`` ``(B, ...)`` (the sign bit)."""
        shape = tuple(shape)
        words = self.bits(shape[0], stream, math.prod(shape[1:]), device)[0]
        return torch.where(words < 0, -1.0, 1.0).to(dtype).reshape(shape)

    def _draw(self, shape, stream, dtype, device, streams, kind) -> torch.Tensor:
        shape = tuple(shape)
        many = streams is not None
        words = self.bits(shape[0], streams if many else stream, math.prod(shape[1:]), device)
        wide = coefficient_dtype(words.device)            # float64 (float32 without it)
        bits = 53 if wide == torch.float64 else 24
        u = (_shift_right(words, 64 - bits).to(wide) + 0.5) * 2.0**-bits
        out = torch.special.ndtri(u) if kind == "normal" else u
        out = out.to(dtype).reshape((len(words), *shape))
        return out if many else out[0]

    def __repr__(self) -> str:
        return f"SampleSeeds(seed={self.seed}, start={self.start})"


def check_source(source, name: str = "generator"):
    """``None``, a ``torch.Generator`` or a :class:`SampleSeeds`; anything else is refused."""
    if source is None or isinstance(source, torch.Generator | SampleSeeds):
        return source
    raise InputTypeError(f"{name} must be a torch.Generator, sdediff.SampleSeeds or None, got "
                         f"{type(source).__name__}")


def _generator_draw(kind: str, shape, generator, dtype, device):
    """``kind`` draws from a ``torch.Generator`` on its device (without one: torch's default
    generator of ``device``)."""
    where = generator.device if generator is not None else device
    if kind == "normal":
        return torch.randn(shape, generator=generator, dtype=dtype, device=where)
    if kind == "uniform":
        return torch.rand(shape, generator=generator, dtype=dtype, device=where)
    return torch.randint(0, 2, shape, generator=generator, device=where).to(dtype) * 2 - 1


def _draw(kind: str, shape, source, dtype, device, stream: int) -> torch.Tensor:
    if isinstance(check_source(source), SampleSeeds):
        return getattr(source, kind)(tuple(shape), stream, dtype, device)
    # made where the generator lives, then moved: one seed, one draw on every device
    return _generator_draw(kind, tuple(shape), source, dtype, device).to(device)


def normal(shape, source, dtype=torch.float32, device=None, stream: int = PRIOR) -> torch.Tensor:
    """Standard normals of ``shape`` on ``device`` from ``source``: ``torch.randn`` with a
    generator (drawn on the generator's device, then moved: one seed, one draw on every device),
    or per-sample streams."""
    return _draw("normal", shape, source, dtype, device, stream)


def uniform(shape, source, dtype=torch.float64, device=None,
            stream: int = DEQUANTIZE) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` of ``shape`` from ``source`` (as :func:`normal`)."""
    return _draw("uniform", shape, source, dtype, device, stream)


def rademacher(shape, source, dtype=torch.float32, device=None,
               stream: int = PROBES) -> torch.Tensor:
    """``+-1`` entries of ``shape`` from ``source`` (as :func:`normal`)."""
    return _draw("rademacher", shape, source, dtype, device, stream)
