"""Parameter recovery on clinpaper synth data with known truth, with lactate missing at random (slow).

Each replicate synthesizes an OMOP cohort with `clinpaper.synth.synthesize` (its own seed, so its own
hospitals, hospital effects and patients), builds the analysis table with the demo study
(`clinpaper/templates/hospital-variation/study.yaml`, `clinpaper.cohort.build_cohort`), and fits the
hierarchical logistic model with the TRUE functional forms of the severity pathway: the case-mix terms
(age per 10 years centred at 65, so the coefficient is the generating `age_10`) and the physiology terms of
truth.json (`clinpaper.synth.physiology_terms`: log lactate, the mean arterial pressure's hinge below 65,
heart rate, log creatinine). Lactate is not drawn in about 40% of the stays, and whether it is drawn
depends on what the record shows (sepsis, blood pressure, heart rate and death): missing at random.

Two analyses of every replicate:
- multiple imputation as the paper does it (`clinpaper.impute.impute`, chained equations with predictive
  mean matching, the outcome and the hospital among the imputation predictors, the raw aggregates imputed
  and the true-form terms computed from each imputed data set; `HierarchicalLogistic.fit_imputed`, draws
  mixed across imputations): its 95% intervals must cover the truth at the nominal rate and its estimates
  must be centred on the truth;
- the complete cases: the sepsis coefficient must be biased (the stays without lactate are the less sick
  survivors, so within the complete cases sepsis separates the dead from the living less well).

The 95% intervals checked are the ones the paper reports: for a coefficient the equal-tailed interval
(`odds_ratios`, on the log scale). The between-hospital SD is not checked here (tests/test_models.py and
the model notebook check it on complete data).

Run with `pytest -m slow tests/test_recovery.py -s` (the -s shows the coverage table).
"""
import logging
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from clinpaper.cohort import build_cohort
from clinpaper.config import load_study
from clinpaper.impute import impute
from clinpaper.models import HierarchicalLogistic
from clinpaper.synth import physiology_terms, synthesize

from conftest import STUDY

logging.getLogger("pymc").setLevel(logging.ERROR)
# one xdist worker for the whole module: the replicates are a module fixture, fitted once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("recovery"),
              pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::RuntimeWarning")]

REPLICATES = int(os.environ.get("CLINPAPER_RECOVERY_REPLICATES", "8"))
PATIENTS, SITES, IMPUTATIONS = 3000, 20, 5
CASE_MIX = {"age": "age_10", "male": "male", "sepsis": "sepsis", "chf": "chf", "ckd": "ckd", "cancer": "cancer"}
RAW = ["age", "male", "sepsis", "chf", "ckd", "cancer", "lactate_max", "map_min", "heart_rate_max", "creatinine_max"]


def true_form(table: pd.DataFrame) -> pd.DataFrame:
    "The analysis table with the model's columns in the generating forms: case-mix and physiology terms."
    frame = table[["death_in_hospital", "hospital"]].copy()
    frame["age"] = (table["age"] - 65) / 10
    for column in ("male", "sepsis", "chf", "ckd", "cancer"):
        frame[column] = table[column].astype(float)
    return frame.join(physiology_terms(table))


def fit(frames, columns, seed):
    model = HierarchicalLogistic("death_in_hospital", "hospital", columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(frames) > 1:
            model.fit_imputed(frames, draws=500, tune=800, chains=4, seed=seed, attempts=2)
        else:
            model.fit(frames[0], draws=500, tune=500, chains=2, seed=seed, progressbar=False)
    return model.odds_ratios().set_index("predictor")


@pytest.fixture(scope="module")
def replicates(tmp_path_factory):
    "One row per replicate, analysis and coefficient: truth, interval, estimate, covered."
    study = load_study(STUDY)
    folder = tmp_path_factory.mktemp("recovery")
    rows = []
    for replicate in range(REPLICATES):
        seed = 1000 + replicate
        path = folder / f"r{replicate}.duckdb"
        truth = synthesize(path, patients=PATIENTS, sites=SITES, seed=seed)
        assert truth["missing"] == "mar"
        table = build_cohort(study, str(path)).table
        true = {column: truth["beta"][name] for column, name in CASE_MIX.items()}
        true.update({term["name"]: term["beta"] for term in truth["physiology"]})
        columns = list(true)
        imputations = impute(table, RAW, outcome="death_in_hospital", group="hospital", m=IMPUTATIONS,
                             seed=seed, log=["lactate_max", "creatinine_max"])
        analyses = {"multiple imputation": [true_form(data) for data in imputations.datasets],
                    "complete cases": [true_form(table).dropna(subset=columns)]}
        for analysis, frames in analyses.items():
            odds = fit(frames, columns, seed)
            for column in columns:
                low, high = np.log(odds.loc[column, "low"]), np.log(odds.loc[column, "high"])
                rows.append({"replicate": replicate, "analysis": analysis, "quantity": column,
                             "truth": true[column], "estimate": np.log(odds.loc[column, "odds_ratio"]),
                             "low": low, "high": high, "covered": low <= true[column] <= high})
    return pd.DataFrame(rows)


def test_multiple_imputation_covers_the_truth(replicates):
    imputed = replicates[replicates["analysis"] == "multiple imputation"]
    per_quantity = imputed.groupby("quantity", sort=False)["covered"].agg(["sum", "count", "mean"])
    print(f"\nMultiple imputation, coverage of the 95% intervals over {REPLICATES} replicates:\n{per_quantity.to_string()}")
    covered, total = int(imputed["covered"].sum()), len(imputed)
    # under nominal coverage the count is Binomial(total, 0.95): accept its central 99% range
    low, high = scipy.stats.binom.ppf(0.005, total, 0.95), scipy.stats.binom.isf(0.005, total, 0.95)
    print(f"pooled: {covered} of {total} intervals ({covered / total:.3f}); 99% acceptance range [{low:.0f}, {high:.0f}]")
    assert low <= covered <= high, (covered, total, low, high)
    floor = scipy.stats.binom.ppf(0.001, REPLICATES, 0.95)
    assert (per_quantity["sum"] >= floor).all(), per_quantity


def bias_table(replicates: pd.DataFrame, analysis: str) -> pd.DataFrame:
    "Per coefficient: the mean error over replicates and its standard error (from the replicates' spread)."
    rows = replicates[replicates["analysis"] == analysis].assign(error=lambda t: t["estimate"] - t["truth"])
    table = rows.groupby("quantity", sort=False)["error"].agg(["mean", "std", "count"])
    table["se"] = table["std"] / np.sqrt(table["count"])
    table["z"] = table["mean"] / table["se"]
    return table


def test_multiple_imputation_is_centred_and_complete_cases_are_biased(replicates):
    imputed, complete = bias_table(replicates, "multiple imputation"), bias_table(replicates, "complete cases")
    print("\nMean error over replicates (log odds ratio):\n",
          pd.DataFrame({"MI mean error": imputed["mean"], "MI z": imputed["z"],
                        "CC mean error": complete["mean"], "CC z": complete["z"]}).round(3).to_string())
    # multiple imputation: no coefficient off by more than 3.5 of its standard errors (a family of 10)
    assert (imputed["z"].abs() < 3.5).all(), imputed
    # the complete cases: sepsis biased towards no effect, by more than 3 standard errors
    assert complete.loc["sepsis", "z"] < -3, complete
    # and by more than multiple imputation is
    assert complete.loc["sepsis", "mean"] < imputed.loc["sepsis", "mean"] - 0.1, (complete, imputed)


def test_large_cohort_agrees_with_maximum_likelihood(tmp_path):
    """20,000 patients in 30 hospitals with weak priors, the complete cases in the generating forms: the posterior
    of each coefficient is close to the maximum-likelihood fit (statsmodels GLM, binomial, one fixed intercept per
    hospital). Allowed: 0.2 GLM standard errors (hospitals of ~400 stays are pooled by a few percent, the
    Normal(0, 2.5) prior moves nothing at this size) plus 4 Monte Carlo standard errors; the posterior SD within
    15% of the GLM standard error."""
    import arviz as az
    import statsmodels.api as sm

    study = load_study(STUDY)
    synthesize(tmp_path / "large.duckdb", patients=20_000, sites=30, seed=77)
    data = true_form(build_cohort(study, str(tmp_path / "large.duckdb")).table).dropna()
    predictors = [c for c in data.columns if c not in ("death_in_hospital", "hospital")]
    model = HierarchicalLogistic("death_in_hospital", "hospital", predictors).fit(
        data, draws=1000, tune=1000, chains=2, seed=77, progressbar=False)
    design = pd.get_dummies(data["hospital"].astype(str), dtype=float).join(data[predictors].astype(float))
    glm = sm.GLM(data["death_in_hospital"].astype(float), design, family=sm.families.Binomial()).fit()
    summary = az.summary(model.idata_, var_names=["beta"], round_to="none")
    summary.index = predictors
    for name in predictors:
        allowed = 0.2 * glm.bse[name] + 4 * summary.loc[name, "mcse_mean"]
        assert abs(summary.loc[name, "mean"] - glm.params[name]) < allowed, (name, summary.loc[name], glm.params[name])
        assert abs(summary.loc[name, "sd"] / glm.bse[name] - 1) < 0.15, (name, summary.loc[name, "sd"], glm.bse[name])
