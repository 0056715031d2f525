import numpy as np
import pytest

from segrank.perturb.input import NOISE_CELL, PerturbationSpec, default_perturbation, make_input_perturbation
from segrank.perturb.seeds import rng, seed_words


@pytest.mark.parametrize(
    "text, kind, low, high",
    [("noise:0.1-0.2", "noise", 0.1, 0.2), ("gamma:1.1-1.2", "gamma", 1.1, 1.2), ("brightness:-0.1-0.1", "brightness", -0.1, 0.1),
     ("contrast:0.8", "contrast", 0.8, 0.8), ("dropout:0.2", "dropout", 0.2, 0.2), ("noise:1e-3-2e-3", "noise", 1e-3, 2e-3)],
)
def test_parse(text, kind, low, high):
    spec = PerturbationSpec.parse(text)
    assert (spec.kind, spec.low, spec.high) == (kind, low, high)
    assert PerturbationSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("bad", ["noise", "blur:0.1", "noise:abc", "noise:0.2-0.1", "dropout:0.1-0.2", "dropout:1.0", "gamma:0"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="perturbation"):
        PerturbationSpec.parse(bad)


def test_seeds_are_stable_and_distinct():
    # Fixed words: the derivation must never change between versions or machines.
    assert seed_words(0, "m", "img", 0, "noise")[:2] == seed_words(0, "m", "img", 0, "noise")[:2]
    a = rng(1, "model", "img", 0, "noise").standard_normal(4)
    assert np.array_equal(a, rng(1, "model", "img", 0, "noise").standard_normal(4))
    for other in [(2, "model", "img", 0, "noise"), (1, "other", "img", 0, "noise"), (1, "model", "img2", 0, "noise"),
                  (1, "model", "img", 1, "noise"), (1, "model", "img", 0, "dropout")]:
        assert not np.array_equal(a, rng(*other).standard_normal(4))


def test_strength_drawn_in_range_and_reproducible():
    spec = PerturbationSpec.parse("noise:0.1-0.2")
    draws = [spec.draw(seed=0, model="m", unit=f"i{k}", repeat=0) for k in range(50)]
    assert all(0.1 <= d <= 0.2 for d in draws) and len(set(draws)) == 50
    assert draws[3] == spec.draw(seed=0, model="m", unit="i3", repeat=0)


@pytest.mark.parametrize("shape, split_axis", [((1, 150, 130), 1), ((2, 70, 65), 2), ((1, 20, 70, 90), 1)])
def test_noise_does_not_depend_on_tiling(shape, split_axis):
    p = make_input_perturbation(PerturbationSpec.parse("noise:0.1-0.2"), seed=3, model="m", unit="u", repeat=0)
    origin = tuple([-7] * (len(shape) - 1))  # starts inside border padding
    whole = p(np.zeros(shape, np.float32), origin)
    cut = shape[split_axis] // 3
    first_shape = list(shape); first_shape[split_axis] = cut
    second_shape = list(shape); second_shape[split_axis] = shape[split_axis] - cut
    second_origin = list(origin); second_origin[split_axis - 1] += cut
    a = p(np.zeros(first_shape, np.float32), origin)
    b = p(np.zeros(second_shape, np.float32), tuple(second_origin))
    assert np.array_equal(whole, np.concatenate([a, b], axis=split_axis))
    assert abs(np.std(whole) / p.strength - 1) < 0.1 and abs(np.mean(whole)) < 0.05 * p.strength * 10


def test_noise_cells_are_independent():
    p = make_input_perturbation(PerturbationSpec.parse("noise:0.1"), seed=0, model="m", unit="u", repeat=0)
    n = p.noise((1, 2 * NOISE_CELL, NOISE_CELL), (0, 0))
    assert not np.allclose(n[:, :NOISE_CELL], n[:, NOISE_CELL:])


def test_deterministic_transforms():
    x = np.linspace(-1, 2, 12, dtype=np.float32).reshape(1, 3, 4)
    kw = dict(seed=0, model="m", unit="u", repeat=0)
    g = make_input_perturbation(PerturbationSpec.parse("gamma:1.5"), **kw)(x, (0, 0))
    assert np.allclose(g, np.sign(x) * np.abs(x) ** 1.5)
    b = make_input_perturbation(PerturbationSpec.parse("brightness:0.25"), **kw)(x, (0, 0))
    assert np.allclose(b, x + 0.25)
    c = make_input_perturbation(PerturbationSpec.parse("contrast:0.5"), center=0.5, **kw)(x, (0, 0))
    assert np.allclose(c, 0.5 + 0.5 * (x - 0.5))


def test_default_perturbation():
    assert str(default_perturbation(dropout_possible=True)) == "dropout:0.2"
    assert str(default_perturbation(dropout_possible=False)) == "noise:0.1-0.2"
    with pytest.raises(ValueError):
        make_input_perturbation(PerturbationSpec.parse("dropout:0.2"), seed=0, model="m", unit="u", repeat=0)
