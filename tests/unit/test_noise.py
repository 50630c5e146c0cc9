"""The faithful sampler's exact Brownian noise (issue 19, ``workers.gpu.noise``): the scheduler's
queries are the precomputed ones, the law is Brownian (mean, variance = time gap, covariance =
overlap, normal), an image's noise and latents do not depend on its batch-mates, and a query
at any other time fails loudly. Small latents keep it fast: the properties do not depend on shape."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from models.tiny import SCHEDULER_CONFIG
from shared.messages import ResultRecord
from shared.settings import SamplerName, SamplerNoise, Settings
from workers.gpu.noise import ExactBrownianNoise, NoiseQueryError, batch_noise, noise_seed, sde_queries
from workers.gpu.noise import _Plan as Plan
from workers.gpu.schedulers import NOISE_SCHEMES, build_sampler

SHAPE = (4, 8, 8)


def scheduler(steps: int = 15, scheme: SamplerNoise = SamplerNoise.EXACT):
    sampler = build_sampler(SamplerName.FAITHFUL, SCHEDULER_CONFIG, scheme)
    sampler.scheduler.set_timesteps(steps)
    return sampler


def run_steps(sampler, seeds: list[int], shape=SHAPE, begin: int = 0) -> torch.Tensor:
    """The 29-step loop with per-image random model outputs (each image's own generator)."""
    s = sampler.scheduler
    s.set_begin_index(begin)
    sampler.prepare(s, seeds, shape, torch.device("cpu"))
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    latents = torch.stack([torch.randn(shape, generator=g) for g in gens]) * 14.6
    for t in s.timesteps[begin:]:
        out = torch.stack([torch.randn(shape, generator=g) for g in gens])
        latents = s.step(out, t, latents).prev_sample
    return latents


class Recorder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, a, b):
        self.calls.append((float(a), float(b)))
        return self.inner(a, b)


@pytest.mark.parametrize("steps, begin", [(15, 0), (15, 12), (4, 0), (1, 0)])
def test_the_scheduler_asks_exactly_the_precomputed_queries(steps, begin):
    """Every query of a whole run (and of img2img's tail, from a begin index) is found exactly;
    one step asks none (its only step goes to sigma 0), and the sampler must still run."""
    sampler = scheduler(steps)
    s = sampler.scheduler
    s.set_begin_index(begin)
    sampler.prepare(s, [1], SHAPE, torch.device("cpu"))
    assert isinstance(s.noise_sampler, ExactBrownianNoise)
    recorder = s.noise_sampler = Recorder(s.noise_sampler)
    x = torch.randn(1, *SHAPE)
    for t in s.timesteps[begin:]:
        x = s.step(torch.randn(1, *SHAPE), t, x).prev_sample
    expected = sde_queries(s.sigmas)
    assert len(expected) == 2 * (steps - 1)  # two per step, none on the last (to sigma 0)
    assert recorder.calls == expected[begin:]
    assert torch.isfinite(x).all()


def test_a_query_outside_the_precomputed_times_fails_loudly():
    sampler = scheduler(15)
    sampler.prepare(sampler.scheduler, [1], SHAPE, torch.device("cpu"))
    noise = sampler.scheduler.noise_sampler
    with pytest.raises(NoiseQueryError, match="not among the 28 precomputed"):
        noise(torch.tensor(14.0), torch.tensor(13.0))
    a, b = sde_queries(sampler.scheduler.sigmas)[0]
    with pytest.raises(NoiseQueryError):
        noise(torch.tensor(a), torch.tensor(b) * (1 + 1e-6))  # close is not equal: no approximation
    # the schedule changed after the noise was prepared: the first stochastic step fails
    sampler.scheduler.set_timesteps(10)
    sampler.scheduler.noise_sampler = noise
    with pytest.raises(NoiseQueryError):
        sampler.scheduler.step(torch.zeros(1, *SHAPE), sampler.scheduler.timesteps[0], torch.zeros(1, *SHAPE))


# -- the law ------------------------------------------------------------------------------------
N_SEEDS = 1500  # x 256 elements per image: 384,000 samples per query


@pytest.fixture(scope="module")
def draws():
    sigmas = scheduler(15).scheduler.sigmas
    queries = sde_queries(sigmas)
    plan = Plan(queries)
    answers = batch_noise(range(N_SEEDS), plan, SHAPE).double()  # (queries, seeds, *SHAPE)
    return queries, answers.reshape(len(queries), -1).numpy()


def test_each_query_is_standard_normal(draws):
    queries, a = draws
    n = a.shape[1]
    assert np.abs(a.mean(1)).max() < 5 / math.sqrt(n)  # 5 standard errors
    assert np.abs(a.var(1) - 1).max() < 5 * math.sqrt(2 / n)


def test_increments_have_the_time_gap_as_variance_and_are_independent(draws):
    """Rebuild W at every time from the answers: disjoint increments have variance = gap and
    are uncorrelated; the two queries of a step have covariance = overlap / sqrt(len_a len_b)."""
    queries, a = draws
    n = a.shape[1]
    tol = 6 / math.sqrt(n)
    increments, gaps = [], []
    for k in range(0, len(queries), 2):
        (s0, mid), (s0b, s1) = queries[k], queries[k + 1]
        assert s0 == s0b and s0 > mid > s1
        first = a[k] * math.sqrt(s0 - mid) * -1  # W(s0) - W(mid): answers are W(t1) - W(t0), t0 = s0
        whole = a[k + 1] * math.sqrt(s0 - s1) * -1  # W(s0) - W(s1)
        increments += [first, whole - first]
        gaps += [s0 - mid, mid - s1]
        overlap = (s0 - mid) / math.sqrt((s0 - mid) * (s0 - s1))
        assert np.mean(a[k] * a[k + 1]) == pytest.approx(overlap, abs=tol)
    for inc, gap in zip(increments, gaps, strict=True):
        assert np.var(inc) / gap == pytest.approx(1, abs=5 * math.sqrt(2 / n))
    norm = np.stack([inc / math.sqrt(g) for inc, g in zip(increments, gaps, strict=True)])
    corr = norm @ norm.T / n
    off = corr[~np.eye(len(corr), dtype=bool)]
    assert np.abs(off).max() < tol, np.abs(off).max()  # disjoint increments: uncorrelated


def test_the_within_step_correlation_is_the_brownian_one(draws):
    """(sigma, mid) inside (sigma, next): sqrt(len_a / len_b), 0.733 at SD 1.5's first step."""
    queries, a = draws
    (s0, mid), (_, s1) = queries[:2]
    assert math.sqrt((s0 - mid) / (s0 - s1)) == pytest.approx(0.7332, abs=1e-4)


def _ks_statistic(x: np.ndarray) -> float:
    x = np.sort(x)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max()))


def test_answers_pass_a_normality_test(draws):
    _, a = draws
    for q in (0, 1, len(a) - 1):
        x = a[q][:20000]
        assert _ks_statistic(x) < 1.95 / math.sqrt(len(x))  # Kolmogorov-Smirnov at alpha = 0.001
        stats = pytest.importorskip("scipy.stats")
        assert stats.kstest(x, "norm").pvalue > 1e-3
        assert abs(stats.kurtosis(x)) < 5 * math.sqrt(24 / len(x))


def test_pinned_values_for_one_seed():
    """Known answers (torch's CPU generator, float32): a change of scheme or order shows here."""
    assert noise_seed(0) == 3932201304487655714
    assert noise_seed(1234) == 4866785775390101596
    s = scheduler(15).scheduler
    noise = ExactBrownianNoise(s.sigmas, [1234], SHAPE)
    q = sde_queries(s.sigmas)
    got = [noise(*map(torch.tensor, q[i]))[0, 0, 0, :4].tolist() for i in (0, 1, -1)]
    expected = [
        [-0.8327369093894958, -0.023757528513669968, 0.1274840086698532, -0.44926220178604126],
        [-0.44911545515060425, -0.06540927290916443, -1.320142388343811, -0.0792076513171196],
        [1.3925817012786865, 1.0755465030670166, -0.15086589753627777, -0.35066038370132446],
    ]
    assert got == expected


# -- batch independence ------------------------------------------------------------------------
def test_an_images_noise_is_bit_identical_alone_in_8_and_in_64_any_order():
    sigmas = scheduler(15).scheduler.sigmas
    alone = ExactBrownianNoise(sigmas, [77], (4, 64, 64)).noise[:, 0]
    mates = [77, *range(1000, 1007)]
    random.Random(1).shuffle(mates)
    in8 = ExactBrownianNoise(sigmas, mates, (4, 64, 64)).noise[:, mates.index(77)]
    assert torch.equal(alone, in8)
    small = (4, 16, 16)
    alone = ExactBrownianNoise(sigmas, [77], small).noise[:, 0]
    for order in range(2):
        mates = [77, *range(2000, 2063)]
        random.Random(order).shuffle(mates)
        assert torch.equal(alone, ExactBrownianNoise(sigmas, mates, small).noise[:, mates.index(77)])
    assert not torch.equal(alone, ExactBrownianNoise(sigmas, [78], small).noise[:, 0])


def test_an_images_sampled_latents_are_bit_identical_alone_and_in_a_batch():
    """The whole 29-step loop (random model outputs per image): the steps are elementwise, so
    with the exact noise an image's latents are the same bits in any batch."""
    alone = run_steps(scheduler(15), [5])[0]
    mates = [11, 5, 3, 9, 1, 2, 8, 4]
    assert torch.equal(alone, run_steps(scheduler(15), mates)[mates.index(5)])
    mates = list(range(100, 163)) + [5]
    random.Random(3).shuffle(mates)
    assert torch.equal(alone, run_steps(scheduler(15), mates)[mates.index(5)])


# -- the setting, the schemes, the record ----------------------------------------------------
def test_every_scheme_has_a_function_and_the_tree_is_diffusers_own():
    assert set(NOISE_SCHEMES) == set(SamplerNoise)
    tree = scheduler(15, SamplerNoise.TREE)
    tree.prepare(tree.scheduler, [4, 5], SHAPE, torch.device("cpu"))
    assert tree.scheduler.noise_sampler is None and tree.scheduler.noise_sampler_seed == [4, 5]
    assert tree.noise is SamplerNoise.TREE
    assert build_sampler(SamplerName.FAST, SCHEDULER_CONFIG, SamplerNoise.TREE).noise is None


def test_the_schemes_give_different_noise_for_the_same_seed():
    a = run_steps(scheduler(3, SamplerNoise.EXACT), [5])
    b = run_steps(scheduler(3, SamplerNoise.TREE), [5])
    assert not torch.equal(a, b)


def test_setting_default_exact_tree_selectable_typos_rejected():
    assert Settings.from_env({}).sampler_noise is SamplerNoise.EXACT
    assert Settings.from_env({"VEIL_SAMPLER_NOISE": "tree"}).sampler_noise is SamplerNoise.TREE
    with pytest.raises(ValueError, match="sampler_noise"):
        Settings.from_env({"VEIL_SAMPLER_NOISE": "approximate"})


def test_records_carry_the_scheme_and_older_records_still_read():
    row = ResultRecord(input="a.jpg", output="b.jpg", status="done", sampler_noise=SamplerNoise.EXACT)
    assert '"sampler_noise":"exact"' in row.model_dump_json()
    old = ResultRecord.model_validate_json('{"input": "a.jpg", "output": null, "status": "no_face"}')
    assert old.sampler_noise is None
