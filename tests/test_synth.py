"""Contracts of clinpaper.synth, checked with independent SQL on the DuckDB file it writes."""
import json

import duckdb
import numpy as np
import pandas as pd
import pytest

import clinpaper.synth as synth
from clinpaper.synth import SHIFTS, synthesize

TABLES = ["person", "care_site", "location", "observation_period", "visit_occurrence", "condition_occurrence",
          "measurement", "death", "concept", "concept_ancestor", "cdm_source"]

AGE_SQL = """year(v.visit_start_date) - p.year_of_birth
    - CASE WHEN month(v.visit_start_date) < p.month_of_birth
             OR (month(v.visit_start_date) = p.month_of_birth AND day(v.visit_start_date) < p.day_of_birth)
           THEN 1 ELSE 0 END"""


def query(path, sql):
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(sql).df()


def tables(path):
    with duckdb.connect(str(path), read_only=True) as con:
        frames = {}
        for table in TABLES:
            frame = con.sql(f"SELECT * FROM {table}").df()
            frames[table] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        return frames


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    path = folder / "demo.duckdb"
    truth = synthesize(path, patients=4_000, sites=15, seed=3)
    return path, truth


def test_files_and_truth(cohort):
    path, truth = cohort
    truth_file = path.with_name("demo.truth.json")
    assert truth_file.exists()
    assert json.loads(truth_file.read_text()) == truth
    for key in ["seed", "patients", "sites", "shift", "n_persons", "n_stays", "intercept", "beta",
                "sigma_hospital", "hospital_effects", "predictors", "mortality_first_stay", "cdm_version",
                "missing", "physiology", "physiology_window", "acuity", "missingness", "severity_pathway"]:
        assert key in truth
    assert truth["missing"] == "mar"
    assert [term["column"] for term in truth["physiology"]] == ["lactate_max", "map_min", "heart_rate_max",
                                                                "creatinine_max"]
    assert set(truth["beta"]) == {"age_10", "male", "sepsis", "chf", "ckd", "cancer"}
    assert set(truth["predictors"]) == set(truth["beta"])
    assert truth["cdm_version"] == "5.4" and truth["n_persons"] == 4_000
    sites = query(path, "SELECT care_site_id FROM care_site").care_site_id
    assert set(truth["hospital_effects"]) == {str(site) for site in sites}
    assert np.std(list(truth["hospital_effects"].values())) == pytest.approx(truth["sigma_hospital"], rel=0.6)


def test_schema_types(cohort):
    path, _ = cohort
    columns = query(path, "SELECT table_name, column_name, data_type FROM information_schema.columns")
    types = {(row.table_name, row.column_name): row.data_type for row in columns.itertuples()}
    assert set(columns.table_name) >= set(TABLES)
    expected = {
        ("person", "person_id"): "BIGINT", ("person", "birth_datetime"): "TIMESTAMP",
        ("person", "year_of_birth"): "INTEGER", ("person", "gender_concept_id"): "BIGINT",
        ("visit_occurrence", "visit_start_date"): "DATE", ("visit_occurrence", "visit_end_datetime"): "TIMESTAMP",
        ("visit_occurrence", "care_site_id"): "BIGINT", ("measurement", "value_as_number"): "DOUBLE",
        ("measurement", "measurement_datetime"): "TIMESTAMP", ("measurement", "unit_concept_id"): "BIGINT",
        ("condition_occurrence", "condition_start_date"): "DATE", ("death", "death_date"): "DATE",
        ("observation_period", "observation_period_start_date"): "DATE",
        ("concept_ancestor", "min_levels_of_separation"): "INTEGER", ("cdm_source", "cdm_version"): "VARCHAR",
    }
    for key, kind in expected.items():
        assert types.get(key) == kind, key
    assert query(path, "SELECT cdm_version FROM cdm_source").cdm_version.tolist() == ["5.4"]


def test_cohort_counts_by_sql(cohort):
    path, truth = cohort
    stays = query(path, f"""
        SELECT v.visit_concept_id, {AGE_SQL} AS age,
               row_number() OVER (PARTITION BY v.person_id ORDER BY v.visit_start_datetime) AS number,
               count(*) OVER (PARTITION BY v.person_id) AS n_stays,
               date_diff('minute', v.visit_start_datetime, v.visit_end_datetime) AS minutes,
               coalesce(d.death_date BETWEEN v.visit_start_date AND v.visit_end_date, false) AS died
        FROM visit_occurrence v JOIN person p USING (person_id) LEFT JOIN death d USING (person_id)""")
    first = stays[stays.number == 1]
    assert set(stays.visit_concept_id) == {32037}
    assert (first.age < 18).sum() > 0
    assert (stays.minutes < 240).sum() > 0
    assert (stays[stays.died].number == stays[stays.died].n_stays).all()      # deaths only in last stays
    assert stays.died.sum() == len(query(path, "SELECT * FROM death"))
    assert 0.10 <= first.died.mean() <= 0.19
    assert first.died.mean() == pytest.approx(truth["mortality_first_stay"], abs=1e-12)
    assert len(stays) == truth["n_stays"]
    # sepsis and diabetes are only complete through concept_ancestor
    counts = query(path, """SELECT ca.ancestor_concept_id AS concept, count(DISTINCT co.person_id) AS expanded,
                                   count(DISTINCT co.person_id) FILTER (WHERE co.condition_concept_id = ca.ancestor_concept_id) AS direct
                            FROM condition_occurrence co JOIN concept_ancestor ca ON ca.descendant_concept_id = co.condition_concept_id
                            WHERE ca.ancestor_concept_id IN (132797, 201820) GROUP BY 1""")
    assert len(counts) == 2 and (counts.expanded > counts.direct).all()


def test_same_seed_same_rows_any_chunk_size(cohort, tmp_path):
    path, truth = cohort
    again = synthesize(tmp_path / "again.duckdb", patients=4_000, sites=15, seed=3, chunk_size=1_500)
    assert again == truth
    first, second = tables(path), tables(tmp_path / "again.duckdb")
    for table in TABLES:
        pd.testing.assert_frame_equal(first[table], second[table])


def test_other_seed_other_rows(cohort, tmp_path):
    path, truth = cohort
    other = synthesize(tmp_path / "other.duckdb", patients=4_000, sites=15, seed=4)
    assert other["hospital_effects"] != truth["hospital_effects"]
    assert not tables(path)["visit_occurrence"].equals(tables(tmp_path / "other.duckdb")["visit_occurrence"])


def test_external_shift(cohort, tmp_path):
    path, truth = cohort
    external = synthesize(tmp_path / "external.duckdb", patients=4_000, sites=15, seed=3, shift="external")
    base_sites = set(query(path, "SELECT care_site_id FROM care_site").care_site_id)
    shifted = query(tmp_path / "external.duckdb", "SELECT care_site_id, care_site_name FROM care_site")
    assert not base_sites & set(shifted.care_site_id)
    assert not set(query(path, "SELECT care_site_name FROM care_site").care_site_name) & set(shifted.care_site_name)
    assert external["mortality_first_stay"] > truth["mortality_first_stay"] + 0.03
    assert external["intercept"] > truth["intercept"]
    assert external["beta"] == truth["beta"]


def test_every_documented_shift_runs(tmp_path):
    for name in SHIFTS:
        truth = synthesize(tmp_path / f"{name}.duckdb", patients=200, sites=4, shift=name)
        assert truth["shift"] == name


def test_bad_arguments(tmp_path):
    out = tmp_path / "x.duckdb"
    with pytest.raises(ValueError, match="Known shifts: 'external'"):
        synthesize(out, patients=10, shift="elsewhere")
    with pytest.raises(ValueError, match="`patients` of synthesize must be at least 1"):
        synthesize(out, patients=0)
    with pytest.raises(ValueError, match="`sites`"):
        synthesize(out, sites=0)
    with pytest.raises(ValueError, match="`chunk_size`"):
        synthesize(out, chunk_size=0)
    with pytest.raises(TypeError, match="whole number"):
        synthesize(out, patients="100")
    with pytest.raises(ValueError, match="Unknown `missing` 'sometimes'"):
        synthesize(out, patients=10, missing="sometimes")
    with pytest.raises(ValueError, match="`missing` of synthesize belongs to the ICU scenario"):
        synthesize(out, scenario="comparative", patients=10, missing="mcar")
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_unless_asked(tmp_path):
    out = tmp_path / "c.duckdb"
    out.write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synthesize(out, patients=10)
    assert out.read_text() == "precious"
    truth = synthesize(out, patients=30, sites=2, overwrite=True)
    assert truth["n_persons"] == 30
    assert len(query(out, "SELECT * FROM person")) == 30


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_block(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    original = synth._block
    monkeypatch.setattr(synth, "_block", failing_block)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize(tmp_path / "crash.duckdb", patients=2_500, chunk_size=500)
    assert list(tmp_path.iterdir()) == []


def test_children_and_adults_criteria_remove_people(cohort):
    path, _ = cohort
    first = query(path, f"""
        SELECT {AGE_SQL} AS age, date_diff('minute', v.visit_start_datetime, v.visit_end_datetime) AS minutes
        FROM visit_occurrence v JOIN person p USING (person_id)
        QUALIFY row_number() OVER (PARTITION BY v.person_id ORDER BY v.visit_start_datetime) = 1""")
    assert 0.003 < (first.age < 18).mean() < 0.025
    assert ((first.age >= 18) & (first.minutes < 240)).sum() > 0
    assert 60 <= first.age.median() <= 70


def test_refresh_keeps_the_hospitals(cohort, tmp_path):
    path, truth = cohort
    refresh = synthesize(tmp_path / "refresh.duckdb", patients=500, sites=15, seed=3, shift="refresh")
    assert refresh["hospital_effects"] == truth["hospital_effects"]
    years = query(tmp_path / "refresh.duckdb", "SELECT min(year(visit_start_date)) AS first FROM visit_occurrence")
    assert years["first"][0] >= 2023


def test_nothing_before_birth(cohort):
    path, _ = cohort
    early = query(path, """
        SELECT (SELECT count(*) FROM observation_period o JOIN person p USING (person_id)
                WHERE o.observation_period_start_date < CAST(p.birth_datetime AS DATE)) AS periods,
               (SELECT count(*) FROM condition_occurrence c JOIN person p USING (person_id)
                WHERE c.condition_start_date <= CAST(p.birth_datetime AS DATE)) AS conditions""")
    assert early.periods[0] == 0 and early.conditions[0] == 0
