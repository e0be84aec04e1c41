"""clinpaper.checks across modules: baselines against independent fits, grouped folds, the checks
on a fitted HierarchicalLogistic (inputs unchanged, tables of the house shape), and the same checks
for a single-level model (group=None)."""
import logging

import numpy as np
import pandas as pd
import pytest

from clinpaper.checks import (cox_baseline, expected_risk, glm_baseline, grouped_folds, lightgbm_cv, loo_compare,
                              loo_summary, observed_expected_by_group, posterior_predictive_check, prior_predictive)
from clinpaper.core import CohortError
from clinpaper.models import HierarchicalLogistic

logging.getLogger("pymc").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(9)
    n = 1200
    df = pd.DataFrame({"hospital": rng.choice(list("ABCDEF"), n), "male": rng.integers(0, 2, n),
                       "sepsis": rng.binomial(1, 0.3, n), "los": rng.exponential(5, n) + 0.1})
    effect = df["hospital"].map(dict(zip("ABCDEF", [-0.5, -0.2, 0, 0.1, 0.3, 0.6])))
    df["death"] = rng.binomial(1, 1 / (1 + np.exp(-(-1.2 + 0.3 * df["male"] + 0.9 * df["sepsis"] + effect))))
    return df


@pytest.fixture(scope="module")
def fitted(cohort):
    return HierarchicalLogistic("death", "hospital", ["male", "sepsis"]).fit(
        cohort, draws=300, tune=300, chains=2, seed=1)


def test_grouped_folds_keep_groups_whole():
    groups = np.repeat(list("abcdefghij"), [50, 40, 30, 30, 20, 20, 10, 10, 5, 5])
    folds = grouped_folds(groups, n_splits=3, seed=0)
    assert pd.Series(folds).groupby(groups).nunique().eq(1).all()
    assert sorted(np.unique(folds)) == [0, 1, 2]
    np.testing.assert_array_equal(folds, grouped_folds(groups, n_splits=3, seed=0))


def test_glm_baseline_without_group_matches_plain_glm(cohort):
    import statsmodels.api as sm
    table = glm_baseline(cohort, outcome="death", predictors=["male", "sepsis"])
    plain = sm.Logit(cohort["death"], sm.add_constant(cohort[["male", "sepsis"]])).fit(disp=0)
    np.testing.assert_allclose(table["odds_ratio"], np.exp(plain.params[["male", "sepsis"]]), rtol=1e-6)
    np.testing.assert_allclose(table["p_value"], plain.pvalues[["male", "sepsis"]], rtol=1e-4)


def test_cox_baseline_columns_and_errors(cohort):
    table = cox_baseline(cohort, duration="los", event="death", predictors=["sepsis"], group="hospital")
    assert list(table.columns) == ["predictor", "hazard_ratio", "low", "high", "p_value"]
    with pytest.raises(CohortError, match="2 rows have missing values"):
        cox_baseline(cohort.assign(los=cohort["los"].where(cohort.index >= 2)), duration="los", event="death",
                     predictors=["sepsis"])


def test_lightgbm_cv_is_seeded_and_keeps_input(cohort):
    before = cohort.copy()
    first = lightgbm_cv(cohort, outcome="death", features=["male", "sepsis"], group="hospital", seed=2, n_splits=3)
    second = lightgbm_cv(cohort, outcome="death", features=["male", "sepsis"], group="hospital", seed=2, n_splits=3)
    pd.testing.assert_frame_equal(cohort, before)
    pd.testing.assert_frame_equal(first["predictions"], second["predictions"])
    assert 0.5 < first["auroc"]["estimate"] < 1


def test_checks_on_a_fitted_model(cohort, fitted):
    before = cohort.copy()
    ppc = posterior_predictive_check(fitted, cohort, n_draws=200, seed=1)
    oe = observed_expected_by_group(fitted, cohort, n_draws=200, seed=1)
    prior = prior_predictive(fitted, cohort, draws=50, seed=1)
    pd.testing.assert_frame_equal(cohort, before)
    counts = cohort.groupby("hospital")["death"].sum()
    assert ppc["observed"].tolist() == counts.tolist() == oe["observed"].tolist()
    # the hospital with the largest true effect (F) has the highest model-based ratio, the lowest (A) the lowest
    assert oe.loc[oe["smr"].idxmax(), "group"] == "F" and oe.loc[oe["smr"].idxmin(), "group"] == "A"
    assert len(prior) == 50 * 6 and prior["rate"].between(0, 1).all()
    # same seed, same table
    pd.testing.assert_frame_equal(oe, observed_expected_by_group(fitted, cohort, n_draws=200, seed=1))


def test_observed_expected_is_against_the_case_mix_alone(cohort, fitted):
    """O/E per hospital against an independent computation: a statsmodels GLM of the same predictors without
    hospitals (population-averaged risks), summed per hospital. The hospitals with the largest true effects have
    O/E clearly away from 1; with each hospital's own effect in the prediction the ratio would be about 1."""
    import statsmodels.api as sm
    oe = observed_expected_by_group(fitted, cohort, n_draws=200, seed=1).set_index("group")
    glm = sm.GLM(cohort["death"], sm.add_constant(cohort[["male", "sepsis"]]), family=sm.families.Binomial()).fit()
    observed = cohort.groupby("hospital")["death"].sum()
    glm_oe = observed / pd.Series(glm.predict(), index=cohort.index).groupby(cohort["hospital"]).sum()
    np.testing.assert_allclose(oe["oe"], glm_oe.loc[oe.index], rtol=0.06)
    assert oe.loc["F", "oe"] > 1.2 and oe.loc["A", "oe"] < 0.85       # true effects +0.6 and -0.5
    assert oe.loc["A", "oe_high"] < 1                                 # clearly fewer events than its case mix
    assert oe["oe"].idxmax() == "F" and oe["oe"].idxmin() == "A"
    own = observed / fitted.predict(cohort)["mean"].groupby(cohort["hospital"]).sum()
    assert abs(own["F"] - 1) < 0.1 and abs(own["A"] - 1) < 0.1       # what the ratio was with the own effect
    per_patient = expected_risk(fitted, cohort, n_draws=200)
    np.testing.assert_allclose(per_patient.groupby(cohort["hospital"]).sum().loc[oe.index], oe["expected"], rtol=1e-8)


def test_loo_summary_names_the_best_model_either_way():
    table = pd.DataFrame({"model": ["hierarchical", "unpooled", "pooled"], "elpd_loo": [-600.0, -603.5, -640.2],
                          "dse": [0.0, 2.0, 8.1]})
    claims = loo_summary(table, {"hierarchical": "Partial pooling"})
    assert claims["best"] == "hierarchical" and claims["best_name"] == "Partial pooling"
    assert claims["differences"]["pooled"] == {"difference": pytest.approx(-40.2), "se": 8.1}
    flipped = table.assign(elpd_loo=[-600.8, -603.5, -600.0])
    claims = loo_summary(flipped)
    assert claims["best"] == "pooled" and claims["differences"]["hierarchical"]["difference"] == pytest.approx(-0.8)
    assert claims["differences"]["pooled"] == {"difference": 0.0, "se": 0.0}


def test_checks_refuse_other_models(cohort):
    with pytest.raises(TypeError, match="HierarchicalLogistic"):
        posterior_predictive_check(object(), cohort)
    with pytest.raises(TypeError, match="needs outcome="):
        prior_predictive(HierarchicalLogistic, cohort)


# --- without a group -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(cohort):
    return HierarchicalLogistic("death", None, ["male", "sepsis"]).fit(cohort, draws=300, tune=300, chains=2, seed=1)


def test_group_checks_need_a_grouping_for_a_single_level_model(cohort, single):
    before = cohort.copy()
    with pytest.raises(ValueError, match=r"the model has no group \(group=None\)"):
        posterior_predictive_check(single, cohort)
    with pytest.raises(ValueError, match="Pass `group=` a column"):
        observed_expected_by_group(single, cohort)
    risk = single.predict(cohort)["mean"]
    fifths = cohort.assign(fifth=pd.qcut(risk.rank(method="first"), 5, labels=False))
    ppc = posterior_predictive_check(single, fifths, group="fifth", n_draws=200, seed=1)
    oe = observed_expected_by_group(single, fifths, group="fifth", n_draws=200, seed=1)
    assert ppc["observed"].tolist() == fifths.groupby("fifth")["death"].sum().tolist() == oe["observed"].tolist()
    assert np.allclose(oe["smr"], 1.0)  # no group effects: the model-based ratio is 1
    assert np.allclose(oe["expected"], single.predict(fifths).groupby(fifths["fifth"])["mean"].sum(), rtol=0.02)
    prior = prior_predictive(single, cohort, draws=30, seed=1)
    assert len(prior) == 30 and set(prior["group"]) == {"All"}
    assert np.allclose(prior["observed_rate"], cohort["death"].mean())
    pd.testing.assert_frame_equal(cohort, before)


def test_loo_compare_without_a_group_reports_the_one_model(cohort, single):
    import statsmodels.api as sm
    table = loo_compare(cohort, outcome="death", group=None, predictors=["male", "sepsis"], hierarchical=single,
                        n_draws=600)
    assert table["model"].tolist() == ["single-level"] and table.loc[0, "weight"] == 1.0
    glm = sm.GLM(cohort["death"], sm.add_constant(cohort[["male", "sepsis"]]), family=sm.families.Binomial()).fit()
    assert abs(table.loc[0, "elpd_loo"] - (glm.llf - 3)) < 1.5 and abs(table.loc[0, "p_loo"] - 3) < 1.0
    with pytest.raises(ValueError, match="fitted on the same groups"):
        loo_compare(cohort, outcome="death", group="hospital", predictors=["male", "sepsis"], hierarchical=single)


def test_cox_baseline_without_group_matches_lifelines(cohort):
    from lifelines import CoxPHFitter
    plain = cox_baseline(cohort, duration="los", event="death", predictors=["male", "sepsis"])
    clustered = cox_baseline(cohort, duration="los", event="death", predictors=["male", "sepsis"], group="hospital")
    reference = CoxPHFitter().fit(cohort[["los", "death", "male", "sepsis"]], "los", "death",
                                fit_options={"precision": 1e-12}).summary
    np.testing.assert_allclose(plain["hazard_ratio"], reference["exp(coef)"], rtol=1e-6)   # lifelines' own tolerance
    np.testing.assert_allclose(plain["low"], reference["exp(coef) lower 95%"], rtol=1e-6)
    np.testing.assert_allclose(clustered["hazard_ratio"], plain["hazard_ratio"], rtol=1e-10)
    assert not np.allclose(clustered["low"], plain["low"])


def test_lightgbm_cv_without_group_uses_seeded_stratified_folds(cohort):
    first = lightgbm_cv(cohort, outcome="death", features=["male", "sepsis"], group=None, seed=2, n_splits=3)
    second = lightgbm_cv(cohort, outcome="death", features=["male", "sepsis"], group=None, seed=2, n_splits=3)
    pd.testing.assert_frame_equal(first["predictions"], second["predictions"])
    per_fold = first["predictions"].groupby("fold")["outcome"].agg(["sum", "size"])
    assert per_fold["sum"].max() - per_fold["sum"].min() <= 1 and per_fold["size"].max() - per_fold["size"].min() <= 1
    assert first["predictions"]["group"].isna().all() and 0.5 < first["auroc"]["estimate"] < 1
    third = lightgbm_cv(cohort, outcome="death", features=["male", "sepsis"], group=None, seed=3, n_splits=3)
    assert not np.array_equal(third["predictions"]["fold"], first["predictions"]["fold"])


def _loo_input(seed=1, n_obs=2500, n_draws=600):
    rng = np.random.default_rng(seed)
    logit = rng.normal(-1, 0.3, (n_obs, 1)) + rng.normal(0, 0.4, (n_obs, n_draws)) * rng.gamma(2, 0.5, (n_obs, 1))
    y = (rng.random(n_obs) < 0.3).astype(float)
    log_likelihood = y[:, None] * logit - np.logaddexp(0, logit)
    log_likelihood[7] = log_likelihood[7].round(1)     # ties in the tail: ArviZ's per-row path
    log_likelihood[11, :] = log_likelihood[11, 0]       # every draw the same: no tail to fit
    return log_likelihood


def test_psis_loo_is_arvizs_loo_block_by_block():
    "The vectorized PSIS-LOO gives ArviZ's numbers (to rounding), whole or in blocks of rows, ties and all."
    import warnings

    import arviz as az
    import xarray as xr
    from clinpaper.checks import psis_loo

    log_likelihood = _loo_input()
    n_obs, n_draws = log_likelihood.shape
    data = az.InferenceData(
        posterior=xr.Dataset({"dummy": (("chain", "draw"), np.zeros((1, n_draws)))}),
        log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), log_likelihood.T[None])}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = az.loo(data, pointwise=True)
        ours = psis_loo((log_likelihood[s:s + 700] for s in range(0, n_obs, 700)), n_draws=n_draws)
        whole = psis_loo([log_likelihood], n_draws=n_draws)
    for key in ("elpd_loo", "se", "p_loo"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-12), key
        assert ours[key] == whole[key]
    assert (ours["n_samples"], ours["n_data_points"], ours["warning"]) == (n_draws, n_obs, reference["warning"])
    np.testing.assert_allclose(ours.pareto_k.values, reference.pareto_k.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.loo_i.values, reference.loo_i.values, rtol=1e-12)
    assert np.isinf(ours.pareto_k.values[11]) and np.isfinite(ours.pareto_k.values[7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compared = az.compare({"ours": ours, "arviz": reference}, ic="loo")
    assert compared["elpd_diff"].abs().max() < 1e-9
