"""Collapse metrics against an independent naive NumPy float64 implementation (explicit loops, np.linalg.pinv),
at the exact geometries where their values are known, under jax.jit, streaming vs one-shot, degenerate input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from hcl_array import metrics
from hcl_array.geometry import orthogonal_frame, simplex_etf
from tests.conftest import assert_close

CLASS_MEAN_KEYS = (
    "unit_norm",
    "zero_sum",
    "equal_inner_product",
    "nc1",
    "nc1_quotient",
    "cdnv",
    "equinorm",
    "equiangularity",
    "max_angle",
    "etf_distance",
    "orthogonal_frame_distance",
)
COLLAPSE_KEYS = (
    "unit_norm",
    "zero_sum",
    "equal_inner_product",
    "within_class_variation",
    "nc1",
    "nc1_quotient",
    "cdnv",
    "equinorm",
    "equiangularity",
    "etf_distance",
)


# ------------------------------------------------------------------------------------------------
# The naive reference: loops over classes and rows, explicit pseudo-inverse, nothing from hcl_array
# ------------------------------------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def naive_class_means(h: np.ndarray, y: np.ndarray, num_classes: int) -> dict[int, np.ndarray]:
    means = {}
    for c in range(num_classes):
        rows = [h[i] for i in range(len(y)) if y[i] == c]
        if rows:
            means[c] = sum(rows) / len(rows)
    return means


def naive_classifiers(h, y, means: dict[int, np.ndarray]) -> tuple[float, float]:
    mean_hits = ncc_hits = 0
    for i in range(len(y)):
        scores = {c: h[i] @ mu for c, mu in means.items()}
        distances = {c: np.linalg.norm(h[i] - mu) for c, mu in means.items()}
        mean_hits += max(scores, key=scores.get) == y[i]
        ncc_hits += min(distances, key=distances.get) == y[i]
    return mean_hits / len(y), ncc_hits / len(y)


def naive_report(h, y, num_classes, reference=None) -> dict[str, float]:
    h, y = np.asarray(h, dtype=np.float64), np.asarray(y)
    means = naive_class_means(h, y, num_classes)
    classes = sorted(means)
    c_ = len(classes)
    m = np.array([means[c] for c in classes])
    centred = m - m.mean(axis=0)
    pairs = [(a, b) for a in range(c_) for b in range(c_) if a != b]
    out = {
        "unit_norm": np.mean([abs(np.linalg.norm(mu) - 1) for mu in m]),
        "zero_sum": np.linalg.norm(m.mean(axis=0)),
        "equal_inner_product": np.mean([abs(_cos(m[a], m[b]) + 1 / (c_ - 1)) for a, b in pairs]),
    }
    within = np.zeros((h.shape[1], h.shape[1]))
    variances, distances = {}, {}
    for c in classes:
        rows = [h[i] - means[c] for i in range(len(y)) if y[i] == c]
        for r in rows:
            within += np.outer(r, r)
        variances[c] = np.mean([r @ r for r in rows])
        distances[c] = np.mean([np.linalg.norm(r) for r in rows])
    sigma_w = within / len(y)
    sigma_b = centred.T @ centred / c_
    out["within_class_variation"] = np.mean(list(distances.values()))
    out["nc1"] = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)) / c_
    out["nc1_quotient"] = np.trace(sigma_w) / np.trace(sigma_b)
    cdnv = [
        (variances[classes[a]] + variances[classes[b]]) / (2 * np.sum((m[a] - m[b]) ** 2)) for a, b in pairs if a < b
    ]
    out["cdnv"] = np.mean(cdnv)
    norms = [np.linalg.norm(v) for v in centred]
    out["equinorm"] = np.std(norms) / np.mean(norms)
    cosines = [_cos(centred[a], centred[b]) for a, b in pairs]
    out["equiangularity"] = np.std(cosines)
    out["max_angle"] = np.mean([abs(c + 1 / (c_ - 1)) for c in cosines])
    g = centred @ centred.T
    out["etf_distance"] = np.linalg.norm(g / np.linalg.norm(g) - (np.eye(c_) - 1 / c_) / np.sqrt(c_ - 1))
    g = m @ m.T
    out["orthogonal_frame_distance"] = np.linalg.norm(g / np.linalg.norm(g) - np.eye(c_) / np.sqrt(c_))
    s = np.linalg.svd(h, compute_uv=False)
    p = s / s.sum() + 1e-7
    out["rankme"] = np.exp(-np.sum(p * np.log(p)))
    classifier_means = means if reference is None else naive_class_means(*reference, num_classes)
    out["mean_classifier_accuracy"], out["ncc_accuracy"] = naive_classifiers(h, y, classifier_means)
    covariance_values = np.linalg.svd(np.cov(m, rowvar=False), compute_uv=False)
    out["spectrum"] = np.log(covariance_values[: min(c_ - 1, h.shape[1])] / covariance_values[0])
    return out


def naive_knn(h, y, ref_h, ref_y, num_classes, k, tau) -> float:
    hits = 0
    for i in range(len(h)):
        sims = np.array([_cos(h[i], r) for r in ref_h])
        votes = np.zeros(num_classes)
        for j in np.argsort(-sims)[:k]:
            votes[ref_y[j]] += np.exp(sims[j] / tau)
        hits += np.argmax(votes) == y[i]
    return hits / len(h)


def naive_uniformity(h, t=2.0) -> float:
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    values = [np.exp(-t * np.sum((z[i] - z[j]) ** 2)) for i in range(len(z)) for j in range(i + 1, len(z))]
    return float(np.log(np.mean(values)))


def naive_alignment(a, b) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean([np.sum((a[i] - b[i]) ** 2) for i in range(len(a))]))


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def random_problem(seed=0, n=120, d=10, num_classes=6):
    """Random clustered data with class 4 empty and class 5 a single row: the awkward cases included."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    y[0] = 5
    centres = rng.standard_normal((num_classes, d))
    h = centres[y] + 0.7 * rng.standard_normal((n, d))
    return h, y


def compiled(xp, fn, **static):
    """fn with static keywords; under jax.jit for JAX, whose eager mode compiles every operation per shape
    (the eager path is covered by the report tests, this keeps the file fast)."""
    if xp.__name__.startswith("jax"):
        import jax

        return jax.jit(functools.partial(fn, **static))
    return functools.partial(fn, **static)


def collapsed(geometry: np.ndarray, per_class: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Every row equal to its class's vector in `geometry` (C x d)."""
    labels = np.repeat(np.arange(geometry.shape[0]), per_class)
    return geometry[labels], labels


# ------------------------------------------------------------------------------------------------
# Known geometries
# ------------------------------------------------------------------------------------------------


def test_exact_simplex_etf_is_fully_collapsed(xp):
    num_classes, dim = 6, 10  # the shapes of random_problem: jax compiles each operation once per shape
    h, y = collapsed(np.asarray(simplex_etf(num_classes, dim, seed=3)))
    report = metrics.collapse_report(xp.asarray(h), xp.asarray(y))
    for key in COLLAPSE_KEYS + ("max_angle",):
        assert abs(report[key]) < 1e-12, (key, report[key])
    assert report["mean_classifier_accuracy"] == report["ncc_accuracy"] == 1.0
    spectrum = report["spectrum"]
    assert spectrum.shape == (num_classes,) and spectrum.dtype == np.float64
    np.testing.assert_allclose(spectrum[: num_classes - 1], 0.0, atol=1e-12)  # flat over C - 1 values
    assert spectrum[-1] < -30  # the centred means have rank C - 1: the last value is the rank floor
    # centring an ETF changes nothing; its normalized Gram is (I - 11^T/C)/sqrt(C-1): distance to I/sqrt(C) is
    # sqrt((C-1)(1/sqrt(C-1) - 1/sqrt(C))^2 + 1/C) = sqrt(2 - 2 sqrt(1 - 1/C))
    expected = math.sqrt(2 - 2 * math.sqrt(1 - 1 / num_classes))
    assert abs(report["orthogonal_frame_distance"] - expected) < 1e-12


def test_orthogonal_frame_closed_forms(xp):
    num_classes = 6
    h, y = collapsed(np.asarray(orthogonal_frame(num_classes, 10, seed=1)))
    report = metrics.collapse_report(xp.asarray(h), xp.asarray(y))
    # cos(mu_a, mu_b) = 0, so every pair is off by exactly 1/(C-1)
    assert abs(report["equal_inner_product"] - 1 / (num_classes - 1)) < 1e-12
    # mean of the orthonormal rows has norm sqrt(C)/C
    assert abs(report["zero_sum"] - 1 / math.sqrt(num_classes)) < 1e-12
    # centred: mu_c - 1/C sum_a mu_a has Gram I - 11^T/C, exactly the simplex-ETF Gram: ETF distance 0
    for key in ("unit_norm", "etf_distance", "orthogonal_frame_distance", "equinorm", "equiangularity", "max_angle"):
        assert abs(report[key]) < 1e-12, (key, report[key])


def test_perturbations_move_each_metric_the_right_way():
    num_classes, dim = 5, 8
    etf = np.asarray(simplex_etf(num_classes, dim, seed=0))
    h, y = collapsed(etf, per_class=4)
    noise = np.random.default_rng(1).standard_normal(h.shape)
    base = metrics.collapse_report(h, y)

    def grows(keys, perturbed_rows):
        previous = base
        for step in (1e-3, 1e-2, 1e-1):
            report = metrics.collapse_report(perturbed_rows(step), y)
            for key in keys:
                assert report[key] > previous[key], (key, step)
            previous = report

    grows(("within_class_variation", "nc1", "nc1_quotient", "cdnv"), lambda s: h + s * noise)
    grows(("unit_norm", "equinorm"), lambda s: h * np.where(y == 0, 1 + s, 1.0)[:, None])
    grows(("zero_sum",), lambda s: h + s * etf[0])
    tilted = etf.copy()

    def tilt(s):  # rotate class 0's mean towards class 1's: angles and the ETF distance degrade
        tilted[0] = etf[0] + s * 10 * etf[1]
        tilted[0] /= np.linalg.norm(tilted[0])
        return tilted[y]

    grows(("equal_inner_product", "equiangularity", "max_angle", "etf_distance"), tilt)


# ------------------------------------------------------------------------------------------------
# Agreement with the naive implementation, on every backend
# ------------------------------------------------------------------------------------------------


def test_every_metric_matches_the_naive_implementation(xp):
    h, y = random_problem(seed=0)
    ref_h, ref_y = random_problem(seed=1)
    expected = naive_report(h, y, 6, reference=(ref_h, ref_y))
    reference = (xp.asarray(ref_h), xp.asarray(ref_y))
    report = metrics.collapse_metrics(xp.asarray(h), xp.asarray(y), num_classes=6, reference=reference)
    for key, value in report.items():
        if key == "spectrum":
            assert_close(value[:4], expected["spectrum"], rtol=1e-9, atol=1e-10, xp=xp)  # C' - 1 = 4 non-zero values
        else:
            assert_close(value, expected[key], rtol=1e-9, atol=1e-12, xp=xp)
    single = {name: getattr(metrics, name)(xp.asarray(h), xp.asarray(y), num_classes=6) for name in CLASS_MEAN_KEYS}
    for name, value in single.items():
        assert_close(value, expected[name], rtol=1e-9, atol=1e-12, xp=xp)
    own = naive_report(h, y, 6)
    assert_close(metrics.ncc_accuracy(xp.asarray(h), xp.asarray(y)), own["ncc_accuracy"], xp=xp)
    assert_close(metrics.mean_classifier_accuracy(xp.asarray(h), xp.asarray(y)), own["mean_classifier_accuracy"], xp=xp)
    assert_close(metrics.within_class_variation(xp.asarray(h), xp.asarray(y)), own["within_class_variation"], xp=xp)


def test_row_metrics_match_the_naive_implementation(xp):
    h, y = random_problem(seed=2)
    ref_h, ref_y = random_problem(seed=3)
    knn = compiled(xp, metrics.knn_accuracy, num_classes=6, k=7, chunk_size=16)
    assert_close(knn(*map(xp.asarray, (h, y, ref_h, ref_y))), naive_knn(h, y, ref_h, ref_y, 6, k=7, tau=0.1), xp=xp)
    assert_close(compiled(xp, metrics.uniformity, chunk_size=13)(xp.asarray(h)), naive_uniformity(h), xp=xp)
    assert_close(compiled(xp, metrics.alignment)(xp.asarray(h), xp.asarray(ref_h)), naive_alignment(h, ref_h), xp=xp)
    s = np.linalg.svd(h, compute_uv=False)
    assert_close(compiled(xp, metrics.stable_rank)(xp.asarray(h)), np.sum(s**2) / s[0] ** 2, xp=xp)
    numerical_rank = compiled(xp, metrics.numerical_rank)
    assert int(numerical_rank(xp.asarray(h))) == 10
    low_rank = h[:, :3] @ np.random.default_rng(0).standard_normal((3, 10))
    assert int(numerical_rank(xp.asarray(low_rank))) == 3
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    covariance = np.cov(z, rowvar=False, bias=True)
    spectrum = compiled(xp, metrics.embedding_spectrum)(xp.asarray(h))
    assert_close(spectrum, np.log(np.linalg.eigvalsh(covariance)[::-1]), rtol=1e-9, xp=xp)
    assert_close(compiled(xp, metrics.rankme)(xp.asarray(h)), naive_report(h, y, 6)["rankme"], xp=xp)


def test_float32_input_is_accumulated_in_float64(xp):
    h, y = random_problem(seed=4)
    value = metrics.nc1(xp.asarray(h.astype(np.float32)), xp.asarray(y))
    assert value.dtype == xp.float64
    assert_close(value, naive_report(h.astype(np.float32), y, 6)["nc1"], rtol=1e-9, xp=xp)


def test_report_keys_and_types():
    h, y = random_problem()
    report = metrics.collapse_report(h, y)
    required = set(COLLAPSE_KEYS) | {"rankme", "ncc_accuracy", "mean_classifier_accuracy", "spectrum"}
    assert required <= set(report) and set(report) == set(metrics.REPORT_KEYS)
    assert all(type(v) is float for k, v in report.items() if k != "spectrum")
    assert report["spectrum"].dtype == np.float64 and report["spectrum"].shape == (6,)


# ------------------------------------------------------------------------------------------------
# jax.jit
# ------------------------------------------------------------------------------------------------


def test_runs_under_jax_jit_with_static_num_classes():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    h, y = random_problem(seed=5)
    compiled = jax.jit(metrics.collapse_metrics, static_argnames="num_classes")
    traced = compiled(jnp.asarray(h), jnp.asarray(y), num_classes=6)
    expected = naive_report(h, y, 6)
    for key in COLLAPSE_KEYS + ("rankme", "ncc_accuracy", "mean_classifier_accuracy"):
        assert_close(traced[key], expected[key], rtol=1e-9)
    knn = jax.jit(lambda a, b: metrics.knn_accuracy(a, b, a, b, num_classes=6, k=5))(jnp.asarray(h), jnp.asarray(y))
    assert_close(knn, naive_knn(h, y, h, y, 6, k=5, tau=0.1))
    update = jax.jit(metrics.collapse_update)
    state = update(metrics.collapse_init(6, 10, xp=jnp), jnp.asarray(h), jnp.asarray(y))
    assert_close(state.means[:4], np.array([h[y == c].mean(0) for c in range(4)]))
    with pytest.raises(ValueError, match="num_classes"):
        jax.jit(metrics.nc1)(jnp.asarray(h), jnp.asarray(y))


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype")
def test_jax_without_x64_computes_in_float32():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    h, y = random_problem(seed=5)
    expected = naive_report(h, y, 6)
    with jax.enable_x64(False):
        compiled_report = jax.jit(metrics.collapse_metrics, static_argnames="num_classes")
        report = compiled_report(jnp.asarray(h), jnp.asarray(y), num_classes=6)
        assert report["nc1"].dtype == jnp.float32
    for key in COLLAPSE_KEYS + ("rankme",):  # the documented float32 precision
        assert float(report[key]) == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------------


def _stream(xp, h, y, sizes, reference=None):
    def batches(rows, labels):
        bounds = np.cumsum([0, *sizes])
        return [(xp.asarray(rows[a:b]), xp.asarray(labels[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]

    update, probe_update = compiled(xp, metrics.collapse_update), compiled(xp, metrics.probe_update)
    state = metrics.collapse_init(6, h.shape[1], xp=xp)
    for batch in batches(h, y):
        state = update(state, *batch)
    reference_state = None
    if reference is not None:
        reference_state = metrics.collapse_init(6, h.shape[1], xp=xp)
        for batch in batches(*reference):
            reference_state = update(reference_state, *batch)
    probe = metrics.probe_init(state, reference=reference_state)
    for batch in batches(h, y):
        probe = probe_update(probe, *batch)
    return state, probe


def test_streaming_equals_one_shot(xp):
    h, y = random_problem(seed=6)
    order = np.argsort(y, kind="stable")  # sorted labels: most batches miss most classes
    h, y = h[order] * 3.0 + 5.0, y[order]
    ref_h, ref_y = random_problem(seed=7)
    state, probe = _stream(xp, h, y, [30, 0, 30, 30, 30], reference=(ref_h, ref_y))  # few shapes: jax compiles
    streamed = metrics.collapse_result(state, probe)
    reference = (xp.asarray(ref_h), xp.asarray(ref_y))
    one_shot = metrics.collapse_report(xp.asarray(h), xp.asarray(y), num_classes=6, reference=reference)
    assert list(streamed) == list(one_shot)
    for key in one_shot:
        np.testing.assert_allclose(streamed[key], one_shot[key], rtol=1e-10, atol=1e-12, err_msg=key)
    first_pass = metrics.collapse_result(state)
    assert set(first_pass) == set(one_shot) - set(metrics.PROBE_KEYS)


def test_streaming_collapse_report_two_passes():
    h, y = random_problem(seed=8, n=100)

    def batches():
        return ((h[i : i + 30], y[i : i + 30]) for i in range(0, 100, 30))

    streamed = metrics.streaming_collapse_report(batches, 6)
    one_shot = metrics.collapse_report(h, y, num_classes=6)
    for key in one_shot:
        np.testing.assert_allclose(streamed[key], one_shot[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert "ncc_accuracy" not in metrics.streaming_collapse_report(batches, 6, second_pass=False)


# ------------------------------------------------------------------------------------------------
# Degenerate input
# ------------------------------------------------------------------------------------------------


def test_empty_class_is_left_out():
    h, y = random_problem(seed=9)  # class 4 empty, class 5 a single row
    compact = np.where(y == 5, 4, y)  # the same data with labels 0..4, no gap
    with_gap = metrics.collapse_report(h, y, num_classes=6)
    without = metrics.collapse_report(h, compact, num_classes=5)
    for key in with_gap:
        if key != "spectrum":
            assert with_gap[key] == pytest.approx(without[key], rel=1e-12, abs=1e-14), key
    np.testing.assert_allclose(with_gap["spectrum"][:4], without["spectrum"][:4], atol=1e-12)
    assert metrics.collapse_report(h, y, num_classes=9)["nc1"] == pytest.approx(with_gap["nc1"], rel=1e-12)


def test_single_row_classes_have_zero_variance():
    h, y = collapsed(np.asarray(simplex_etf(4, 5, seed=0)), per_class=1)
    report = metrics.collapse_report(h, y)
    assert report["cdnv"] == 0.0 and report["within_class_variation"] == 0.0 and abs(report["nc1"]) < 1e-12


def test_dimension_below_etf_feasibility_is_defined():
    h, y = random_problem(seed=10, d=3, num_classes=6)  # 4 non-empty classes + 1 singleton in 3 dimensions
    h = np.concatenate([h, h[:5] + 1.0])
    y = np.concatenate([y, np.full(5, 4)])  # 6 classes in d = 3 < C - 1 = 5: no ETF exists
    report = metrics.collapse_report(h, y)
    expected = naive_report(h, y, 6)
    for key in CLASS_MEAN_KEYS:
        assert report[key] == pytest.approx(expected[key], rel=1e-9), key
    assert report["etf_distance"] > 0.05
    assert np.all(np.isfinite(report["spectrum"]))


def test_all_identical_rows_give_defined_values():
    h = np.tile(np.array([0.1, 0.7, -0.3, 1 / 3]), (30, 1))
    y = np.arange(30) % 5
    report = metrics.collapse_report(h, y)
    assert all(np.all(np.isfinite(v)) for v in report.values())
    # rounding leaves residuals of ~1e-17, which the rtol floor treats as zero: 0/0 ratios are 0, not noise/noise
    for key in ("nc1", "nc1_quotient", "cdnv", "equinorm", "equiangularity"):
        assert report[key] == 0.0, key
    assert report["max_angle"] == 0.25  # cosines with a zero (centred) mean are 0: abs(0 + 1/(C-1))
    assert report["within_class_variation"] == pytest.approx(0.0, abs=1e-15)
    assert report["etf_distance"] == 1.0  # the normalized centred Gram of equal means is taken as 0
    assert report["zero_sum"] == pytest.approx(np.linalg.norm(h[0]), rel=1e-14)
    spread_rows = h + 1e-3 * np.random.default_rng(0).standard_normal(h.shape)  # within spread, no between spread
    spread = metrics.collapse_report(spread_rows, y)
    assert np.isfinite(spread["nc1"]) and spread["nc1_quotient"] > 0


def test_within_spread_without_between_spread_is_inf():
    h = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    y = np.array([0, 0, 1, 1])  # identical class means, non-zero variance
    assert metrics.nc1_quotient(h, y) == math.inf and metrics.cdnv(h, y) == math.inf
    assert metrics.nc1(h, y) == 0.0  # pinv(Sigma_B = 0) = 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_are_refused(xp, bad):
    h, y = random_problem()
    h[3, 2] = bad
    with pytest.raises(ValueError, match="embeddings"):
        metrics.collapse_report(xp.asarray(h), xp.asarray(y))


def test_bad_arguments_name_themselves():
    h, y = random_problem()
    with pytest.raises(ValueError, match="embeddings"):
        metrics.nc1(h[0], y)
    with pytest.raises(TypeError, match="embeddings"):
        metrics.nc1(h.astype(np.int64), y)
    with pytest.raises(TypeError, match="labels"):
        metrics.nc1(h, y.astype(np.float64))
    with pytest.raises(ValueError, match="labels"):
        metrics.nc1(h, y[:-1])
    with pytest.raises(ValueError, match="labels"):
        metrics.nc1(h, y, num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        metrics.nc1(h, y[:, None])
    with pytest.raises(ValueError, match="reference"):
        metrics.collapse_report(h, y, reference=(h[:, :3], y))
    with pytest.raises(ValueError, match="uniformity"):
        metrics.uniformity(h[:1])
    state = metrics.collapse_init(6, 10)
    with pytest.raises(ValueError, match="no rows"):
        metrics.collapse_result(state)
    with pytest.raises(ValueError, match="dim=10"):
        metrics.collapse_update(state, h[:, :4], y)
    with pytest.raises(ValueError, match="batch_labels"):
        metrics.collapse_update(state, h, y + 6)
