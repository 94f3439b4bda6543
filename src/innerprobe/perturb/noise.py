"""Noise kinds for APEX, behind one interface.

A kind draws a standard random tensor ``xi`` (from a seeded generator, so that common random
numbers can be reused for every sigma) and applies it at scale ``sigma``:

* ``gaussian`` (default, APEX; Ren, Luo, Li 2026, arXiv 2602.03586, eq. ã = φ(z) + σξ):
  ``a + sigma * xi``, ``xi ~ N(0, I)``.
* ``multiplicative``: ``a * (1 + sigma * xi)``, ``xi ~ N(0, I)``.
* ``dropout``: inverted dropout with drop probability ``sigma`` (0 <= sigma < 1):
  ``a * 1[u >= sigma] / (1 - sigma)``, ``u ~ U[0, 1)``.

Every kind returns ``a`` bitwise at sigma = 0.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, did_you_mean


class NoiseKind:
    """Base class: ``draw`` the standard noise, ``apply`` it at a per-row scale."""

    name = "base"
    max_sigma: float | None = None  # exclusive upper bound on sigma, if any

    def draw(self, shape, generator: torch.Generator, dtype, device) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def draw_into(self, out: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``out`` with the values :meth:`draw` gives for its shape (the engine's per-input draw)."""
        out.copy_(self.draw(tuple(out.shape), generator, out.dtype, out.device))

    def apply(self, value: torch.Tensor, sigma: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``value``, ``sigma`` and ``xi`` broadcast against each other (the engine passes value
        [B, S, K, ...], sigma [B, S, 1, ...], xi [B, 1, K, ...]); returns the noisy value."""
        raise NotImplementedError


class Gaussian(NoiseKind):
    name = "gaussian"

    def draw(self, shape, generator, dtype, device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def draw_into(self, out, generator):
        torch.randn(out.shape, generator=generator, out=out)

    def apply(self, value, sigma, xi):
        return torch.addcmul(value, sigma, xi)  # value + sigma * xi in one fused, broadcasting kernel


class Multiplicative(NoiseKind):
    name = "multiplicative"

    def draw(self, shape, generator, dtype, device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def draw_into(self, out, generator):
        torch.randn(out.shape, generator=generator, out=out)

    def apply(self, value, sigma, xi):
        return torch.addcmul(value, value * sigma, xi)  # value * (1 + sigma * xi)


class Dropout(NoiseKind):
    name = "dropout"
    max_sigma = 1.0

    def draw(self, shape, generator, dtype, device):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    def apply(self, value, sigma, xi):
        keep = (xi >= sigma).to(value.dtype)
        return value * keep / (1 - sigma)


KINDS: dict[str, type[NoiseKind]] = {k.name: k for k in (Gaussian, Multiplicative, Dropout)}


def get_kind(kind: "str | NoiseKind") -> NoiseKind:
    """A noise kind by name (``gaussian``, ``multiplicative``, ``dropout``) or a NoiseKind instance."""
    if isinstance(kind, NoiseKind):
        return kind
    if isinstance(kind, str) and kind in KINDS:
        return KINDS[kind]()
    raise ConfigError(
        f"unknown noise kind {kind!r}", hint=did_you_mean(str(kind), KINDS) + f" (kinds: {', '.join(KINDS)})"
    )
