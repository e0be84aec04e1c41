"""The comparative scenario of clinpaper.synth (new users of celecoxib or diclofenac, confounded by indication):
the comparative template's study_synth.yaml builds its cohort with `build_cohort`; the negative controls'
columns agree with an independent SQL count on the DuckDB file (deaths censor them); and Cox models fitted
with lifelines (crude, and adjusted for the measured confounders) behave as the design says: the unmeasured
confounder biases the outcome's adjusted log hazard ratio upwards and the negative controls' by about as
much, and without it the adjusted estimate covers the truth."""
import json
import math
import time
import warnings

import duckdb
import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceWarning

import clinpaper.synth as synth
from conftest import TEMPLATES, clinpaper
from clinpaper.cohort import build_cohort
from clinpaper.config import load_study
from clinpaper.synth import synthesize

STUDY = TEMPLATES / "comparative" / "study_synth.yaml"
PATIENTS = 8_000
TRUTH_KEYS = {"scenario", "seed", "patients", "true_hr", "unmeasured", "n_persons", "n_treated", "n_comparator",
              "n_deaths", "exposures", "outcome", "negative_controls", "treatment_model", "confounders",
              "unmeasured_confounder", "death", "index_dates", "extract_end", "cdm_version"}


def cohort_of(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # small-count and eventless-control notes
        return build_cohort(load_study(STUDY), path)


@pytest.fixture(scope="module")
def confounded(tmp_path_factory):
    "The default scenario (true hazard ratio 1, the unmeasured confounder at full strength) and its cohort."
    path = tmp_path_factory.mktemp("nsaid") / "nsaid.duckdb"
    truth = synthesize(path, scenario="comparative", patients=PATIENTS, seed=21)
    return path, truth, cohort_of(path)


@pytest.fixture(scope="module")
def unconfounded(tmp_path_factory):
    "No unmeasured confounding, and a true hazard ratio of 1.5."
    path = tmp_path_factory.mktemp("nsaid") / "nsaid_measured.duckdb"
    truth = synthesize(path, scenario="comparative", patients=PATIENTS, seed=22, true_hr=1.5, unmeasured=0)
    return path, truth, cohort_of(path)


def log_hazard_ratio(table, event, time, covariates=(), exclude=None):
    "(estimate, standard error) of celecoxib's log hazard ratio in a lifelines Cox model."
    rows = table if exclude is None else table[table[exclude] == 0]
    frame = rows[list(covariates) + [event, time]].assign(celecoxib=(rows["exposure"] == "celecoxib").astype(int))
    frame[time] = frame[time].clip(lower=0.5)   # an event on day 0 cannot happen here; death on day 0 can censor
    with warnings.catch_warnings():   # a rare confounder without events of a rare control: its own coefficient
        warnings.simplefilter("ignore", ConvergenceWarning)   # is unbounded, celecoxib's is not
        fit = CoxPHFitter().fit(frame, time, event)
    return fit.params_["celecoxib"], fit.standard_errors_["celecoxib"]


def estimates(cohort) -> pd.DataFrame:
    "Crude and adjusted log hazard ratios of the outcome and of each negative control (prior cases left out)."
    study = load_study(STUDY)
    covariates = study["analysis"]["covariates"]
    targets = [("gi_bleed", "time_to_event", None)] + [
        (nc["id"], f"time_to_{nc['id']}", f"prior_{nc['id']}") for nc in study["negative_controls"]]
    rows = []
    for event, time_column, prior in targets:
        crude, crude_se = log_hazard_ratio(cohort.table, event, time_column, exclude=prior)
        adjusted, adjusted_se = log_hazard_ratio(cohort.table, event, time_column, covariates, exclude=prior)
        rows.append({"outcome": event, "crude": crude, "crude_se": crude_se, "adjusted": adjusted,
                     "adjusted_se": adjusted_se})
    return pd.DataFrame(rows).set_index("outcome")


def pooled(frame):
    "The inverse-variance mean of the negative controls' adjusted log hazard ratios and its standard error."
    weights = 1 / frame["adjusted_se"] ** 2
    return float((frame["adjusted"] * weights).sum() / weights.sum()), float(weights.sum() ** -0.5)


def test_truth_names_the_design(confounded):
    path, truth, _ = confounded
    assert set(truth) == TRUTH_KEYS
    assert json.loads(path.with_suffix(".truth.json").read_text()) == truth
    assert truth["exposures"]["treated"]["concept_id"] == 1118084
    assert truth["exposures"]["comparator"]["concept_id"] == 1124300
    assert truth["outcome"]["concept_id"] == 192671 and truth["outcome"]["true_hr"] == 1.0
    study = load_study(STUDY)
    # the study's negative controls are the scenario's, concept for concept
    assert [(nc["id"], nc["concepts"]) for nc in study["negative_controls"]] == [
        (nc["id"], [nc["concept_id"]]) for nc in truth["negative_controls"]]
    assert {nc["true_hr"] for nc in truth["negative_controls"]} == {1.0}
    assert truth["unmeasured_confounder"]["mean_difference_treated_minus_comparator"] > 0.3
    assert truth["n_treated"] + truth["n_comparator"] == PATIENTS


def test_cohort_of_the_synthetic_study(confounded):
    _, truth, cohort = confounded
    study = load_study(STUDY)
    table = cohort.table
    flow = cohort.flow.set_index("step")
    # each criterion removes someone: short observation, the other drug on the same day, earlier bleeding
    assert (flow.loc[["prior_observation", "no_comparator", "no_prior_gi_bleed"], "n_removed"] > 0).all()
    assert flow.loc["first_exposure", "n_remaining"] == PATIENTS
    assert set(table.exposure) == {"celecoxib", "diclofenac"}
    for nc in study["negative_controls"]:
        assert {nc["id"], f"time_to_{nc['id']}", f"prior_{nc['id']}"} <= set(table.columns)
        assert cohort.codebook[nc["id"]]["role"] == "negative_control"
        assert table[nc["id"]].sum() > 20, nc["id"]
    for name in truth["confounders"]:
        assert 0 < table[name].mean() < 0.5, name
    assert table.gi_bleed.sum() > 150 and (table.time_to_event.between(0, 365)).all()
    # the confounder recorded as its descendant (type 2 diabetes) is found through concept_ancestor
    assert table.diabetes.mean() > 0.1


def test_negative_controls_by_independent_sql(confounded):
    "Event, days and prior record of three controls, counted in SQL from the study's words (deaths censor)."
    path, _, cohort = confounded
    table = cohort.table
    assert (cohort.table.time_to_event < 365).sum() > 0
    sql = """
    WITH k AS (SELECT person_id, CAST(index_datetime AS DATE) AS d FROM patients),
    censor AS (SELECT k.person_id,
                      least(365, max(o.observation_period_end_date - k.d),
                            coalesce(min(dt.death_date - k.d), 365)) AS censor_day
               FROM k JOIN observation_period o ON o.person_id = k.person_id
                    AND o.observation_period_start_date <= k.d AND o.observation_period_end_date >= k.d
               LEFT JOIN death dt ON dt.person_id = k.person_id AND dt.death_date >= k.d
               GROUP BY 1),
    days AS (SELECT k.person_id, c.condition_start_date - k.d AS day FROM k
             JOIN condition_occurrence c ON c.person_id = k.person_id
             WHERE c.condition_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor
                                              WHERE ancestor_concept_id = {concept}))
    SELECT c.person_id, c.censor_day,
           min(d.day) FILTER (WHERE d.day BETWEEN 1 AND 365) AS first_day,
           count(d.day) FILTER (WHERE d.day <= 0) AS n_prior
    FROM censor c LEFT JOIN days d USING (person_id) GROUP BY 1, 2"""
    deaths_in_window = 0
    with duckdb.connect(str(path), read_only=True) as con:
        con.register("patients", table[["person_id", "index_datetime"]])
        for nc_id, concept in [("nc_acute_bronchitis", 260139), ("nc_viral_sinusitis", 40481087),
                               ("nc_dental_caries", 133228)]:
            counted = con.sql(sql.format(concept=concept)).df().set_index("person_id").loc[table.person_id]
            event = (counted.first_day.notna() & (counted.first_day <= counted.censor_day)).astype("int64")
            days = np.where(event == 1, counted.first_day, counted.censor_day).astype("int64")
            np.testing.assert_array_equal(table[nc_id].to_numpy(), event.to_numpy(), err_msg=nc_id)
            np.testing.assert_array_equal(table[f"time_to_{nc_id}"].to_numpy(), days, err_msg=nc_id)
            np.testing.assert_array_equal(table[f"prior_{nc_id}"].to_numpy(),
                                          (counted.n_prior > 0).astype("int64").to_numpy(), err_msg=nc_id)
        deaths_in_window = con.sql("SELECT count(*) AS n FROM patients p JOIN death d USING (person_id) WHERE "
                                   "d.death_date BETWEEN CAST(p.index_datetime AS DATE) AND "
                                   "CAST(p.index_datetime AS DATE) + 364").df().n[0]
    assert deaths_in_window > 20   # so that death's censoring was tested


def test_unmeasured_confounding_biases_outcome_and_controls_alike(confounded):
    _, truth, cohort = confounded
    found = estimates(cohort)
    main, controls = found.loc["gi_bleed"], found.drop("gi_bleed")
    bias = main["adjusted"] - math.log(truth["true_hr"])
    # the unmeasured confounder raises both the choice of celecoxib and the risk: adjusted estimate above the truth
    assert bias > 1.5 * main["adjusted_se"], main
    # the measured confounders raise it further: the crude estimate is higher still
    assert main["crude"] - main["adjusted"] > 0.1, main
    # the controls (true hazard ratio 1) share the bias: their pooled estimate is above 0, near the outcome's
    nc_mean, nc_se = pooled(controls)
    assert nc_mean > 5 * nc_se, (nc_mean, nc_se)
    assert abs(bias - nc_mean) < 2.5 * math.hypot(main["adjusted_se"], nc_se), (bias, nc_mean)
    assert (controls["adjusted"] > 0).sum() >= 16, controls["adjusted"]
    # and about as much as the design predicts: gamma_Y times the difference in U between the groups
    expected = truth["outcome"]["unmeasured_log_hr"] * truth["unmeasured_confounder"][
        "mean_difference_treated_minus_comparator"]
    assert abs(nc_mean - expected) < 3 * nc_se + 0.1, (nc_mean, expected)


def test_without_unmeasured_confounding_the_adjusted_estimate_covers_the_truth(unconfounded):
    _, truth, cohort = unconfounded
    assert truth["unmeasured"] == 0.0 and truth["unmeasured_confounder"]["outcome_log_hr"] == 0.0
    found = estimates(cohort)
    main, controls = found.loc["gi_bleed"], found.drop("gi_bleed")
    true_log_hr = math.log(1.5)
    low, high = main["adjusted"] - 1.96 * main["adjusted_se"], main["adjusted"] + 1.96 * main["adjusted_se"]
    assert low < true_log_hr < high, main
    assert main["crude"] - main["adjusted"] > 0.1, main   # the measured confounding is still there
    nc_mean, nc_se = pooled(controls)
    assert abs(nc_mean) < 2.5 * nc_se, (nc_mean, nc_se)


def test_command_line(tmp_path):
    out = tmp_path / "_data" / "nsaid_synth.duckdb"
    result = clinpaper("synth", "--scenario", "comparative", "--out", out, "--patients", 500, "--seed", 7,
                       "--true-hr", 1.3)
    assert "500 new users" in result.stdout and "true hazard ratio 1.3" in result.stdout
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert (truth["true_hr"], truth["unmeasured"], truth["seed"]) == (1.3, 1.0, 7)
    refused = clinpaper("synth", "--scenario", "comparative", "--out", tmp_path / "other.duckdb", "--shift",
                        "external", check=False)
    assert refused.returncode == 2 and "belongs to the ICU scenario" in refused.stderr
    assert not (tmp_path / "other.duckdb").exists()


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_block(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    original = synth._comparative_block
    monkeypatch.setattr(synth, "_comparative_block", failing_block)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize(tmp_path / "crash.duckdb", scenario="comparative", patients=2_500, chunk_size=500)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_hundred_thousand_patients(tmp_path):
    "The scale of the large-scale benchmark, in chunks (its time is in BENCHMARKS.md, not asserted here)."
    truth = synthesize(tmp_path / "big.duckdb", scenario="comparative", patients=100_000, seed=1)
    assert truth["n_persons"] == 100_000
    with duckdb.connect(str(tmp_path / "big.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT person_id) FROM person").fetchone()[0] == 100_000
        assert con.execute("SELECT count(*) FROM drug_exposure").fetchone()[0] > 100_000
