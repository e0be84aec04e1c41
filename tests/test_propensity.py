"""clinpaper.propensity across modules: the large-scale covariates of a synthetic OMOP database (the
comparative scenario of clinpaper.synth, no unmeasured confounder, a true hazard ratio of 2) against the
cohort's own confounder flags (clinpaper.cohort, another implementation) and hand-written SQL; a large-scale
propensity score from all history that gives the hazard ratio of a propensity score on the true
confounders (clinpaper.comparative), where the crude one and a one-year window do not; and the contracts:
inputs never changed, the index kept, the same seed the same numbers."""
import warnings

import duckdb
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import expit

from conftest import TEMPLATES
from clinpaper.cohort import build_cohort
from clinpaper.comparative import balancing_weights, propensity_scores, weighted_cox
from clinpaper.config import load_study
from clinpaper.propensity import (covariate_balance, equipoise, large_scale_propensity, match_on_ps,
                                  omop_covariates, preference_score, stratified_cox, stratify_by_ps)
from clinpaper.synth import synthesize_comparative

STUDY = TEMPLATES / "comparative" / "study_synth.yaml"
DRUGS = [1118084, 1124300]   # celecoxib, diclofenac (ingredients)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    "20,000 synthetic new users, every confounder measured (recorded before the first exposure), true HR 2."
    path = tmp_path_factory.mktemp("propensity") / "nsaid.duckdb"
    synthesize_comparative(path, patients=20_000, seed=7, true_hr=2.0, unmeasured=0.0)
    study = load_study(STUDY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = build_cohort(study, path).table
    return path, study, table.assign(treated=(table["exposure"] == "celecoxib").astype(int))


def test_covariates_of_the_confounders_are_the_cohorts_flags(measured):
    path, study, table = measured
    covariates = omop_covariates(path, table, lookback_days=None, exclude_concepts=DRUGS)
    names = covariates.covariates.set_index("concept_id")
    flags = {"peptic_ulcer": 4027663, "esophagitis": 30753, "coronary_disease": 317576,
             "ulcerative_colitis": 81893, "rheumatoid_arthritis": 80809, "chronic_kidney_disease": 46271022,
             "diabetes": 201826}   # the scenario records diabetes as type 2 (a descendant of the study's 201820)
    dense = covariates.frame(names.loc[list(flags.values()), "covariate_id"].tolist())
    for (flag, _), column in zip(flags.items(), dense.columns):
        assert (dense[column].to_numpy() == table[flag].to_numpy()).all(), flag
    # no covariate is either drug or one of its clinical drugs; the drugs' descendants are all excluded
    with duckdb.connect(str(path), read_only=True) as raw:
        descendants = {c for c, in raw.execute("SELECT descendant_concept_id FROM concept_ancestor WHERE "
                                               f"ancestor_concept_id IN ({', '.join(map(str, DRUGS))})").fetchall()}
        # a background drug, by hand: persons with a record of it (or a descendant) in the year before index
        raw.register("cohort_rows", table[["person_id", "index_datetime"]])
        drug = covariates.covariates.query("domain == 'drug'").sort_values("n").iloc[-1]
        expected = raw.execute(
            "SELECT COUNT(DISTINCT c.person_id) FROM cohort_rows c JOIN drug_exposure d USING (person_id) WHERE "
            f"d.drug_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id = "
            f"{int(drug['concept_id'])} UNION SELECT {int(drug['concept_id'])}) AND d.drug_exposure_start_date < "
            "CAST(c.index_datetime AS DATE)").fetchone()[0]
    assert descendants <= set(covariates.excluded) and set(DRUGS) <= set(covariates.excluded)
    assert not set(covariates.covariates["concept_id"].dropna()) & set(covariates.excluded)
    assert drug["n"] == expected


def test_large_scale_score_recovers_the_adjustment_for_the_true_confounders(measured):
    path, study, table = measured
    hand = study["analysis"]["covariates"]           # age, sex and the seven confounders: the truth's model

    def overlap_hazard_ratio(score):
        weights = balancing_weights(table.assign(ps=score), treatment="treated", score="ps", method="overlap")
        fit = weighted_cox(table.assign(w=weights), treatment="treated", duration="time_to_event", event="gi_bleed",
                           weights="w")
        return float(fit["log_hazard_ratio"].iloc[0])

    truth_adjusted = overlap_hazard_ratio(propensity_scores(table, treatment="treated", covariates=hand))
    crude = float(weighted_cox(table, treatment="treated", duration="time_to_event",
                               event="gi_bleed")["log_hazard_ratio"].iloc[0])
    everything = omop_covariates(path, table, lookback_days=None, exclude_concepts=DRUGS)
    last_year = omop_covariates(path, table, exclude_concepts=DRUGS)
    scores = {name: large_scale_propensity(c, table["treated"], seed=1) for name, c in
              (("all history", everything), ("last year", last_year))}
    assert abs(crude - truth_adjusted) > 0.15                                    # confounding that matters
    assert abs(overlap_hazard_ratio(scores["all history"]) - truth_adjusted) < 0.06
    assert overlap_hazard_ratio(scores["last year"]) - truth_adjusted > 0.08     # confounders older than a year
    # matching and strata on the all-history score agree, and balance every covariate
    scored = table.assign(ps=scores["all history"])
    pairs = match_on_ps(scored, treatment="treated", score="ps", seed=1)
    matched = stratified_cox(pairs, treatment="treated", duration="time_to_event", event="gi_bleed", strata="stratum")
    assert abs(float(matched["log_hazard_ratio"].iloc[0]) - truth_adjusted) < 0.08
    strata = stratify_by_ps(scored, treatment="treated", score="ps", n_strata=10)
    stratified = stratified_cox(scored.assign(stratum=strata), treatment="treated", duration="time_to_event",
                                event="gi_bleed", strata="stratum")
    assert abs(float(stratified["log_hazard_ratio"].iloc[0]) - truth_adjusted) < 0.08
    balance = covariate_balance(everything, table["treated"], strata=pairs["stratum"].reindex(table.index))
    assert balance.attrs["max_abs_smd_before"] > 0.2 > 0.1 > balance.attrs["max_abs_smd_after"]
    assert 0.5 < equipoise(scores["all history"], table["treated"]) <= 1


def test_inputs_unchanged_index_kept_and_seeded():
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((1500, 60)) < 0.15).astype(float))
    treatment = pd.Series(rng.binomial(1, expit(x[:, :3] @ np.array([1.0, -1.0, 0.8]) - 0.2)),
                          index=pd.Index(rng.permutation(1500) + 10_000, name="person_id"))
    x_before, t_before = x.copy(), treatment.copy()
    score = large_scale_propensity(x, treatment, seed=3)
    assert (x != x_before).nnz == 0 and treatment.equals(t_before)
    assert score.index.equals(treatment.index) and score.name == "propensity_score"
    np.testing.assert_array_equal(score.to_numpy(), large_scale_propensity(x, treatment, seed=3).to_numpy())
    assert preference_score(score, treatment).index.equals(treatment.index)
    frame = pd.DataFrame({"treated": treatment, "ps": score, "days": rng.uniform(1, 365, 1500),
                          "event": rng.binomial(1, 0.3, 1500)})
    before = frame.copy()
    pairs = match_on_ps(frame, treatment="treated", score="ps", max_ratio=2, seed=5)
    strata = stratify_by_ps(frame, treatment="treated", score="ps")
    stratified_cox(pairs, treatment="treated", duration="days", event="event", strata="stratum")
    covariate_balance(x, treatment, strata=strata)
    pd.testing.assert_frame_equal(frame, before)
    assert pairs.index.isin(frame.index).all() and strata.index.equals(frame.index)
    pd.testing.assert_frame_equal(pairs, match_on_ps(frame, treatment="treated", score="ps", max_ratio=2, seed=5))
