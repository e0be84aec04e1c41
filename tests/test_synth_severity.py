"""The severity pathway of clinpaper.synth's ICU scenario, checked against the demo study's own cohort step.

Acuity drives the first day's physiology; death depends on the case mix, the hospital and four 24-hour
aggregates on the scale of the demo study (log lactate_max, a hinge in map_min at 65, heart_rate_max,
log creatinine_max); lactate is drawn in the first 24 hours more often in sicker patients (missing at
random, `missing='mar'`, the default) or at random (`missing='mcar'`).

The truth below is typed from the issue's specification, not read from clinpaper.synth, and every
analysis table is made by `clinpaper.cohort.build_cohort` with the template's study.yaml.

The slow test measures, over four replicates of 20,000 patients, that complete cases recover every
true coefficient when lactate is missing completely at random (the replicates' Wald statistics against
the truth, pooled) and are biased when it is missing at random (the sepsis coefficient, on average over
the replicates, at least 2 standard errors below its truth). Measured on its seeds (7, 11, 12, 13; 30
hospitals): a mean z of the sepsis coefficient of -4.2 under MAR and of +1.2 under MCAR (seed 12 alone
+3.7); pooled Wald p = 0.07 under MCAR. Run with `pytest -m slow tests/test_synth_severity.py -s`
(about a minute).
"""
import math

import duckdb
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.api as sm

import clinpaper.synth as synth
from clinpaper.cohort import build_cohort
from clinpaper.config import load_study
from clinpaper.synth import physiology_terms, synthesize, synthesize_flat

from conftest import STUDY

# the truth of the specification: (column, form, beta, knot or reference, unit)
TERMS = [("lactate_max", "log", 0.8, 2.0, "mmol/L"), ("map_min", "hinge", 0.04, 65.0, "mmHg"),
         ("heart_rate_max", "linear", 0.01, 100.0, "beats/min"), ("creatinine_max", "log", 0.3, 1.0, "mg/dL")]
CASE_MIX = ["age_10", "male", "sepsis", "chf", "ckd", "cancer"]


def query(path, sql):
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(sql).df()


def true_design(table):
    "Case mix and the physiology terms in their true forms, computed here by hand."
    return pd.DataFrame({
        "age_10": (table["age"] - 65) / 10, "male": table["male"], "sepsis": table["sepsis"], "chf": table["chf"],
        "ckd": table["ckd"], "cancer": table["cancer"],
        "lactate_max_log": np.log(table["lactate_max"] / 2.0),
        "map_min_hinge": np.where(table["map_min"].isna(), np.nan, np.maximum(65.0 - table["map_min"], 0.0)),
        "heart_rate_max_linear": table["heart_rate_max"] - 100.0,
        "creatinine_max_log": np.log(table["creatinine_max"])}, index=table.index).astype(float)


def complete_case_fit(table, truth):
    "ML logistic regression, hospital fixed effects, complete cases: z of each coefficient and the Wald statistic."
    design = true_design(table)
    complete = design.notna().all(axis=1)
    hospitals = pd.get_dummies(table.loc[complete, "hospital"].astype(str), prefix="hospital", dtype=float)
    fit = sm.GLM(table.loc[complete, "death_in_hospital"].astype(float), design[complete].join(hospitals),
                 family=sm.families.Binomial()).fit()
    names = list(design.columns)
    true = pd.Series({**truth["beta"], **{term["name"]: term["beta"] for term in truth["physiology"]}})[names]
    error = fit.params[names] - true
    wald = float(error @ np.linalg.solve(fit.cov_params().loc[names, names], error))
    return error / fit.bse[names], wald


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    "The same seed written with lactate missing at random and completely at random."
    folder = tmp_path_factory.mktemp("severity")
    out = {}
    for missing in ("mar", "mcar"):
        path = folder / f"{missing}.duckdb"
        out[missing] = (path, synthesize(path, patients=6_000, sites=10, seed=21, missing=missing))
    return out


def test_truth_keys_and_values(pair):
    _, truth = pair["mar"]
    terms = {term["column"]: term for term in truth["physiology"]}
    assert list(terms) == [column for column, *_ in TERMS]
    for column, form, beta, anchor, unit in TERMS:
        term = terms[column]
        assert (term["form"], term["beta"], term["unit"]) == (form, beta, unit)
        assert term[("knot" if form == "hinge" else "reference")] == anchor
        assert term["name"] == f"{column}_{form}"
    assert truth["physiology_window"]["hours"] == 24
    assert truth["acuity"]["effect_on_death"] == 0.0
    lactate = truth["missingness"]["lactate"]
    assert lactate["mechanism"] == "mar" and set(lactate["coefficients"]) == {
        "sepsis", "map_min_below_65", "heart_rate_max_above_110", "died"}
    assert all(value > 0 for value in lactate["coefficients"].values())
    assert 0.35 <= lactate["share_missing_first_stays"] <= 0.45
    assert 0.35 <= lactate["share_missing_cohort"] <= 0.45
    assert truth["missingness"]["mcar"]["bilirubin"] == 0.25
    assert "missing at random" in truth["severity_pathway"]
    assert 0.09 <= truth["mortality_first_stay"] <= 0.19   # 10 hospitals: their effects move it (slow test: 30)
    mcar = pair["mcar"][1]["missingness"]["lactate"]
    assert mcar["mechanism"] == "mcar" and "coefficients" not in mcar
    # the keys that were there before stay
    for key in ["intercept", "beta", "sigma_hospital", "hospital_effects", "predictors"]:
        assert pair["mcar"][1][key] == truth[key]


def test_lactate_missing_at_random_depends_on_outcome_and_sepsis(pair):
    "Shares with a lactate in the first 24 hours, by SQL on the written file."
    shares = {}
    for missing, (path, _) in pair.items():
        stays = query(path, """
            WITH first AS (SELECT * FROM visit_occurrence
                           QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY visit_start_datetime) = 1)
            SELECT EXISTS (SELECT 1 FROM death d WHERE d.person_id = f.person_id
                           AND d.death_date BETWEEN f.visit_start_date AND f.visit_end_date) AS died,
                   EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = f.person_id
                           AND c.condition_concept_id IN (132797, 76685) AND c.condition_start_date = f.visit_start_date) AS sepsis,
                   EXISTS (SELECT 1 FROM measurement m WHERE m.visit_occurrence_id = f.visit_occurrence_id
                           AND m.measurement_concept_id = 3047181
                           AND m.measurement_datetime <= f.visit_start_datetime + INTERVAL 24 HOUR) AS drawn,
                   EXISTS (SELECT 1 FROM measurement m WHERE m.visit_occurrence_id = f.visit_occurrence_id
                           AND m.measurement_concept_id = 3047181
                           AND m.measurement_datetime > f.visit_start_datetime + INTERVAL 24 HOUR) AS later
            FROM first f""")
        shares[missing] = stays
    mar, mcar = shares["mar"], shares["mcar"]
    assert 0.35 < 1 - mar.drawn.mean() < 0.45 and 0.35 < 1 - mcar.drawn.mean() < 0.45
    by_died, by_sepsis = mar.groupby("died").drawn.mean(), mar.groupby("sepsis").drawn.mean()
    assert by_died[True] > by_died[False] + 0.2, by_died
    assert by_sepsis[True] > by_sepsis[False] + 0.2, by_sepsis
    # completely at random: no difference beyond chance (two-proportion z below 3)
    for column in ("died", "sepsis"):
        a, b = mcar.drawn[mcar[column]], mcar.drawn[~mcar[column]]
        p = mcar.drawn.mean()
        z = (a.mean() - b.mean()) / math.sqrt(p * (1 - p) * (1 / len(a) + 1 / len(b)))
        assert abs(z) < 3, (column, z)
    assert (mar.later & ~mar.drawn).sum() > 50   # not drawn on the first day, drawn later


def test_mar_and_mcar_share_everything_but_first_day_lactate(pair):
    (mar, _), (mcar, _) = pair["mar"], pair["mcar"]
    not_lactate = """SELECT m.person_id, measurement_concept_id, measurement_datetime, value_as_number, unit_concept_id
                     FROM measurement m JOIN visit_occurrence v USING (visit_occurrence_id)
                     WHERE m.measurement_concept_id <> 3047181
                        OR m.measurement_datetime > v.visit_start_datetime + INTERVAL 24 HOUR ORDER BY ALL"""
    pd.testing.assert_frame_equal(query(mar, not_lactate), query(mcar, not_lactate))
    deaths = "SELECT * FROM death ORDER BY ALL"
    pd.testing.assert_frame_equal(query(mar, deaths), query(mcar, deaths))


def test_outcome_model_used_the_study_extraction(tmp_path, monkeypatch):
    """The aggregates the generator computed (captured while writing) are those `build_cohort` extracts with
    the demo study, wherever the study has a value."""
    captured = []

    class Capturing(synth._Writer):
        def add(self, block):
            stays = block["stays"]
            captured.append(pd.DataFrame({"visit_occurrence_id": self.next_visit + np.arange(len(stays["start"])),
                                          **{f"{c}_full": stays[c] for c, *_ in TERMS},
                                          "died": stays["died"]}))
            super().add(block)

    monkeypatch.setattr(synth, "_Writer", Capturing)
    synthesize(tmp_path / "c.duckdb", patients=2_500, sites=5, seed=4)
    table = build_cohort(load_study(STUDY), str(tmp_path / "c.duckdb")).table
    merged = table.merge(pd.concat(captured), on="visit_occurrence_id", validate="one_to_one")
    assert len(merged) == len(table)
    assert (merged["died"] == merged["death_in_hospital"].astype(bool)).all()
    for column, *_ in TERMS:
        has = merged[column].notna()
        assert has.sum() > 0.5 * len(merged)
        np.testing.assert_array_equal(merged.loc[has, column].to_numpy(), merged.loc[has, f"{column}_full"].to_numpy())


def test_physiology_terms_by_hand():
    table = pd.DataFrame({"lactate_max": [1.0, 8.0], "map_min": [40.0, 90.0], "heart_rate_max": [130.0, 60.0],
                          "creatinine_max": [3.0, np.nan]})
    terms = physiology_terms(table)
    expected = pd.DataFrame({"lactate_max_log": [math.log(0.5), math.log(4)], "map_min_hinge": [25.0, 0.0],
                             "heart_rate_max_linear": [30.0, -40.0], "creatinine_max_log": [math.log(3), np.nan]})
    pd.testing.assert_frame_equal(terms, expected)
    with pytest.raises(ValueError, match="lacks lactate_max"):
        physiology_terms(table.drop(columns="lactate_max"))


def test_flat_table_follows(tmp_path):
    truth = synthesize_flat(tmp_path / "flat.csv", patients=400, sites=3, seed=2, missing="mcar")
    assert truth["missing"] == "mcar" and truth["missingness"]["lactate"]["mechanism"] == "mcar"
    assert [term["column"] for term in truth["physiology"]] == [column for column, *_ in TERMS]
    flat = pd.read_csv(tmp_path / "flat.csv")
    assert {"lactate_max", "map_min", "heart_rate_max", "creatinine_max"} <= set(flat.columns)


@pytest.mark.slow
def test_complete_cases_recover_under_mcar_and_are_biased_under_mar(tmp_path):
    study = load_study(STUDY)
    z, walds = {"mar": [], "mcar": []}, []
    seeds = (7, 11, 12, 13)
    for seed in seeds:
        for missing in ("mar", "mcar"):
            path = tmp_path / f"{missing}{seed}.duckdb"
            truth = synthesize(path, patients=20_000, sites=30, seed=seed, missing=missing)
            assert 0.12 <= truth["mortality_first_stay"] <= 0.16
            assert 0.35 <= truth["missingness"]["lactate"]["share_missing_cohort"] <= 0.45
            table = build_cohort(study, str(path)).table
            scores, wald = complete_case_fit(table, truth)
            if missing == "mcar":
                walds.append(wald)
                assert scipy.stats.chi2.sf(wald, len(scores)) > 1e-5, (seed, wald, scores)   # no gross failure
                assert (scores.abs() > 1.96).sum() <= 3, (seed, scores)
            z[missing].append(scores)
            path.unlink()
    mar, mcar = pd.DataFrame(z["mar"]).mean(), pd.DataFrame(z["mcar"]).mean()
    # the joint check under MCAR: the replicates are independent, so their Wald statistics add up to a
    # chi-square with 10 degrees of freedom per replicate under the truth
    pooled = scipy.stats.chi2.sf(sum(walds), 10 * len(walds))
    print("\nmean z over replicates:\n", pd.DataFrame({"mar": mar, "mcar": mcar}).round(2).to_string(),
          "\nWald statistics under MCAR:", [round(w, 1) for w in walds], f"pooled p = {pooled:.3g}")
    assert pooled > 0.001, (walds, pooled)
    # complete cases biased under MAR: the sepsis coefficient at least 2 standard errors low on average
    assert mar["sepsis"] <= -2, mar
    # and not under MCAR: every mean z within 3.5 standard errors of 0 (a mean of 4 independent z)
    assert (mcar.abs() < 3.5 / math.sqrt(len(seeds))).all(), mcar
