"""clinpaper.comparative against independent computations: scikit-learn's and statsmodels' logistic
regressions, SMDs by hand and by describe.table_one, lifelines' Kaplan-Meier, statsmodels' Cox model
(PHReg) on copied rows, a Cox model written out in numpy, Rossi's recidivism data, and simulated
new-user cohorts whose true risk difference and hazard ratio are known. Also the contracts (inputs
never changed, index kept, seeded) and the error messages."""
import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi
from scipy.special import expit
from statsmodels.duration.hazard_regression import PHReg

from clinpaper.comparative import (MAX_INTERVAL_SPAN, balancing_weights, mask_table_one, propensity_scores,
                                   propensity_weighting, ratio_check, risk_difference, separating_covariates,
                                   treatment_indicator, weight_summary, weighted_balance, weighted_cox,
                                   weighted_kaplan_meier, withheld_sentence)
from clinpaper.core import CohortError
from clinpaper.describe import table_one

pytestmark = pytest.mark.filterwarnings("ignore::lifelines.exceptions.StatisticalWarning")

COVARIATES = ["age", "male", "peptic_ulcer"]
LOG_HR = -0.4


def linear_treatment(age, male, ulcer):
    return -0.6 + 0.05 * (age - 60) + 1.2 * ulcer - 0.3 * male


def baseline_rate(age, male, ulcer):
    return 0.25 / 365 * np.exp(0.04 * (age - 60) + 0.9 * ulcer + 0.3 * male)


def simulate(n=4000, *, seed=0, log_hr=LOG_HR):
    "New users: older, female and ulcer patients channelled to the treated drug; exponential outcome."
    rng = np.random.default_rng(seed)
    age, male, ulcer = rng.normal(60, 12, n), rng.binomial(1, 0.45, n), rng.binomial(1, 0.25, n)
    treated = rng.binomial(1, expit(linear_treatment(age, male, ulcer)))
    event_time = rng.exponential(1 / (baseline_rate(age, male, ulcer) * np.exp(log_hr * treated)))
    end = np.minimum(rng.uniform(30, 1500, n), 365.0)
    return pd.DataFrame({"age": age, "male": male, "peptic_ulcer": ulcer, "celecoxib": treated,
                         "days": np.minimum(event_time, end), "gi_bleed": (event_time <= end).astype(int)})


@pytest.fixture(scope="module")
def population():
    "A large population with both potential outcomes: the truth every estimate is compared with."
    n = 40_000
    rng = np.random.default_rng(2024)
    age, male, ulcer = rng.normal(60, 12, n), rng.binomial(1, 0.45, n), rng.binomial(1, 0.25, n)
    score = expit(linear_treatment(age, male, ulcer))
    rate = baseline_rate(age, male, ulcer)
    unit = rng.exponential(size=n)
    end = np.minimum(rng.uniform(30, 1500, n), 365.0)
    truth = {}
    for estimand, weight in (("ATO", score * (1 - score)), ("ATE", np.ones(n))):
        # risks at one year are exact given x; averaged over a million x for the risk difference
        big = np.random.default_rng(7)
        a, m, u = big.normal(60, 12, 10 ** 6), big.binomial(1, 0.45, 10 ** 6), big.binomial(1, 0.25, 10 ** 6)
        e = expit(linear_treatment(a, m, u))
        w = e * (1 - e) if estimand == "ATO" else np.ones(10 ** 6)
        r = baseline_rate(a, m, u)
        risk1 = np.average(1 - np.exp(-365 * r * np.exp(LOG_HR)), weights=w)
        risk0 = np.average(1 - np.exp(-365 * r), weights=w)
        # the marginal hazard ratio: a weighted Cox model of both potential outcomes of every patient
        stacked = []
        for arm in (1, 0):
            time = unit / (rate * np.exp(LOG_HR * arm))
            stacked.append(pd.DataFrame({"days": np.minimum(time, end), "event": (time <= end).astype(int),
                                         "arm": arm, "w": weight}))
        fit = CoxPHFitter().fit(pd.concat(stacked), "days", "event", weights_col="w")
        truth[estimand] = {"risk_difference": risk1 - risk0, "risk_ratio": risk1 / risk0,
                           "log_hazard_ratio": float(fit.params_["arm"])}
    return truth


@pytest.fixture(scope="module")
def cohort():
    data = simulate(seed=1)
    score = propensity_scores(data, treatment="celecoxib", covariates=COVARIATES)
    data = data.assign(score=score)
    return data.assign(overlap=balancing_weights(data, treatment="celecoxib", score="score"),
                       iptw=balancing_weights(data, treatment="celecoxib", score="score", method="iptw",
                                              trim=(0.1, 0.9)))


# --- propensity scores --------------------------------------------------------------------------

def test_propensity_scores_match_sklearn_and_statsmodels_logit(cohort):
    from sklearn.linear_model import LogisticRegression
    import statsmodels.api as sm

    x = cohort[COVARIATES].to_numpy(float)
    treated = cohort["celecoxib"].to_numpy()
    scaled = (x - x.mean(axis=0)) / x.std(axis=0)   # lbfgs converges tightly on scaled covariates
    sklearn_scores = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(scaled, treated) \
        .predict_proba(scaled)[:, 1]
    logit_scores = sm.Logit(treated, sm.add_constant(x)).fit(disp=0).predict(sm.add_constant(x))
    np.testing.assert_allclose(cohort["score"], sklearn_scores, atol=1e-7)
    np.testing.assert_allclose(cohort["score"], logit_scores, atol=1e-10)


def test_scores_keep_the_index_and_the_input_is_unchanged():
    data = simulate(500, seed=3)
    data.index = [f"p{k}" for k in np.random.default_rng(0).permutation(len(data))]
    before = data.copy()
    score = propensity_scores(data, treatment="celecoxib", covariates=COVARIATES)
    weights = balancing_weights(data.assign(score=score), treatment="celecoxib", score="score", method="iptw")
    balance = weighted_balance(data.assign(w=weights), treatment="celecoxib", covariates=COVARIATES, weights="w")
    weighted_kaplan_meier(data.assign(w=weights), duration="days", event="gi_bleed", weights="w", horizon=365,
                          treatment="celecoxib")
    risk_difference(data, treatment="celecoxib", duration="days", event="gi_bleed", n_boot=10, horizon=365,
                    weights=propensity_weighting(treatment="celecoxib", covariates=COVARIATES))
    weighted_cox(data.assign(w=weights), treatment="celecoxib", duration="days", event="gi_bleed", weights="w")
    pd.testing.assert_frame_equal(data, before)
    assert score.index.equals(data.index) and weights.index.equals(data.index)
    assert len(balance) == 2 * len(COVARIATES)


def test_boolean_treatment_and_covariates_are_accepted():
    data = simulate(600, seed=4)
    as_bool = data.assign(celecoxib=data["celecoxib"].astype(bool), male=data["male"].astype(bool))
    np.testing.assert_allclose(propensity_scores(as_bool, treatment="celecoxib", covariates=COVARIATES),
                               propensity_scores(data, treatment="celecoxib", covariates=COVARIATES))


def test_treatment_indicator_from_an_exposure_column():
    data = pd.DataFrame({"exposure": ["diclofenac", "celecoxib", "celecoxib"]}, index=[10, 11, 12])
    made = treatment_indicator(data, exposure="exposure", treated="celecoxib")
    assert made.tolist() == [0, 1, 1] and made.index.tolist() == [10, 11, 12]


# --- weights and balance ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_overlap_weights_balance_every_model_covariate_exactly(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    data = pd.DataFrame({"age": rng.normal(65, 10, n), "lactate": rng.lognormal(0.5, 0.6, n),
                         "male": rng.binomial(1, 0.5, n), "diabetes": rng.binomial(1, 0.2, n)})
    data["treated"] = rng.binomial(1, expit(-3 + 0.04 * data.age + 0.5 * data.lactate - 0.4 * data.male
                                            + 0.8 * data.diabetes))
    columns = ["age", "lactate", "male", "diabetes"]
    data["score"] = propensity_scores(data, treatment="treated", covariates=columns)
    data["w"] = balancing_weights(data, treatment="treated", score="score")
    balance = weighted_balance(data, treatment="treated", covariates=columns, weights="w")
    before = balance[balance.weighting == "unweighted"].smd.abs()
    after = balance[balance.weighting == "weighted"].smd.abs()
    assert before.max() > 0.1          # there was imbalance to remove
    assert after.max() < 1e-8          # and overlap weights remove all of it from the means
    # a covariate left out of the model is not balanced exactly
    data["noise"] = data["age"] ** 2 + rng.normal(0, 50, n)
    left_out = weighted_balance(data, treatment="treated", covariates=["noise"], weights="w")
    assert left_out.smd.abs().iloc[1] > 1e-6


def test_smds_by_hand_with_numpy(cohort):
    treated = cohort["celecoxib"].to_numpy() == 1
    w = cohort["iptw"].to_numpy()   # trimmed: zero weights included
    balance = weighted_balance(cohort, treatment="celecoxib", covariates=COVARIATES, weights="iptw")
    rows = balance.set_index(["covariate", "weighting"])["smd"]
    for name in COVARIATES:
        x = cohort[name].to_numpy(float)
        means, variances = [], []
        for arm in (treated, ~treated):
            weights = w[arm]
            mean = np.sum(weights * x[arm]) / np.sum(weights)
            if name == "age":
                variance = np.sum(weights) / (np.sum(weights) ** 2 - np.sum(weights ** 2)) \
                    * np.sum(weights * (x[arm] - mean) ** 2)
            else:
                variance = mean * (1 - mean)
            means.append(mean)
            variances.append(variance)
        expected = (means[0] - means[1]) / np.sqrt(sum(variances) / 2)
        assert rows[(name, "weighted")] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("weights", [None, "overlap", "iptw"])
def test_smds_equal_table_one(cohort, weights):
    balance = weighted_balance(cohort, treatment="celecoxib", covariates=COVARIATES, weights=weights)
    ours = balance[balance.weighting == ("weighted" if weights else "unweighted")].set_index("covariate").smd.abs()
    described = cohort.assign(arm=np.where(cohort["celecoxib"] == 1, "treated", "comparator"))
    table = table_one(described, columns=COVARIATES, group="arm", weights=weights)
    theirs = table.groupby("variable").smd.first()
    for name in COVARIATES:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-10)


def test_trimming_counts_and_weight_summary(cohort):
    outside = (cohort["score"] < 0.1) | (cohort["score"] > 0.9)
    weights = balancing_weights(cohort, treatment="celecoxib", score="score", method="iptw", trim=(0.1, 0.9))
    assert weights.attrs["n_trimmed"] == outside.sum() > 0
    assert weights.attrs["n_trimmed_treated"] + weights.attrs["n_trimmed_comparator"] == outside.sum()
    assert (weights[outside] == 0).all()
    summary = weight_summary(cohort.assign(w=weights), treatment="celecoxib", weights="w").set_index("arm")
    assert summary.n_zero_weight.sum() == outside.sum()
    kept = weights[(cohort["celecoxib"] == 0) & ~outside]
    assert summary.loc["comparator", "effective_n"] == pytest.approx(kept.sum() ** 2 / (kept ** 2).sum())
    assert summary.loc["comparator", "max_weight"] == pytest.approx(kept.max())


# --- Kaplan-Meier -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_kaplan_meier_matches_lifelines(seed):
    rng = np.random.default_rng(seed)
    n = 700
    data = pd.DataFrame({"days": rng.integers(0, 60, n).astype(float), "event": rng.binomial(1, 0.3, n),
                         "treated": rng.binomial(1, 0.5, n), "w": rng.uniform(0, 3, n)})
    data.loc[data.index[:20], "w"] = 0.0     # rows of weight 0 (trimmed)
    horizons = [-0.0, 0.0, 7.5, 30, 59, 100]
    ours = weighted_kaplan_meier(data, duration="days", event="event", weights="w", horizon=horizons,
                                 treatment="treated")
    for arm, code in (("treated", 1), ("comparator", 0)):
        rows = (data.treated == code) & (data.w > 0)
        fitted = KaplanMeierFitter().fit(data.days[rows], data.event[rows], weights=data.w[rows])
        expected = 1 - fitted.survival_function_at_times(horizons).to_numpy()
        np.testing.assert_allclose(ours[ours.arm == arm].risk.to_numpy(), expected, atol=1e-12)


# --- Cox ----------------------------------------------------------------------------------------

def test_weighted_cox_with_whole_number_weights_equals_phreg_on_copied_rows(cohort):
    part = cohort.iloc[:1200].assign(copies=np.random.default_rng(5).integers(1, 5, 1200).astype(float))
    expanded = part.assign(row=np.arange(len(part))).loc[lambda d: d.index.repeat(d.copies)]
    reference = PHReg(expanded.days, expanded[["celecoxib"]], status=expanded.gi_bleed, ties="breslow") \
        .fit(groups=expanded.row.to_numpy())
    ours = weighted_cox(part, treatment="celecoxib", duration="days", event="gi_bleed", weights="copies").iloc[0]
    assert ours.log_hazard_ratio == pytest.approx(reference.params[0], abs=1e-6)
    assert ours.se == pytest.approx(reference.bse[0], abs=1e-6)


def test_weighted_cox_equals_newton_raphson_and_sandwich_in_numpy(cohort):
    order = np.argsort(-cohort["days"].to_numpy())
    time, event = cohort["days"].to_numpy()[order], cohort["gi_bleed"].to_numpy(float)[order]
    x, w = cohort["celecoxib"].to_numpy(float)[order], cohort["overlap"].to_numpy()[order]
    beta = 0.0
    for _ in range(30):
        r = w * np.exp(beta * x)
        s0, s1 = np.cumsum(r), np.cumsum(r * x)
        mean = s1 / s0
        information = np.sum(w * event * (mean - mean ** 2))   # x is 0/1: x^2 = x
        beta += np.sum(w * event * (x - mean)) / information
    residual = event * (x - mean) - np.exp(beta * x) * (x * np.cumsum((w * event / s0)[::-1])[::-1]
                                                        - np.cumsum((w * event * mean / s0)[::-1])[::-1])
    se = np.sqrt(np.sum((w * residual) ** 2)) / information
    ours = weighted_cox(cohort, treatment="celecoxib", duration="days", event="gi_bleed", weights="overlap").iloc[0]
    assert ours.log_hazard_ratio == pytest.approx(beta, abs=1e-6)
    assert ours.se == pytest.approx(se, abs=1e-6)
    assert ours.low == pytest.approx(np.exp(beta - 1.959964 * se), rel=1e-5)


def test_crude_cox_on_rossi_equals_statsmodels_which_reproduces_the_published_fit():
    rossi = load_rossi()
    full = PHReg(rossi.week, rossi.drop(columns=["week", "arrest"]), status=rossi.arrest, ties="efron").fit()
    # Fox and Weisberg, "Cox proportional-hazards regression for survival data in R" (2011), Rossi model
    np.testing.assert_allclose(full.params, [-0.3794, -0.0574, 0.3139, -0.1498, -0.4337, -0.0849, 0.0915],
                               atol=5e-5)
    single = PHReg(rossi.week, rossi[["fin"]], status=rossi.arrest, ties="efron").fit()
    ours = weighted_cox(rossi, treatment="fin", duration="week", event="arrest").iloc[0]
    assert ours.log_hazard_ratio == pytest.approx(single.params[0], abs=1e-6)
    assert ours.se == pytest.approx(single.bse[0], abs=1e-6)
    assert ours.variance == "model-based" and ours.n_events == rossi.arrest.sum()


# --- recovery of a known effect ----------------------------------------------------------------

@pytest.mark.parametrize("method, estimand", [("overlap", "ATO"), ("iptw", "ATE"), ("iptw_stabilized", "ATE")])
def test_weighted_estimates_recover_the_true_effect(population, method, estimand):
    truth = population[estimand]
    crude_errors = []
    for seed in range(6):
        data = simulate(seed=200 + seed)
        data = data.assign(w=propensity_weighting(treatment="celecoxib", covariates=COVARIATES, method=method)(data))
        risk = weighted_kaplan_meier(data, duration="days", event="gi_bleed", weights="w", horizon=365,
                                     treatment="celecoxib").risk.to_numpy()
        assert abs(risk[0] - risk[1] - truth["risk_difference"]) < 0.03, (seed, risk)
        assert abs(risk[0] / risk[1] - truth["risk_ratio"]) < 0.1, (seed, risk)
        hazard = weighted_cox(data, treatment="celecoxib", duration="days", event="gi_bleed", weights="w").iloc[0]
        assert abs(hazard.log_hazard_ratio - truth["log_hazard_ratio"]) < 3 * hazard.se, (seed, hazard.hazard_ratio)
        crude = weighted_kaplan_meier(data, duration="days", event="gi_bleed", horizon=365,
                                      treatment="celecoxib").risk.to_numpy()
        crude_errors.append(crude[0] - crude[1] - truth["risk_difference"])
    assert min(crude_errors) > 0.06   # confounding the weights removed


def test_interval_of_the_refitted_bootstrap_covers_the_truth(population):
    truth = population["ATO"]["risk_difference"]
    weigh = propensity_weighting(treatment="celecoxib", covariates=COVARIATES)
    covered = 0
    for seed in range(4):
        data = simulate(2000, seed=300 + seed)
        result = risk_difference(data, treatment="celecoxib", duration="days", event="gi_bleed", weights=weigh,
                                 horizon=365, n_boot=150, seed=seed).set_index("measure")
        covered += result.loc["risk_difference", "low"] < truth < result.loc["risk_difference", "high"]
        # the SD of the estimate over 60 simulated cohorts of 2,000 is 0.022
        assert result.loc["risk_difference", "se"] == pytest.approx(0.022, rel=0.3)
    assert covered >= 3


@pytest.mark.slow
def test_bootstrap_standard_error_matches_the_sampling_sd():
    weigh = propensity_weighting(treatment="celecoxib", covariates=COVARIATES)
    estimates, standard_errors = [], []
    for seed in range(40):
        data = simulate(1500, seed=400 + seed)
        result = risk_difference(data, treatment="celecoxib", duration="days", event="gi_bleed", weights=weigh,
                                 horizon=365, n_boot=100, seed=seed).set_index("measure")
        estimates.append(result.loc["risk_difference", "estimate"])
        standard_errors.append(result.loc["risk_difference", "se"])
    assert np.mean(standard_errors) == pytest.approx(np.std(estimates, ddof=1), rel=0.25)


# --- bootstrap mechanics ------------------------------------------------------------------------

def test_bootstrap_is_seeded(cohort):
    arguments = dict(treatment="celecoxib", duration="days", event="gi_bleed", horizon=365, n_boot=50,
                     weights=propensity_weighting(treatment="celecoxib", covariates=COVARIATES))
    first, second = risk_difference(cohort, seed=3, **arguments), risk_difference(cohort, seed=3, **arguments)
    pd.testing.assert_frame_equal(first, second)
    other = risk_difference(cohort, seed=4, **arguments)
    assert (other.estimate == first.estimate).all() and (other.low != first.low).any()
    assert first.attrs["refit"] and first.attrs["n_failed"] == 0
    assert "logistic propensity score on age, male, peptic_ulcer" in first.attrs["weights"]


def test_fixed_weight_bootstrap_equals_a_loop_by_hand(cohort):
    result = risk_difference(cohort, treatment="celecoxib", duration="days", event="gi_bleed", weights="overlap",
                             horizon=180, n_boot=40, seed=11).set_index("measure")
    rng = np.random.default_rng(11)
    differences = []
    for _ in range(40):
        sample = cohort.iloc[rng.integers(0, len(cohort), len(cohort))]
        risks = []
        for code in (1, 0):
            arm = sample[sample.celecoxib == code]
            fitted = KaplanMeierFitter().fit(arm.days, arm.gi_bleed, weights=arm.overlap)
            risks.append(1 - fitted.survival_function_at_times(180).iloc[0])
        differences.append(risks[0] - risks[1])
    low, high = np.percentile(differences, [2.5, 97.5])
    assert result.loc["risk_difference", "low"] == pytest.approx(low, abs=1e-12)
    assert result.loc["risk_difference", "high"] == pytest.approx(high, abs=1e-12)


def test_replicates_whose_weights_fail_are_counted_then_refused():
    data = simulate(400, seed=6)
    rare = np.zeros(len(data), dtype=int)
    comparator = np.flatnonzero(data.celecoxib == 0)
    rare[np.flatnonzero(data.celecoxib == 1)[:30]] = 1
    rare[comparator[:1]] = 1     # one comparator patient with the condition: absent from ~37% of resamples
    weigh = propensity_weighting(treatment="celecoxib", covariates=COVARIATES + ["rare"])
    with pytest.raises(CohortError, match="could not be computed in .* of 40 bootstrap replicates"):
        risk_difference(data.assign(rare=rare), treatment="celecoxib", duration="days", event="gi_bleed",
                        weights=weigh, horizon=365, n_boot=40, seed=0)
    rare[comparator[:8]] = 1     # eight: absent from a resample about once in three thousand
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = risk_difference(data.assign(rare=rare), treatment="celecoxib", duration="days",
                                 event="gi_bleed", weights=weigh, horizon=365, n_boot=40, seed=0)
    assert result.attrs["n_failed"] == 0


# --- no events, separation and other bad input --------------------------------------------------

def test_an_arm_without_events(cohort):
    silent = cohort.assign(gi_bleed=np.where(cohort.celecoxib == 0, 0, cohort.gi_bleed))
    with pytest.raises(CohortError, match="the comparator arm has no events among its"):
        weighted_cox(silent, treatment="celecoxib", duration="days", event="gi_bleed", weights="overlap")
    with pytest.warns(RuntimeWarning, match="risk ratio is not estimable"):
        result = risk_difference(silent, treatment="celecoxib", duration="days", event="gi_bleed",
                                 weights="overlap", horizon=365, n_boot=20).set_index("measure")
    assert result.loc["risk_comparator", "estimate"] == 0
    assert result.loc["risk_difference", "estimate"] == result.loc["risk_treated", "estimate"] > 0
    assert result.loc[["risk_ratio"], ["estimate", "low", "high"]].isna().all(axis=None)
    # lifelines left to itself returns a number for the hazard ratio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = CoxPHFitter().fit(silent[["days", "gi_bleed", "celecoxib", "overlap"]], "days", "gi_bleed",
                                weights_col="overlap", robust=True)
    assert raw.hazard_ratios_["celecoxib"] > 1000


def test_separation_is_refused_and_explained(cohort):
    quasi = cohort.assign(colitis=((cohort.celecoxib == 0) & (np.arange(len(cohort)) < 300)).astype(int))
    n = int(quasi.colitis.sum())
    with pytest.raises(CohortError, match=rf"`colitis` = 1 occurs only in the comparator arm \({n} rows\)"):
        propensity_scores(quasi, treatment="celecoxib", covariates=COVARIATES + ["colitis"])
    with pytest.raises(CohortError, match="predict the treatment perfectly"):
        propensity_scores(cohort.assign(celecoxib=(cohort.age > 60).astype(int)), treatment="celecoxib",
                          covariates=["age"])
    with pytest.raises(CohortError, match="is 0 or 1 in 2 of"):
        balancing_weights(cohort.assign(score=np.r_[0.0, 1.0, cohort.score.iloc[2:]]), treatment="celecoxib",
                          score="score", method="overlap")


BAD_INPUT = [
    (lambda d: propensity_scores(d.assign(celecoxib=d.celecoxib.replace(1, 2)), treatment="celecoxib",
                                 covariates=COVARIATES), CohortError, "got values {2} in"),
    (lambda d: propensity_scores(d.assign(celecoxib=np.where(d.index < 5, np.nan, d.celecoxib)),
                                 treatment="celecoxib", covariates=COVARIATES), CohortError, "5 missing values"),
    (lambda d: propensity_scores(d.assign(celecoxib="x"), treatment="celecoxib", covariates=COVARIATES),
     TypeError, "treatment_indicator"),
    (lambda d: propensity_scores(d.assign(age=np.where(d.index < 7, np.nan, d.age)), treatment="celecoxib",
                                 covariates=COVARIATES), CohortError, "7 of 4,000 rows have missing"),
    (lambda d: propensity_scores(d, treatment="celecoxib", covariates=[]), ValueError, "is empty"),
    (lambda d: propensity_scores(d, treatment="celecoxib", covariates=["age", "age"]), ValueError, "twice"),
    (lambda d: propensity_scores(d.iloc[:0], treatment="celecoxib", covariates=COVARIATES), CohortError, "0 rows"),
    (lambda d: propensity_scores(d.to_numpy(), treatment="celecoxib", covariates=COVARIATES), TypeError,
     "expects a pandas DataFrame"),
    (lambda d: propensity_scores(d, treatment=1, covariates=COVARIATES), TypeError, "must be a column name"),
    (lambda d: balancing_weights(d, treatment="celecoxib", score="score", trim=0.7), ValueError, "`trim` must"),
    (lambda d: balancing_weights(d, treatment="celecoxib", score="score", method="ate"), ValueError, "`method`"),
    (lambda d: balancing_weights(d.assign(score=d.score * 2), treatment="celecoxib", score="score"),
     CohortError, "probabilities in [0, 1]"),
    (lambda d: weighted_balance(d.assign(overlap=-d.overlap), treatment="celecoxib", covariates=COVARIATES,
                                weights="overlap"), CohortError, "4,000 of 4,000 rows are missing, negative"),
    (lambda d: weighted_kaplan_meier(d.assign(gi_bleed=2), duration="days", event="gi_bleed", horizon=365),
     CohortError, "must be 1 (event) or 0 (censored)"),
    (lambda d: weighted_kaplan_meier(d, duration="days", event="gi_bleed", horizon="one year"), ValueError,
     "`horizon`"),
    (lambda d: weighted_kaplan_meier(d.assign(w=np.where(d.celecoxib == 1, 0.0, 1.0)), duration="days",
                                     event="gi_bleed", weights="w", horizon=365, treatment="celecoxib"),
     CohortError, "every treated row has weight 0"),
    (lambda d: risk_difference(d, treatment="celecoxib", duration="days", event="gi_bleed", weights="overlap",
                               horizon=365, n_boot=5), ValueError, "at least 10"),
    (lambda d: weighted_cox(d, treatment="celecoxib", duration="days", event="gi_bleed", weights="nope"),
     ValueError, "lack the column(s) 'nope'"),
    (lambda d: treatment_indicator(d.assign(drug=None), exposure="drug", treated="a"), CohortError,
     "missing in 4,000 of 4,000 rows"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUT)
def test_bad_input_says_what_and_how_many(cohort, call, error, message):
    with pytest.raises(error) as raised:
        call(cohort)
    assert message in str(raised.value)


# --- guards before publication ------------------------------------------------------------------

WORDS = dict(outcome="gastrointestinal hemorrhage", window="within 180 days",
             labels={"treated": "ibuprofen", "comparator": "naproxen"})


def test_an_arm_without_events_gets_no_ratio_and_the_reason(cohort):
    "What lifelines returns for an arm without events is a number; the guard withholds it and says why."
    silent = cohort.assign(gi_bleed=np.where(cohort.celecoxib == 0, 0, cohort.gi_bleed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = CoxPHFitter().fit(silent[["days", "gi_bleed", "celecoxib", "overlap"]], "days", "gi_bleed",
                                weights_col="overlap", robust=True).summary.loc["celecoxib"]
    events = silent.groupby("celecoxib").gi_bleed.sum()
    check = ratio_check(raw["exp(coef)"], raw["exp(coef) lower 95%"], raw["exp(coef) upper 95%"],
                        events_treated=int(events[1]), events_comparator=int(events[0]))
    assert raw["exp(coef)"] > 1000 and not check["reportable"]
    assert check["reason"] == "no_events" and check["arms_without_events"] == ["comparator"]
    assert withheld_sentence({"hazard ratio": check}, **WORDS) == (
        "No patient of the naproxen group had gastrointestinal hemorrhage within 180 days, so no hazard "
        "ratio could be estimated.")
    fine = weighted_cox(cohort, treatment="celecoxib", duration="days", event="gi_bleed", weights="overlap").iloc[0]
    events = cohort.groupby("celecoxib").gi_bleed.sum()
    assert ratio_check(fine.hazard_ratio, fine.low, fine.high, events_treated=int(events[1]),
                       events_comparator=int(events[0]))["reportable"]


@pytest.mark.parametrize("values, reason", [
    ((2.0, 0.9, np.inf), "not_finite"), ((2.0, 0.0, 9.0), "not_finite"), ((np.nan,) * 3, "not_finite"),
    ((150.0, 20.0, 900.0), "extreme"), ((0.005, 0.001, 0.02), "extreme"),
    ((3.0, 0.09, 95.0), "wide"), ((3.0, 0.5, 24.0), None), ((0.8, 0.6, 1.1), None)])
def test_ratio_guard_reasons(values, reason):
    check = ratio_check(*values, events_treated=3, events_comparator=30)
    assert check["reason"] == reason and check["reportable"] == (reason is None)
    sentence = withheld_sentence({"risk ratio": check}, **WORDS)
    assert (sentence == "") == (reason is None)
    for value in values:   # a withheld estimate never reaches the text as a number
        assert reason is None or not np.isfinite(value) or f"{value:.2f}" not in sentence


def test_a_single_event_makes_the_interval_span_the_axis():
    "lifelines' crude Cox interval with 1 event against 40: wider than MAX_INTERVAL_SPAN; with 2, narrower."
    rng = np.random.default_rng(8)
    spans = {}
    for k in (1, 2):
        n = 600
        data = pd.DataFrame({"treated": np.r_[np.ones(n // 2), np.zeros(n // 2)],
                             "days": rng.uniform(1, 180, n), "event": 0})
        data.loc[rng.choice(n // 2, k, replace=False), "event"] = 1
        data.loc[n // 2 + rng.choice(n // 2, 40, replace=False), "event"] = 1
        row = CoxPHFitter().fit(data, "days", "event").summary.loc["treated"]
        spans[k] = row["exp(coef) upper 95%"] / row["exp(coef) lower 95%"]
        check = ratio_check(row["exp(coef)"], row["exp(coef) lower 95%"], row["exp(coef) upper 95%"],
                            events_treated=k, events_comparator=40)
        assert check["reason"] == ("wide" if k == 1 else None)
    assert spans[1] > MAX_INTERVAL_SPAN > spans[2]


def test_separating_covariates_agree_with_a_crosstab(cohort):
    data = cohort.assign(colitis=((cohort.celecoxib == 1) & (np.arange(len(cohort)) < 200)).astype(int),
                         everyone=np.where(cohort.celecoxib == 0, 1, cohort.male))
    found = separating_covariates(data, treatment="celecoxib", covariates=COVARIATES + ["colitis", "everyone"])
    for row in found.itertuples():
        crossed = pd.crosstab(data[row.covariate], data.celecoxib)
        other = 0 if row.arm == "treated" else 1
        assert crossed.loc[row.level, other] == 0 and crossed.loc[row.level].sum() == row.n
    assert set(zip(found.covariate, found.level, found.arm)) == {("colitis", 1, "treated"),
                                                                   ("everyone", 0, "treated")}


# --- disclosure of a weighted Table 1 ------------------------------------------------------------

def _region_cohort(seed=3):
    rng = np.random.default_rng(seed)
    data = simulate(3000, seed=seed)
    data["region"] = rng.choice(["north", "south"], len(data), p=[0.6, 0.4])
    east = np.r_[np.flatnonzero(data.celecoxib == 1)[:8], np.flatnonzero(data.celecoxib == 0)[:3]]
    data.loc[data.index[east], "region"] = "east"   # 8 and 3 patients: small at thresholds 5 and 11
    data["iptw"] = rng.uniform(2.0, 4.0, len(data))
    data["drug"] = data.celecoxib.map({1: "Ibuprofen", 0: "Naproxen"})
    return data


@pytest.mark.parametrize("threshold", [5, 11, 60])
def test_weighted_counts_of_small_cells_are_masked(threshold):
    from clinpaper.describe import format_table_one
    data = _region_cohort()
    codebook = {"region": {"type": "categorical", "label": "Region"}}
    columns = ["age", "peptic_ulcer", "region"]
    before = table_one(data, columns=columns, group="drug", codebook=codebook)
    after = table_one(data, columns=columns, group="drug", codebook=codebook, weights="iptw")
    shown = mask_table_one(format_table_one(after, codebook=codebook, threshold=threshold), after,
                           unweighted=before, threshold=threshold)
    counts = pd.crosstab(data.region, data.drug)           # independent: pandas, unweighted
    weighted = data.pivot_table(index="region", columns="drug", values="iptw", aggfunc="sum")
    small = 0
    for region in counts.index:
        for drug in counts.columns:
            cell = shown.loc[f"    {region}", drug]
            if 0 < counts.loc[region, drug] < threshold:
                small += 1
                assert cell.startswith(f"<{threshold} (<"), (region, drug, cell)
            elif cell not in ("–",) and not cell.startswith("<"):
                assert cell.startswith(f"{weighted.loc[region, drug]:,.0f} ("), (region, drug, cell)
    assert small > 0   # the table has cells to mask at every threshold tried
    text = " ".join(shown.to_numpy().ravel())
    assert f"<{threshold} (" in text and all(f"<{t} (" not in text for t in (5, 11, 60) if t != threshold)
    # complementary suppression: no masked cell can be worked out from a row or column sum
    rows, groups = [f"    {r}" for r in counts.index], ["Overall", *counts.columns]
    assert _derivable(shown, rows, groups) == set()
    # the unweighted table is protected by format_table_one itself (describe.suppress_table_one)
    plain = format_table_one(before, codebook=codebook, threshold=threshold)
    assert _derivable(plain, rows, groups) == set()
    assert threshold == 60 or (plain.loc[rows, groups] == "–").any(axis=None)


def _derivable(shown, rows, groups):
    "Masked cells that a reader can work out: repeatedly, a sum (row or column) with one unknown cell."
    unknown = {(r, g) for r in rows for g in groups if shown.loc[r, g].startswith(("<", "–"))}
    masked = {c for c in unknown if shown.loc[c].startswith("<")}
    found, changed = set(), True
    while changed:
        changed = False
        for cells in [[(r, g) for r in rows] for g in groups] + [[(r, g) for g in groups] for r in rows]:
            left = [c for c in cells if c in unknown]
            if len(left) == 1:
                unknown.discard(left[0])
                found |= {left[0]} & masked
                changed = True
    return found
