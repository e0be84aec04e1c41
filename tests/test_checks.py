"""clinpaper.checks across modules: baselines against independent fits, grouped folds, and the
checks on a fitted HierarchicalLogistic (inputs unchanged, tables of the house shape)."""
import logging

import numpy as np
import pandas as pd
import pytest

from clinpaper.checks import (cox_baseline, glm_baseline, grouped_folds, lightgbm_cv, observed_expected_by_group,
                              posterior_predictive_check, prior_predictive)
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


def test_checks_refuse_other_models(cohort):
    with pytest.raises(TypeError, match="HierarchicalLogistic"):
        posterior_predictive_check(object(), cohort)
    with pytest.raises(TypeError, match="needs outcome="):
        prior_predictive(HierarchicalLogistic, cohort)
