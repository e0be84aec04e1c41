"""clinpaper.evaluate: contracts, bad input, its figures (clinpaper.figures) saved through save_figure, and
checks against independent computations (scipy, scikit-learn, dcurves, statsmodels)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import os

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
    ([0, 1, 1], [0.1, 1.2, 0.3], "probabilities in [0, 1]"),
    ([0, 1, np.nan], [0.1, 0.2, 0.3], "`y` has 1 missing values"),
    ([0, 0, 0], [0.1, 0.2, 0.3], "single class"),
])
def test_bad_input_messages(y, p, message):
    for function in (evaluate.auroc, evaluate.auprc, evaluate.calibration_intercept_slope,
                     evaluate.ici):
        with pytest.raises(ClinpaperError) as info:
            function(y, p)
        assert message in str(info.value)
        assert isinstance(info.value, ValueError)


def test_messages_never_show_values():
    p = np.array([0.123456, 1.987654, 0.2])
    with pytest.raises(evaluate.EvaluationError) as info:
        evaluate.auroc([0, 1, 0], p)
    assert "1.98" not in str(info.value)


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
