"""Exact Brownian noise for the faithful sampler, one draw per image.

diffusers' ``DPMSolverSDEScheduler.step`` asks its ``noise_sampler(sigma, sigma_next)`` for
``(W(t1) - W(t0)) / sqrt(|t1 - t0|)`` of a Brownian motion ``W`` whose time is sigma itself
(``BrownianTreeNoiseSampler``'s transform is the identity there). Per step it asks twice, from the
same start: ``(sigma_i, sigma_mid)`` in the first-order half and ``(sigma_i, sigma_i+1)`` in the
second (``sigma_mid = exp(-(t_i + t_i+1) / 2)`` with ``t = -log sigma``); the last step (to sigma
0) asks nothing. Every query time is known once ``set_timesteps`` has run, so instead of a
torchsde ``BrownianInterval`` per image (about 1,500 ``randn`` calls and 10,000 small tensor
operations per image, ~250 ms on a CPU core whatever the device), ``ExactBrownianNoise``:

1. computes the queries the scheduler will make, with the very operations ``step`` uses (float32
   on the CPU), so each query is found by exact equality;
2. draws, per image and from that image's own ``torch.Generator`` on the CPU (seeded by
   ``noise_seed(seed)``, never the latents' seed), one standard normal per gap between the sorted
   query times: ``dW_k = sqrt(gap_k) z_k``, the path's independent increments;
3. answers every query as ``sign * sum(sqrt(gap_k) z_k) / sqrt(sum(gap_k))`` over the gaps it
   spans, all on the CPU, once per batch: shape ``(queries, batch, C, H, W)`` float32;
4. copies that to the device once (non-blocking, from pinned memory on CUDA); each step's query
   is then a view of it: no kernel launch, no host-device sync, no randomness inside the loop.

Steps 1-3 need only the sigmas and the seeds, so they can run ahead: ``host_noise`` builds a
batch's ``HostNoise`` on any thread (the GPU stage builds the next generation chunk's while this
one runs, ``workers.gpu.batching``) and ``ExactBrownianNoise`` takes it instead of drawing again.
It is the same function of the same seeds, so noise built ahead is bit-identical to noise built
in place; a ``HostNoise`` for other seeds or another schedule is not used (a prefix of its
images is: each image is drawn alone).

The joint law of every answer is exactly the Brownian one (no tolerance, no tree): increments
over disjoint gaps are independent with variance equal to the gap, and the two overlapping
queries of a step have covariance ``overlap / sqrt(len_a len_b)``. A query at any other time
raises ``NoiseQueryError`` rather than approximating.

What is reproducible: the same seed with the same scheme gives the same noise, bit for bit, on
every device (it is computed on the CPU with elementwise operations only) and whatever the
batch-mates or batch size; pixels are bit-exact for the same batch on the same device and
software (see ``workers.gpu.generation``). The numbers differ from the torchsde trees' for the
same seed, so images differ from those made with ``VEIL_SAMPLER_NOISE=tree`` (the trees, kept for
anyone who must match earlier outputs).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: ``DPMSolverSDEScheduler.step``'s midpoint in log-sigma time (diffusers 0.42)
MIDPOINT_RATIO = 0.5


class NoiseQueryError(ValueError):
    """The scheduler asked for noise between times that were not precomputed: a bug, never
    approximated."""


def noise_seed(seed: int) -> int:
    """The Brownian noise's seed of an image: derived from (not equal to) the image's seed, so
    the path's normals are not the initial latents' normals."""
    digest = hashlib.sha256(f"veil-brownian:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _sigma_fn(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def sde_queries(sigmas: torch.Tensor) -> list[tuple[float, float]]:
    """The ``(sigma, sigma_next)`` pairs ``DPMSolverSDEScheduler.step`` passes to its noise
    sampler over the whole schedule ``sigmas`` (its ``self.sigmas`` after ``set_timesteps``), in
    order, computed with the same float32 operations so that they compare equal."""
    sigmas = sigmas.detach().to("cpu")
    queries: list[tuple[float, float]] = []
    first_order = True
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = (sigmas[i], sigmas[i + 1]) if first_order else (sigmas[i - 1], sigmas[i])
        t, t_next = _t_fn(sigma), _t_fn(sigma_next)
        t_proposed = t + (t_next - t) * MIDPOINT_RATIO
        if sigma_next == 0:
            continue  # the last step is a plain Euler step: no noise, the state stays first order
        if first_order:
            t_next = t_proposed
        queries.append((float(_sigma_fn(t)), float(_sigma_fn(t_next))))
        first_order = not first_order
    return queries


class _Plan:
    """The sorted query times and, per query, the gaps it spans with their coefficients."""

    def __init__(self, queries: Sequence[tuple[float, float]]):
        # no queries (one step: the last step is a plain Euler step) is an empty plan: nothing
        # is drawn, and any query at all raises NoiseQueryError
        self.times = sorted({t for pair in queries for t in pair})
        index = {t: k for k, t in enumerate(self.times)}
        self.gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]  # float64: exact
        self.index: dict[tuple[float, float], int] = {}
        self.terms: list[list[tuple[int, float]]] = []  # per query: (gap index, coefficient)
        for a, b in queries:
            if (a, b) in self.index:
                continue
            lo, hi = sorted((index[a], index[b]))
            if lo == hi:
                raise ValueError(f"noise query over an empty interval: ({a}, {b})")
            total = self.times[hi] - self.times[lo]
            sign = 1.0 if b > a else -1.0  # W(b) - W(a)
            self.index[(a, b)] = len(self.terms)
            self.terms.append([(k, sign * math.sqrt(self.gaps[k] / total)) for k in range(lo, hi)])


def image_noise(seed: int, plan: _Plan, shape: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """One image's answers to every query, ``(queries, *shape)`` float32, from its own generator:
    depends on nothing but ``seed``, the query times and ``shape``. Written into ``out`` if given."""
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed))
    z = torch.randn((len(plan.gaps), *shape), generator=generator, dtype=torch.float32)
    if out is None:
        out = torch.empty((len(plan.terms), *shape), dtype=torch.float32)
    for q, terms in enumerate(plan.terms):
        (k0, c0), *rest = terms
        torch.mul(z[k0], c0, out=out[q])
        for k, c in rest:
            out[q].add_(z[k], alpha=c)
    return out


def batch_noise(seeds: Sequence[int], plan: _Plan, shape: Sequence[int], *, pin: bool = False) -> torch.Tensor:
    """Every image's answers stacked as ``(queries, batch, *shape)`` on the CPU (pinned for an
    asynchronous copy when ``pin``). Each image is drawn alone, so batch-mates change nothing."""
    out = torch.empty((len(plan.terms), len(seeds), *shape), dtype=torch.float32, pin_memory=pin)
    for i, seed in enumerate(seeds):
        image_noise(seed, plan, shape, out=out[:, i])
    return out


@dataclass(frozen=True)
class HostNoise:
    """A batch's answers built on the CPU, ready to copy to the device: ``host`` is
    ``(queries, batch, *shape)`` float32 (pinned when built for CUDA), for ``seeds`` in order."""

    queries: tuple[tuple[float, float], ...]
    seeds: tuple[int, ...]
    shape: tuple[int, ...]
    plan: _Plan
    host: torch.Tensor

    def for_batch(self, queries: Sequence[tuple[float, float]], seeds: Sequence[int], shape: Sequence[int]):
        """The answers for this batch, if this noise was built for it or for a batch it begins
        (a view of the first ``len(seeds)`` images: each image is drawn alone); else None."""
        n = len(seeds)
        if tuple(queries) != self.queries or tuple(shape) != self.shape or tuple(seeds) != self.seeds[:n]:
            return None
        return self.host if n == len(self.seeds) else self.host[:, :n]


def host_noise(sigmas: torch.Tensor, seeds: Sequence[int], shape: Sequence[int], *, pin: bool = False) -> HostNoise:
    """Steps 1-3 of the module docstring for one batch, on the calling thread, on the CPU."""
    queries = tuple(sde_queries(sigmas))
    plan = _Plan(queries)
    host = batch_noise(seeds, plan, tuple(shape), pin=pin)
    return HostNoise(queries, tuple(seeds), tuple(shape), plan, host)


class ExactBrownianNoise:
    """A drop-in ``noise_sampler`` for ``DPMSolverSDEScheduler``: built after ``set_timesteps``
    for one batch, from the scheduler's sigmas and each image's seed; ``ready``: the batch's
    ``HostNoise`` built ahead (used when it was built for this batch, else drawn here)."""

    def __init__(
        self,
        sigmas: torch.Tensor,
        seeds: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        ready: HostNoise | None = None,
    ):
        device = torch.device(device)
        pin = device.type == "cuda"
        queries = sde_queries(sigmas)
        ahead = ready.for_batch(queries, seeds, shape) if ready is not None else None
        #: whether the noise built ahead was used (else it was drawn here)
        self.prepared_ahead = (
            ready is not None and ahead is not None and (not pin or (ahead.is_pinned() and ahead.is_contiguous()))
        )
        if ready is not None and ahead is not None and self.prepared_ahead:
            self.plan, host = ready.plan, ahead
        else:
            built = host_noise(sigmas, seeds, shape, pin=pin)
            self.plan, host = built.plan, built.host
        self._host = host.to(dtype)
        # one copy per batch; the host tensor is kept alive until the batch ends (async copy)
        self.noise = self._host.to(device, non_blocking=pin)

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        key = (float(sigma), float(sigma_next))  # the scheduler's sigmas are CPU tensors: no sync
        q = self.plan.index.get(key)
        if q is None:
            known = ", ".join(f"({a:.6g}, {b:.6g})" for a, b in list(self.plan.index)[:4])
            raise NoiseQueryError(
                f"noise asked between sigma {key[0]!r} and {key[1]!r}, which are not among the "
                f"{len(self.plan.index)} precomputed queries ({known}, ...); the scheduler's "
                "schedule or step changed after the noise was prepared"
            )
        return self.noise[q]
