"""Ratio samplers: bounds, determinism, the budget band, and config validation (numpy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError
from rlprune.models import digits_resnet
from rlprune.samples.samplers import DEPTH_FEATURE, SAMPLERS, SamplerConfig, draw_labelled, rule_directions, sample
from rlprune.space.pruning import FEATURE_NAMES, PruningSpace


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    # The digits architecture untrained: the cost model depends on shapes only.
    return PruningSpace.from_model(digits_resnet(), torch.zeros(1, 1, 32, 32))


def _draw(name, n, space, seed, **opts):
    centers = np.full((3, space.n_groups), 0.4)
    return sample(name, n, space.cost_model, space.features(), seed, centers=centers, **opts)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_in_bounds_and_deterministic(space, name):
    R = _draw(name, 64, space, 7)
    assert R.shape == (64, space.n_groups)
    assert R.dtype == np.float64
    assert R.min() >= 0.0 and R.max() <= space.max_ratio
    assert np.array_equal(R, _draw(name, 64, space, 7))
    assert not np.array_equal(R, _draw(name, 64, space, 8))
    space.cost_model.cost_batch(R)  # valid for the cost model


@pytest.mark.parametrize("name", ["uniform", "sobol", "rules", "budget", "mixed"])
def test_max_ratio_option_caps_values(space, name):
    R = _draw(name, 32, space, 0, max_ratio=0.5, band=(0.6, 0.9))
    assert R.max() <= 0.5


def test_uniform_and_sobol_cover_the_cube(space):
    for name in ("uniform", "sobol"):
        R = _draw(name, 256, space, 1)
        assert R.min() < 0.05 and R.max() > space.max_ratio - 0.05
        assert abs(R.mean() - space.max_ratio / 2) < 0.05


@pytest.mark.parametrize("band", [(0.3, 0.7), (0.45, 0.5), (0.1, 0.2)])
def test_budget_lands_in_the_macs_band(space, band):
    R = _draw("budget", 200, space, 3, band=band)
    _, macs = space.cost_model.ratios_of(R)
    assert macs.min() >= band[0] - 1e-12 and macs.max() <= band[1] + 1e-12
    # it spreads across the band rather than piling at one edge
    assert macs.max() - macs.min() > 0.5 * (band[1] - band[0])


def test_budget_params_band(space):
    R = _draw("budget", 50, space, 4, band=(0.2, 0.4), budget="params")
    params, _ = space.cost_model.ratios_of(R)
    assert params.min() >= 0.2 and params.max() <= 0.4


def test_budget_unreachable_band_is_a_clear_error(space):
    with pytest.raises(ConfigError, match="unreachable"):
        _draw("budget", 8, space, 0, band=(0.001, 0.002), max_tries=3)


def test_rules_follow_their_shapes(space):
    dirs = rule_directions(space.cost_model, space.features())
    assert set(dirs) == {"uniform", "larger_group", "depth"}
    assert FEATURE_NAMES[DEPTH_FEATURE] == "depth"
    assert np.all(np.diff(dirs["depth"]) >= 0)  # deeper groups pruned at least as much
    ch = space.cost_model.channels
    assert dirs["larger_group"][np.argmax(ch)] == 1.0 and dirs["larger_group"][np.argmin(ch)] < 1.0
    R = _draw("rules", 400, space, 5, noise=0.0)
    # without noise each row is a strength times one of the three shapes
    for r in R[:20]:
        assert any(np.allclose(r, r.max() * d / d.max()) for d in dirs.values())


def test_around_stays_near_its_centers(space):
    centers = np.array([[0.2] * space.n_groups, [0.6] * space.n_groups])
    R = sample("around", 100, space.cost_model, rng=0, centers=centers, sigma=0.02)
    dist = np.abs(R[:, None, :] - centers[None]).max(axis=2).min(axis=1)
    assert dist.max() < 0.15
    with pytest.raises(ConfigError, match="centers"):
        sample("around", 4, space.cost_model, rng=0)
    with pytest.raises(ConfigError, match="shape"):
        sample("around", 4, space.cost_model, rng=0, centers=np.zeros((2, space.n_groups + 1)))


def test_mixed_labels_rows_with_their_sampler(space):
    cfg = SamplerConfig(mix=(("uniform", 1.0), ("budget", 1.0)))
    R, names = draw_labelled(cfg, 200, space.cost_model, space.features(), 0)
    assert R.shape == (200, space.n_groups) and len(names) == 200
    assert set(names) == {"uniform", "budget"}
    _, macs = space.cost_model.ratios_of(R[np.array(names) == "budget"])
    assert macs.min() >= 0.3 and macs.max() <= 0.7
    # the same seed draws the same matrix as the plain call
    assert np.array_equal(R, cfg.draw(200, space.cost_model, space.features(), 0))


def test_zero_samples_and_bad_counts(space):
    assert _draw("mixed", 0, space, 0).shape == (0, space.n_groups)
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="non-negative integer"):
            _draw("uniform", bad, space, 0)


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "nope"}, "name"),
    ({"max_ratio": 1.5}, "max_ratio"),
    ({"noise": -0.1}, "noise"),
    ({"band": (0.7, 0.3)}, "band"),
    ({"budget": "flops"}, "budget"),
    ({"mix": (("mixed", 1.0),)}, "mix"),
    ({"mix": (("uniform", -1.0),)}, "mix"),
    ({"max_tries": 0}, "max_tries"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SamplerConfig.{field}"):
        SamplerConfig(**kwargs)
