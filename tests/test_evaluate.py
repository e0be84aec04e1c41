"""clinpaper.evaluate: contracts, bad input, its figures (clinpaper.figures) saved through save_figure, and
checks against independent computations (scipy, scikit-learn, dcurves, statsmodels)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import os
import re

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.special import expit

from clinpaper import evaluate, figures
from clinpaper.core import ClinpaperError
from clinpaper.figures import save_figure, set_style


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(5)
    n = 1500
    linear = rng.normal(-1.2, 1.1, n)
    frame = pd.DataFrame({"risk": expit(linear), "hospital": rng.integers(0, 6, n),
                          "age": rng.normal(65, 12, n)})
    frame["died"] = rng.binomial(1, frame.risk)
    frame["other"] = expit(0.5 * linear + rng.normal(0, 1, n))
    frame.index = rng.permutation(np.arange(10_000, 10_000 + n))  # a non-default index
    return frame


def pairwise_delong(y, p):
    "DeLong (1988) from the definition, pair by pair."
    cases, controls = p[y == 1], p[y == 0]
    psi = (cases[:, None] > controls[None, :]) + 0.5 * (cases[:, None] == controls[None, :])
    return psi.mean(), psi.mean(axis=1).var(ddof=1) / len(cases) + psi.mean(axis=0).var(ddof=1) / len(controls)


# --- independent references -------------------------------------------------------------

def test_auroc_matches_mann_whitney_and_pairwise_delong(simulated):
    y, p = simulated.died.to_numpy(), simulated.risk.round(2).to_numpy()  # ties
    result = evaluate.auroc(y, p)
    auc, variance = pairwise_delong(y, p)
    u = stats.mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert result["estimate"] == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)
    assert result["estimate"] == pytest.approx(auc, abs=1e-12)
    z = stats.norm.ppf(0.975)
    assert result["low"] == pytest.approx(auc - z * np.sqrt(variance), abs=1e-10)
    assert result["high"] == pytest.approx(auc + z * np.sqrt(variance), abs=1e-10)


def test_bootstrap_interval_close_to_delong(simulated):
    delong = evaluate.auroc(simulated.died, simulated.risk)
    boot = evaluate.auroc(simulated.died, simulated.risk, ci="bootstrap", n_boot=300, seed=2)
    assert boot["low"] == pytest.approx(delong["low"], abs=0.015)
    assert boot["high"] == pytest.approx(delong["high"], abs=0.015)


def test_delong_test_against_pairwise(simulated):
    y = simulated.died.to_numpy()
    p1, p2 = simulated.risk.to_numpy(), simulated.other.to_numpy()
    result = evaluate.delong_test(y, p1, p2)

    def components(p):
        cases, controls = p[y == 1], p[y == 0]
        psi = (cases[:, None] > controls[None, :]) + 0.5 * (cases[:, None] == controls[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    a10, a01 = components(p1)
    b10, b01 = components(p2)
    se = np.sqrt((a10 - b10).var(ddof=1) / len(a10) + (a01 - b01).var(ddof=1) / len(a01))
    difference = a10.mean() - b10.mean()
    assert result["difference"] == pytest.approx(difference, abs=1e-12)
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(difference / se)), rel=1e-9)
    assert result["high"] - result["low"] == pytest.approx(2 * 1.959964 * se, rel=1e-6)


def test_sklearn_metrics(simulated):
    metrics = pytest.importorskip("sklearn.metrics")
    y, p = simulated.died, simulated.risk
    assert evaluate.auprc(y, p) == pytest.approx(metrics.average_precision_score(y, p), abs=1e-12)
    assert evaluate.brier(y, p) == pytest.approx(metrics.brier_score_loss(y, p), abs=1e-12)
    curve = evaluate.roc_curve(y, p)
    fpr, tpr, _ = metrics.roc_curve(y, p, drop_intermediate=False)
    assert np.allclose(curve.false_positive_rate, fpr) and np.allclose(curve.true_positive_rate, tpr)


def test_net_benefit_matches_dcurves(simulated):
    dcurves = pytest.importorskip("dcurves")
    thresholds = np.round(np.arange(0.02, 0.9, 0.04), 2)
    ours = evaluate.net_benefit(simulated.died, simulated.other, thresholds)
    theirs = dcurves.dca(data=simulated[["died", "other"]].reset_index(drop=True), outcome="died",
                         modelnames=["other"], thresholds=thresholds)
    wide = theirs.pivot(index="threshold", columns="model", values="net_benefit")
    assert np.allclose(ours.model, wide["other"], atol=1e-10)
    assert np.allclose(ours.treat_all, wide["all"], atol=1e-10)


def test_calibration_slope_and_intercept(simulated):
    y = simulated.died.to_numpy()
    linear = sm.families.links.Logit()(simulated.risk.to_numpy())
    calibrated = evaluate.calibration_intercept_slope(y, simulated.risk)
    assert calibrated["slope_low"] < 1 < calibrated["slope_high"]
    assert calibrated["intercept_low"] < 0 < calibrated["intercept_high"]
    extreme = evaluate.calibration_intercept_slope(y, expit(2 * linear))
    assert extreme["slope"] == pytest.approx(0.5, abs=0.07)


# --- contracts ---------------------------------------------------------------------------

def test_inputs_unchanged_and_series_index_ignored(simulated):
    before = simulated.copy()
    # positions, not index labels, pair y with p (the index here is not 0..n-1)
    assert evaluate.auroc(simulated.died, simulated.risk)["estimate"] == pytest.approx(
        evaluate.auroc(simulated.died.to_numpy(), simulated.risk.to_numpy())["estimate"])
    evaluate.subgroup_performance(simulated, outcome="died", prediction="risk", by="hospital")
    evaluate.performance_summary(simulated.died, simulated.risk, n_boot=5)
    pd.testing.assert_frame_equal(simulated, before)


def test_seeded_functions_are_reproducible(simulated):
    first = evaluate.performance_summary(simulated.died, simulated.risk, n_boot=10, seed=4)
    second = evaluate.performance_summary(simulated.died, simulated.risk, n_boot=10, seed=4)
    pd.testing.assert_frame_equal(first, second)
    curve_a = evaluate.calibration_curve(simulated.died, simulated.risk, n_boot=10, seed=1)
    curve_b = evaluate.calibration_curve(simulated.died, simulated.risk, n_boot=10, seed=1)
    pd.testing.assert_frame_equal(curve_a, curve_b)


def test_subgroup_counts_by_hand(simulated):
    table = evaluate.subgroup_performance(simulated, outcome="died", prediction="risk",
                                          by=["hospital"])
    hand = simulated.groupby("hospital").died.agg(["size", "sum"])
    assert table.n.tolist() == hand["size"].tolist()
    assert table.events.tolist() == hand["sum"].tolist()


def test_grouped_cross_validation_logistic(simulated):
    def fit_predict(train, test):
        design = lambda frame: sm.add_constant(frame[["age"]].to_numpy(), has_constant="add")
        fit = sm.GLM(train.died.to_numpy(), design(train), family=sm.families.Binomial()).fit()
        return fit.predict(design(test))

    result = evaluate.grouped_cross_validation(fit_predict, simulated, outcome="died",
                                               group="hospital")
    held_out = simulated[simulated.hospital == 3]
    by_hand = fit_predict(simulated[simulated.hospital != 3], held_out)
    assert np.allclose(result.loc[held_out.index, "prediction"], by_hand)
    assert result.prediction.notna().all()


def test_cross_validation_without_groups_is_stratified_and_seeded(simulated):
    "group=None: stratified K-fold by the outcome; the same seed gives the same folds and predictions."
    def fit_predict(train, test):
        design = lambda frame: sm.add_constant(frame[["age"]].to_numpy(), has_constant="add")
        fit = sm.GLM(train.died.to_numpy(), design(train), family=sm.families.Binomial()).fit()
        return fit.predict(design(test))

    before = simulated.copy()
    result = evaluate.grouped_cross_validation(fit_predict, simulated, outcome="died", group=None,
                                               n_splits=5, seed=7)
    pd.testing.assert_frame_equal(simulated, before)
    assert list(result.columns) == ["died", "fold", "prediction"] and result.index.equals(simulated.index)
    events = result.groupby("fold").died.agg(["sum", "size"])
    assert events["sum"].max() - events["sum"].min() <= 1 and events["size"].max() - events["size"].min() <= 1
    in_fold_2 = result.fold == 2
    by_hand = fit_predict(simulated[~in_fold_2.to_numpy()], simulated[in_fold_2.to_numpy()])
    assert np.allclose(result.loc[in_fold_2, "prediction"], by_hand)
    again = evaluate.grouped_cross_validation(fit_predict, simulated, outcome="died", group=None,
                                              n_splits=5, seed=7)
    pd.testing.assert_frame_equal(result, again)
    other = evaluate.stratified_folds(simulated.died, n_splits=5, seed=8)
    assert not np.array_equal(other, result.fold.to_numpy())
    with pytest.raises(evaluate.EvaluationError, match="at least 5 events"):
        evaluate.stratified_folds([1, 1, 0, 0, 0, 0, 0, 0], n_splits=5)


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("y, p, message", [
    ([0, 1, 2, 2, 2], [0.1, 0.2, 0.3, 0.4, 0.5], "`y` must hold 0/1 values; got values {2} in 3 rows"),
    ([0, 1, 1], [0.1, 0.2], "same length"),
    ([0, 1, np.nan], [0.1, 0.2, 0.3], "`y` has 1 missing values"),
    ([0, 0, 0], [0.1, 0.2, 0.3], "single class"),
    ([0, 1, 1], [0.1, np.nan, 0.3], "`p` has 1 missing values (NaN) of 3"),
])
def test_bad_input_messages(y, p, message):
    for function in (evaluate.auroc, evaluate.auprc, evaluate.roc_curve, evaluate.calibration_intercept_slope,
                     evaluate.ici):
        with pytest.raises(ClinpaperError) as info:
            function(y, p)
        assert message in str(info.value)
        assert isinstance(info.value, ValueError)


def test_a_value_outside_0_1_is_a_score_for_the_auroc_and_refused_by_calibration():
    y, p = [0, 1, 1, 0], [0.1, 1.2, 0.3, -0.4]
    assert evaluate.auroc(y, p)["estimate"] == 1.0
    assert evaluate.auprc(y, p) == 1.0
    for function in (evaluate.calibration_intercept_slope, evaluate.ici, evaluate.brier):
        with pytest.raises(evaluate.EvaluationError, match=r"must hold probabilities in \[0, 1\]; got 2 values outside"):
            function(y, p)


def test_messages_never_show_values():
    p = np.array([0.123456, 1.987654, 0.2])
    with pytest.raises(evaluate.EvaluationError) as info:
        evaluate.brier([0, 1, 0], p)
    assert "1.98" not in str(info.value) and "0.12" not in str(info.value)
    with pytest.raises(evaluate.EvaluationError) as info:
        evaluate.auroc([0, 1, 0, 1], [0.123456, np.inf, 17.5, np.nan])
    assert "17.5" not in str(info.value) and "0.12" not in str(info.value)


# --- scores that are not probabilities ------------------------------------------------------

@pytest.fixture(scope="module")
def scored(simulated):
    "A SOFA-like integer score (0-24, heavy ties) and a linear predictor, beside the risks they come from."
    rng = np.random.default_rng(17)
    linear = sm.families.links.Logit()(simulated.risk.to_numpy())
    sofa = np.clip(np.round(8 + 3 * linear + rng.normal(0, 2, len(linear))), 0, 24).astype(np.int64)
    return simulated.died.to_numpy(), sofa, linear


def test_auroc_of_a_points_score_and_of_a_linear_predictor(scored):
    metrics = pytest.importorskip("sklearn.metrics")
    y, sofa, linear = scored
    assert sofa.dtype.kind == "i" and len(np.unique(sofa)) < 30
    on_sofa = evaluate.auroc(y, sofa)
    assert on_sofa["estimate"] == pytest.approx(metrics.roc_auc_score(y, sofa), abs=1e-12)
    auc, variance = pairwise_delong(y, sofa.astype(float))
    assert on_sofa["high"] - on_sofa["low"] == pytest.approx(2 * stats.norm.ppf(0.975) * np.sqrt(variance), rel=1e-9)
    on_linear, on_risk = evaluate.auroc(y, linear), evaluate.auroc(y, expit(linear))
    assert on_linear["estimate"] == pytest.approx(metrics.roc_auc_score(y, linear), abs=1e-12)
    for key in ("estimate", "low", "high"):
        assert on_linear[key] == pytest.approx(on_risk[key], abs=1e-12)
        # a strictly increasing transform of the points score changes nothing
        assert evaluate.auroc(y, expit((sofa - 8) / 3))[key] == pytest.approx(on_sofa[key], abs=1e-12)
    boot_linear = evaluate.auroc(y, linear, ci="bootstrap", n_boot=200, seed=3)
    assert boot_linear == evaluate.auroc(y, expit(linear), ci="bootstrap", n_boot=200, seed=3)
    assert boot_linear["low"] <= boot_linear["estimate"] <= boot_linear["high"]
    # a pandas integer Series, with its own index, is a score too
    series = pd.Series(sofa, index=np.arange(len(sofa))[::-1], dtype="Int64")
    assert evaluate.auroc(y, series)["estimate"] == on_sofa["estimate"]


def test_roc_curve_and_auprc_of_scores_match_sklearn(scored):
    metrics = pytest.importorskip("sklearn.metrics")
    y, sofa, linear = scored
    for score in (sofa, linear):
        assert evaluate.auprc(y, score) == pytest.approx(metrics.average_precision_score(y, score), abs=1e-12)
        curve = evaluate.roc_curve(y, score)
        fpr, tpr, thresholds = metrics.roc_curve(y, score, drop_intermediate=False)
        assert np.allclose(curve.false_positive_rate, fpr) and np.allclose(curve.true_positive_rate, tpr)
        assert np.array_equal(curve.threshold.to_numpy()[1:], thresholds[1:])
    assert evaluate.auprc(y, linear) == pytest.approx(evaluate.auprc(y, expit(linear)), abs=1e-12)


def test_delong_test_of_scores_equals_that_of_their_transforms(scored, simulated):
    y, sofa, linear = scored
    other = sm.families.links.Logit()(simulated.other.to_numpy())     # a second model's linear predictor
    on_scores = evaluate.delong_test(y, sofa, other)
    on_transforms = evaluate.delong_test(y, np.log1p(sofa), expit(other))
    for key in ("auroc_1", "auroc_2", "difference", "low", "high", "z", "p_value"):
        assert on_scores[key] == pytest.approx(on_transforms[key], abs=1e-10), key
    # and the pairwise definition
    def components(p):
        cases, controls = p[y == 1], p[y == 0]
        psi = (cases[:, None] > controls[None, :]) + 0.5 * (cases[:, None] == controls[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)
    a10, a01 = components(sofa.astype(float))
    b10, b01 = components(other)
    se = np.sqrt((a10 - b10).var(ddof=1) / len(a10) + (a01 - b01).var(ddof=1) / len(a01))
    assert on_scores["difference"] == pytest.approx(a10.mean() - b10.mean(), abs=1e-12)
    assert on_scores["p_value"] == pytest.approx(2 * stats.norm.sf(abs((a10.mean() - b10.mean()) / se)), rel=1e-9)


@pytest.mark.parametrize("bad, counted", [
    (lambda s: np.where(np.arange(len(s)) < 3, np.nan, s), "`p` has 3 missing values (NaN) of 1500"),
    (lambda s: np.where(np.arange(len(s)) < 2, np.inf, s), "`p` has 2 infinite values (inf or -inf) of 1500"),
    (lambda s: np.r_[np.nan, -np.inf, s[2:]], "1 missing values (NaN) and 1 infinite values (inf or -inf) of 1500"),
])
def test_scores_must_be_finite(scored, bad, counted):
    y, _, linear = scored
    for function in (evaluate.auroc, evaluate.auprc, evaluate.roc_curve):
        with pytest.raises(evaluate.EvaluationError, match=re.escape(counted)):
            function(y, bad(linear))
    with pytest.raises(evaluate.EvaluationError, match=re.escape(counted.replace("`p`", "`p2`"))):
        evaluate.delong_test(y, linear, bad(linear))


PROBABILITY_MEASURES = [
    (lambda y, s: evaluate.brier(y, s), "`brier` (the Brier score)"),
    (lambda y, s: evaluate.scaled_brier(y, s), "`scaled_brier` (the scaled Brier score)"),
    (lambda y, s: evaluate.calibration_intercept_slope(y, s), "`calibration_intercept_slope`"),
    (lambda y, s: evaluate.ici(y, s), "`ici` (the integrated calibration index)"),
    (lambda y, s: evaluate.calibration_curve(y, s, n_boot=0), "`calibration_curve`"),
    (lambda y, s: evaluate.net_benefit(y, s), "`net_benefit` (its thresholds are risks)"),
    (lambda y, s: evaluate.recalibrate(y, s), '`recalibrate` with kind="probability"'),
    (lambda y, s: evaluate.apply_recalibration(s, 0.0, 1.0), '`apply_recalibration` with kind="probability"'),
    (lambda y, s: evaluate.observed_expected(y, s), "`observed_expected`"),
    (lambda y, s: evaluate.performance_summary(y, s, n_boot=0), "`performance_summary`"),
    (lambda y, s: evaluate.subgroup_performance(pd.DataFrame({"died": y, "sofa": s, "sex": 1}), outcome="died",
                                                prediction="sofa", by="sex"), "`subgroup_performance`"),
    (lambda y, s: evaluate.bootstrap_optimism(lambda train, test: np.full(len(test), 3.0),
                                              pd.DataFrame({"died": y}), outcome="died", n_boot=1),
     "`bootstrap_optimism` (its Brier score and calibration slope)"),
]


@pytest.mark.parametrize("call, measure", PROBABILITY_MEASURES, ids=[m.split("`")[1] for _, m in PROBABILITY_MEASURES])
def test_probability_measures_refuse_a_score_and_say_why(scored, call, measure):
    y, sofa, _ = scored
    with pytest.raises(evaluate.EvaluationError) as info:
        call(y, sofa)
    message = str(info.value)
    assert f"{measure}" in message and "needs predicted probabilities" in message
    assert "must hold probabilities in [0, 1]" in message
    assert "auroc, delong_test, roc_curve, auprc" in message                 # what takes a score
    assert 'recalibrate(y, score, kind="score")' in message and "development cohort" in message   # the way out


def test_performance_summary_of_a_score(scored, simulated):
    metrics = pytest.importorskip("sklearn.metrics")
    y, sofa, linear = scored
    table = evaluate.performance_summary(y, sofa, n_boot=30, seed=2, kind="score")
    assert table.metric.tolist() == ["auroc", "auprc"]
    assert table.estimate.tolist() == pytest.approx([metrics.roc_auc_score(y, sofa),
                                                      metrics.average_precision_score(y, sofa)], abs=1e-12)
    assert ((table.low <= table.estimate) & (table.estimate <= table.high)).all()
    pd.testing.assert_frame_equal(evaluate.performance_summary(y, linear, n_boot=30, seed=2, kind="score"),
                                  evaluate.performance_summary(y, expit(linear), n_boot=30, seed=2, kind="score"))
    # the probability table is unchanged by the new keyword, and its rank rows are the score table's
    full = evaluate.performance_summary(y, simulated.risk, n_boot=30, seed=2)
    assert full.metric.tolist() == ["auroc", "calibration_intercept", "calibration_slope", "observed_expected",
                                    "auprc", "brier", "scaled_brier", "ici", "e50", "e90"]
    pd.testing.assert_frame_equal(full[full.metric.isin(["auroc", "auprc"])].reset_index(drop=True),
                                  evaluate.performance_summary(y, simulated.risk, n_boot=30, seed=2, kind="score"))
    with pytest.raises(ValueError, match="'probability' or 'score'"):
        evaluate.performance_summary(y, sofa, kind="points")


def test_a_score_turned_into_probabilities_on_a_development_cohort(scored):
    y, sofa, _ = scored
    development = np.arange(len(y)) < len(y) // 2
    coefficients = evaluate.recalibrate(y[development], sofa[development], kind="score")
    fit = sm.GLM(y[development], sm.add_constant(sofa[development].astype(float)), family=sm.families.Binomial()).fit()
    assert coefficients["intercept"] == pytest.approx(fit.params[0], abs=1e-8)
    assert coefficients["slope"] == pytest.approx(fit.params[1], abs=1e-8)
    risk = evaluate.apply_recalibration(sofa[~development], **coefficients, kind="score")
    assert np.allclose(risk, fit.predict(sm.add_constant(sofa[~development].astype(float))), atol=1e-12)
    assert evaluate.auroc(y[~development], risk)["estimate"] == evaluate.auroc(y[~development], sofa[~development])["estimate"]
    assert 0 < evaluate.brier(y[~development], risk) < 0.25          # now a probability measure takes it


# --- calibration and discrimination by subgroup (fairness) ------------------------------------

@pytest.fixture(scope="module")
def by_sex_and_age():
    "Predictions too extreme for women (twice the logit) and too high at 80+ (0.6 added to the logit)."
    rng = np.random.default_rng(41)
    n = 2400
    linear = rng.normal(-1.3, 1.0, n)
    frame = pd.DataFrame({"sex": rng.choice(["Female", "Male"], n),
                          "age_band": pd.Categorical(rng.choice(["18-64", "65-79", "80+"], n, p=[0.5, 0.3, 0.2]),
                                                     categories=["18-64", "65-79", "80+"], ordered=True)})
    frame["died"] = rng.binomial(1, expit(linear))
    female, old = (frame.sex == "Female").to_numpy(), (frame.age_band == "80+").to_numpy()
    frame["risk"] = expit(np.where(female, 2 * linear + 1.3, linear) + np.where(old, 0.6, 0.0))
    return frame


@pytest.mark.parametrize("column", ["sex", "age_band"])
def test_subgroup_calibration_against_statsmodels_glm(by_sex_and_age, column):
    smf = pytest.importorskip("statsmodels.formula.api")
    frame = by_sex_and_age
    table = evaluate.subgroup_performance(frame, outcome="died", prediction="risk", by=column)
    assert len(table) == frame[column].nunique()
    for _, row in table.iterrows():
        level = frame[frame[column] == row[column]].assign(lp=lambda d: np.log(d.risk / (1 - d.risk)))
        slope = smf.glm("died ~ lp", data=level, family=sm.families.Binomial()).fit()
        citl = smf.glm("died ~ 1", data=level, offset=level.lp, family=sm.families.Binomial()).fit()
        assert row.calibration_slope == pytest.approx(slope.params["lp"], abs=1e-8)
        assert [row.calibration_slope_low, row.calibration_slope_high] == pytest.approx(
            slope.conf_int().loc["lp"].tolist(), abs=1e-8)
        assert row.calibration_intercept == pytest.approx(citl.params["Intercept"], abs=1e-8)
        assert [row.calibration_intercept_low, row.calibration_intercept_high] == pytest.approx(
            citl.conf_int().loc["Intercept"].tolist(), abs=1e-8)
    shown = table.set_index(column)
    if column == "sex":
        assert shown.loc["Female", "calibration_slope_high"] < shown.loc["Male", "calibration_slope_low"]
    else:
        assert shown.loc["80+", "calibration_intercept_high"] < shown.loc["18-64", "calibration_intercept_low"]


def test_subgroup_performance_of_a_score(by_sex_and_age):
    metrics = pytest.importorskip("sklearn.metrics")
    frame = by_sex_and_age.assign(points=lambda d: np.round(10 * np.log(d.risk / (1 - d.risk)) + 40))
    table = evaluate.subgroup_performance(frame, outcome="died", prediction="points", by="sex", kind="score")
    for _, row in table.iterrows():
        level = frame[frame.sex == row.sex]
        assert row.auroc == pytest.approx(metrics.roc_auc_score(level.died, level.points), abs=1e-12)
    assert table.filter(like="calibration").isna().all(axis=None)
    assert table[["expected", "observed_expected"]].isna().all(axis=None)
    against = evaluate.subgroup_performance(frame, outcome="died", prediction="points", by="sex", kind="score",
                                            expected="risk")
    hand = frame.groupby("sex").apply(lambda d: d.died.sum() / d.risk.sum(), include_groups=False)
    assert against.observed_expected.tolist() == pytest.approx(hand.tolist(), rel=1e-12)


def test_format_subgroups_calibration_columns_masking_and_default(by_sex_and_age):
    frame = by_sex_and_age.copy()
    cut = int(np.flatnonzero(frame.died.cumsum().to_numpy() == 6)[0]) + 1   # Ward A: the first rows, 6 deaths
    frame["ward"] = np.where(np.arange(len(frame)) < cut, "Ward A", "Ward B")
    parts = [(label, evaluate.subgroup_performance(frame, outcome="died", prediction="risk", by=column).rename(
                 columns={column: "level"}), False) for column, label in (("sex", "Sex"), ("ward", "Ward"))]
    default, _ = evaluate.format_subgroups(parts, threshold=11)
    assert list(default.columns) == ["Subgroup", "Level", "Patients", "Events", "AUROC (95% CI)", "O/E (95% CI)"]
    table, _ = evaluate.format_subgroups(parts, threshold=11, calibration=True)
    assert list(table.columns) == list(default.columns) + ["Calibration intercept (95% CI)", "Calibration slope (95% CI)"]
    pd.testing.assert_frame_equal(table[default.columns], default)        # the old columns unchanged
    ward_a = table.set_index("Level").loc["Ward A"]
    events_a = int(frame.loc[frame.ward == "Ward A", "died"].sum())
    assert 0 < events_a < 11
    assert ward_a["Calibration slope (95% CI)"].startswith("not shown") and ward_a["Calibration intercept (95% CI)"].startswith("not shown")
    female = parts[0][1].set_index("level").loc["Female"]
    shown = table.set_index("Level").loc["Female"]
    assert shown["Calibration slope (95% CI)"] == (f"{female.calibration_slope:.2f} (95% CI {female.calibration_slope_low:.2f}"
                                                   f" to {female.calibration_slope_high:.2f})")
    assert shown["Calibration intercept (95% CI)"].startswith(f"{female.calibration_intercept:.2f} (95% CI ")
    # a small count hides no more than before, and the level's counts are masked as before
    assert ward_a["Events"] == "<11"


def test_long_group_summary_gives_calibration_ranges():
    rng = np.random.default_rng(8)
    n = 4000
    frame = pd.DataFrame({"level": "Hospital " + pd.Series(rng.integers(1, 26, n)).astype(str),
                          "risk": expit(rng.normal(-1.2, 1.0, n))})
    frame["died"] = rng.binomial(1, frame.risk)
    part = evaluate.subgroup_performance(frame, outcome="died", prediction="risk", by="level")
    table, rows = evaluate.format_subgroups([("Hospital", part, True)], threshold=11, groups="hospitals",
                                            calibration=True)
    assert len(table) == 1 and len(rows) == 25
    listed = part[(part.events >= 11) & (part.n - part.events >= 11)]
    assert table.iloc[0]["Calibration slope (95% CI)"] == (
        f"range {listed.calibration_slope.min():.2f} to {listed.calibration_slope.max():.2f} across {len(listed)} hospitals")
    assert table.iloc[0]["Calibration intercept (95% CI)"].startswith(f"range {listed.calibration_intercept.min():.2f} ")
    assert list(rows.columns) == list(table.columns)


# --- figures -----------------------------------------------------------------------------

def test_figures_save_through_house_function(simulated, tmp_path):
    set_style()
    fig, axes = plt.subplots(2, 2, figsize=(7, 7))
    assert figures.plot_roc(simulated.died, simulated.risk, ax=axes[0, 0]) is axes[0, 0]
    assert figures.plot_calibration((simulated.died, simulated.risk), n_boot=5,
                                    ax=axes[0, 1]) is axes[0, 1]
    nb = evaluate.net_benefit(simulated.died, simulated.risk)
    assert figures.plot_decision_curve(nb, ax=axes[1, 0]) is axes[1, 0]
    survival = simulated.assign(days=np.arange(len(simulated)) % 30 + 1.0)
    assert figures.plot_kaplan_meier(survival, duration="days", event="died", group="hospital",
                                     ax=axes[1, 1]) is axes[1, 1]
    assert len(axes[1, 1].lines) == simulated.hospital.nunique()
    paths = save_figure(fig, tmp_path / "performance")
    assert all(path.stat().st_size > 0 for path in paths)
    plt.close(fig)


def test_calibration_histogram_masks_small_bins():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.2, 0.3, 500), [0.9] * 3]  # three patients alone near 0.9
    y = rng.binomial(1, p)
    ax = figures.plot_calibration((y, p), n_boot=0, threshold=11)
    assert all(patch.get_height() == 0 for patch in ax.patches if patch.get_x() > 0.8)
    plt.close("all")


# --- slow: coverage of the DeLong interval -----------------------------------------------

@pytest.mark.slow
def test_delong_interval_coverage():
    "The 95% DeLong interval covers the true AUROC about 95% of the time."
    rng = np.random.default_rng(123)
    true_auc = stats.norm.cdf(1 / np.sqrt(2))  # binormal, separation 1
    covered = 0
    for _ in range(1000):
        y = rng.binomial(1, 0.3, 300)
        score = rng.normal(size=300) + y
        result = evaluate.auroc(y, expit(score))
        covered += result["low"] <= true_auc <= result["high"]
    assert 0.93 <= covered / 1000 <= 0.97


def test_subgroup_table_at_100_hospitals_stays_short_and_sorts_naturally():
    """Table S3 at 100 hospitals: one summary row for them, their rows in natural order for the supplement,
    and the O/E of each hospital against the expected risk given (not its own predictions)."""
    from clinpaper.evaluate import format_subgroups, subgroup_performance
    rng = np.random.default_rng(3)
    n = 6000
    hospital = rng.integers(1, 101, n)
    effect = np.where(hospital == 7, 1.0, 0.0)            # one hospital with a large effect
    base = rng.normal(-1.5, 0.8, n)
    frame = pd.DataFrame({"hospital": "Hospital " + pd.Series(hospital).astype(str),
                          "sex": np.where(rng.uniform(size=n) < 0.5, "Female", "Male"),
                          "case_mix": 1 / (1 + np.exp(-base)), "risk": 1 / (1 + np.exp(-(base + effect)))})
    frame["died"] = rng.binomial(1, frame["risk"])
    parts = [("Sex", subgroup_performance(frame, outcome="died", prediction="risk", by="sex").rename(
                 columns={"sex": "level"}), False),
             ("Hospital", subgroup_performance(frame.rename(columns={"hospital": "level"}), outcome="died",
                                               prediction="risk", by="level", expected="case_mix"), True)]
    table, hospitals = format_subgroups(parts, threshold=11, groups="hospitals", where="tables/x.csv")
    assert len(table) == 3 and len(hospitals) == 100
    assert hospitals["Level"].tolist()[:11] == [f"Hospital {i}" for i in range(1, 12)]
    seventh = parts[1][1].set_index("level").loc["Hospital 7"]
    assert seventh["observed_expected"] > 1.5              # against the case mix alone, clearly above 1
    own = frame[frame.hospital == "Hospital 7"]
    assert abs(own["died"].sum() / own["risk"].sum() - 1) < 0.3   # against its own predictions, about 1


# --- every bootstrap estimate inside its interval; the ICI's interval covers the true ICI --------

def simulated_model(n_rows, seed, shift, slope):
    "Outcomes from known risks, and predictions that are miscalibrated by `shift` and `slope` (logit scale)."
    rng = np.random.default_rng(seed)
    linear = rng.normal(-1.5, 1.0, n_rows)
    return rng.binomial(1, expit(linear)), expit(shift + slope * linear)


MODELS = {"calibrated": (0.0, 1.0), "overestimating": (0.3, 1.0), "overconfident": (0.0, 1.5),
          "underconfident": (0.1, 0.7)}


@pytest.mark.parametrize("n_rows", [150, 600, 2000])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_bootstrap_estimate_lies_inside_its_interval(n_rows, model):
    for seed in range(3):
        y, p = simulated_model(n_rows, 100 * seed + n_rows, *MODELS[model])
        table = evaluate.performance_summary(y, p, n_boot=30, seed=seed)
        boot = table[table["method"] == "bootstrap (30)"]
        assert len(boot) == 6
        assert ((boot.low <= boot.estimate) & (boot.estimate <= boot.high)).all(), boot
        assert (boot.set_index("metric").loc[["ici", "e50", "e90"], "low"] >= 0).all()
        # the estimate is the usual statistic, not a corrected one
        shown = boot.set_index("metric")["estimate"]
        assert shown["ici"] == pytest.approx(evaluate.ici(y, p)["ici"], abs=1e-15)
        assert shown["brier"] == pytest.approx(np.mean((y - p) ** 2), abs=1e-15)
        curve = evaluate.calibration_curve(y, p, n_boot=30, seed=seed)
        assert ((curve.low <= curve.observed) & (curve.observed <= curve.high)).all()
        auc = evaluate.auroc(y, p, ci="bootstrap", n_boot=200, seed=seed)
        assert auc["low"] <= auc["estimate"] <= auc["high"]


def true_ici(shift, slope, *, size=2_000_000):
    "The ICI of the population: mean |true risk - predicted risk| (the true calibration curve is the known risk)."
    linear = np.random.default_rng(0).normal(-1.5, 1.0, size)
    return float(np.mean(np.abs(expit(linear) - expit(shift + slope * linear))))


# CI runs 50 replicates (about 2 minutes); CLINPAPER_ICI_REPLICATES=200 gives the study quoted below
REPLICATES = int(os.environ.get("CLINPAPER_ICI_REPLICATES", "50"))


@pytest.mark.slow
def test_ici_interval_covers_the_true_ici():
    """A miscalibrated model (true ICI 0.033, from the known risks), 1,500 patients, 200 replicates: the
    95% interval covers the true ICI at about the nominal rate and always holds its estimate. (Simulations
    of 500 to 2,000 patients gave 87-92%, this one 89.5%; LOWESS's smoothing bias keeps it a little below 95%.)"""
    shift, slope = 0.1, 0.9
    truth = true_ici(shift, slope)
    covered = 0
    for replicate in range(REPLICATES):
        y, p = simulated_model(1500, 10_000 + replicate, shift, slope)
        row = evaluate.performance_summary(y, p, n_boot=100, seed=replicate).set_index("metric").loc["ici"]
        assert row["low"] <= row["estimate"] <= row["high"]
        covered += row["low"] <= truth <= row["high"]
    # at a true coverage of 0.895, 50 replicates fall below 0.76 with a chance of about 1 in 700
    assert (0.85 if REPLICATES >= 200 else 0.76) <= covered / REPLICATES <= 0.99, covered
