"""clinpaper.cohort across modules: the demo study on a synthesized OMOP file, checked against
independent SQL; the same extract as upper-case Parquet; contracts and bad input."""
import copy
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from clinpaper.cohort import CRITERIA, Cohort, build_cohort, connect_source, register_criterion, source_table
from clinpaper.core import CohortError, SourceError, StudyError

STUDY_FILE = Path(__file__).resolve().parents[1] / "clinpaper" / "templates" / "hospital-variation" / "study.yaml"


@pytest.fixture(scope="module")
def study():
    return yaml.safe_load(STUDY_FILE.read_text())


@pytest.fixture(scope="module")
def omop(tmp_path_factory):
    synth = pytest.importorskip("clinpaper.synth")
    path = tmp_path_factory.mktemp("omop") / "synth.duckdb"
    synth.synthesize(path, patients=2000, sites=8, seed=11)
    return path


@pytest.fixture(scope="module")
def cohort(study, omop):
    return build_cohort(study, omop)


# The demo study in plain SQL, written independently of the Ibis code: date_sub('year', ...) counts
# completed years, EXISTS for death and conditions, FILTER aggregates for the measurements.
EXPECTED_SQL = """
WITH icu AS (
    SELECT v.*, row_number() OVER (PARTITION BY person_id ORDER BY visit_start_datetime, visit_occurrence_id) AS k
    FROM visit_occurrence v WHERE visit_concept_id = 32037
), first_stay AS (
    SELECT i.*, p.gender_concept_id,
           date_sub('year', CAST(p.birth_datetime AS DATE), CAST(i.visit_start_datetime AS DATE)) AS age,
           (epoch(i.visit_end_datetime) - epoch(i.visit_start_datetime)) / 3600.0 AS hours
    FROM icu i JOIN person p USING (person_id) WHERE k = 1
), kept AS (
    SELECT * FROM first_stay WHERE age >= 18 AND hours >= 4
), hr AS (
    SELECT k.visit_occurrence_id,
           min(m.value_as_number) FILTER (WHERE m.measurement_concept_id = 3027018 AND m.unit_concept_id = 8483
                                           AND m.value_as_number BETWEEN 20 AND 300) AS heart_rate_min,
           max(m.value_as_number) FILTER (WHERE m.measurement_concept_id = 3027018 AND m.unit_concept_id = 8483
                                           AND m.value_as_number BETWEEN 20 AND 300) AS heart_rate_max,
           max(m.value_as_number) FILTER (WHERE m.measurement_concept_id = 3020891 AND m.unit_concept_id = 586323
                                           AND m.value_as_number BETWEEN 25 AND 45) AS temperature_max,
           max(m.value_as_number) FILTER (WHERE m.measurement_concept_id = 3047181 AND m.unit_concept_id = 8753
                                           AND m.value_as_number BETWEEN 0.1 AND 30) AS lactate_max
    FROM kept k JOIN measurement m ON m.person_id = k.person_id
     AND m.measurement_datetime >= k.visit_start_datetime
     AND m.measurement_datetime <= k.visit_start_datetime + INTERVAL 24 HOUR
     AND m.measurement_datetime <= k.visit_end_datetime
    GROUP BY 1
)
SELECT k.person_id, k.visit_occurrence_id, k.care_site_id AS hospital, k.age,
       CASE WHEN k.gender_concept_id = 8507 THEN 1 ELSE 0 END AS male,
       hours / 24 AS los_days,
       CASE WHEN EXISTS (SELECT 1 FROM death d WHERE d.person_id = k.person_id
                         AND d.death_date BETWEEN k.visit_start_date AND k.visit_end_date) THEN 1 ELSE 0 END
           AS death_in_hospital,
       CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = k.person_id
                         AND c.condition_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor
                                                        WHERE ancestor_concept_id = 132797 UNION SELECT 132797)
                         AND c.condition_start_date = k.visit_start_date) THEN 1 ELSE 0 END AS sepsis,
       CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = k.person_id
                         AND c.condition_concept_id IN (201820, 201826)
                         AND c.condition_start_date <= k.visit_start_date) THEN 1 ELSE 0 END AS diabetes,
       hr.heart_rate_min, hr.heart_rate_max, hr.temperature_max, hr.lactate_max
FROM kept k LEFT JOIN hr USING (visit_occurrence_id)
ORDER BY k.person_id
"""


def test_cohort_matches_independent_sql(cohort, omop):
    with duckdb.connect(str(omop), read_only=True) as con:
        expected = con.execute(EXPECTED_SQL).df()
    got = cohort.table
    assert len(got) == len(expected) > 1500
    for column in ["person_id", "visit_occurrence_id", "hospital", "age", "male", "death_in_hospital", "sepsis",
                   "diabetes"]:
        np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
    for column in ["los_days", "heart_rate_min", "heart_rate_max", "temperature_max", "lactate_max"]:
        np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float),
                                   equal_nan=True, err_msg=column)
    assert got.death_in_hospital.sum() > 50 and got.sepsis.sum() > 50
    assert got.lactate_max.isna().any()  # not every stay has a lactate


def test_flow_matches_independent_sql(cohort, omop):
    with duckdb.connect(str(omop), read_only=True) as con:
        stays, persons = con.execute("SELECT count(*), count(DISTINCT person_id) FROM visit_occurrence "
                                     "WHERE visit_concept_id = 32037").fetchone()
    flow = cohort.flow
    assert flow.step.tolist() == ["source", "first_stay", "adult", "stay_length"]
    assert flow.n_remaining.iloc[0] == stays and flow.n_persons.iloc[0] == persons
    assert flow.n_remaining.iloc[1] == persons
    assert flow.n_remaining.iloc[-1] == len(cohort.table)
    assert (flow.n_removed.iloc[1:].to_numpy() == -np.diff(flow.n_remaining.to_numpy())).all()


def test_cleaning_counts_match_sql(cohort, omop):
    with duckdb.connect(str(omop), read_only=True) as con:
        con.register("stays", cohort.table[["person_id", "index_datetime", "los_days"]])
        wrong_unit, out_of_range, rows = con.execute("""
            SELECT count(*) FILTER (WHERE unit_concept_id <> 586323),
                   count(*) FILTER (WHERE unit_concept_id = 586323 AND value_as_number NOT BETWEEN 25 AND 45),
                   count(*)
            FROM measurement m JOIN stays s USING (person_id)
            WHERE measurement_concept_id = 3020891 AND measurement_datetime >= s.index_datetime
              AND measurement_datetime <= s.index_datetime + INTERVAL 24 HOUR
              AND measurement_datetime <= s.index_datetime + to_microseconds(CAST(s.los_days * 86400e6 AS BIGINT))
        """).fetchone()
    row = cohort.cleaning.set_index("variable").loc["temperature"]
    assert (row.n_rows_in_window, row.n_wrong_unit, row.n_out_of_range) == (rows, wrong_unit, out_of_range)
    assert row.n_stays_missing == int(cohort.table.temperature_max.isna().sum())
    assert set(cohort.cleaning.variable) == {m["id"] for m in yaml.safe_load(STUDY_FILE.read_text())["features"]["measurements"]}


def test_upper_case_parquet_gives_the_same_cohort(study, omop, cohort, tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    with duckdb.connect(str(omop), read_only=True) as con:
        for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            columns = ", ".join(f'"{c}" AS "{c.upper()}"' for (c, *_) in con.execute(f"DESCRIBE {name}").fetchall())
            if name == "measurement":  # one table as a folder of several files
                (folder / "MEASUREMENT").mkdir()
                for part in range(2):
                    con.execute(f"COPY (SELECT {columns} FROM {name} WHERE person_id % 2 = {part}) "
                                f"TO '{folder / 'MEASUREMENT' / f'part{part}.parquet'}' (FORMAT parquet)")
            else:
                con.execute(f"COPY (SELECT {columns} FROM {name}) TO '{folder / (name.upper() + '.parquet')}' "
                            "(FORMAT parquet)")
    again = build_cohort(study, folder)
    pd.testing.assert_frame_equal(again.table, cohort.table)
    pd.testing.assert_frame_equal(again.flow, cohort.flow)
    pd.testing.assert_frame_equal(again.cleaning, cohort.cleaning)
    assert again.source["format"] == "parquet"


def test_contract(study, omop, cohort):
    assert isinstance(cohort, Cohort)
    before = copy.deepcopy(study)
    again = build_cohort(study, connect_source(omop))  # a connection works as well as a path
    assert study == before  # the study is not mutated
    pd.testing.assert_frame_equal(again.table, cohort.table)  # same data, same numbers
    assert cohort.table.visit_occurrence_id.is_unique and cohort.table.person_id.is_unique
    assert set(cohort.table.columns) <= set(cohort.codebook)
    assert cohort.codebook["death_in_hospital"]["role"] == "outcome"
    assert cohort.codebook["hospital"]["role"] == "group"
    assert cohort.table.sex.isin(["Female", "Male", "Other/unknown"]).all()
    assert cohort.source["path"] == str(Path(omop).resolve())
    assert "person_id=" not in repr(cohort) and "stays" in repr(cohort)


def test_source_is_opened_read_only(omop):
    before = omop.stat().st_mtime_ns
    con = connect_source(omop)
    with pytest.raises(Exception, match="read-only"):
        con.raw_sql("CREATE TABLE omop_source.main.scratch (x INTEGER)")
    assert omop.stat().st_mtime_ns == before


def test_new_criterion_types_plug_in(study, omop, cohort):
    @register_criterion("hospital_in")
    def hospital_in(index, criterion, context):
        return index.group_value.isin(criterion["hospitals"]), "Hospitals of the study"

    try:
        custom = copy.deepcopy(study)
        custom["cohort"]["criteria"].append({"id": "sites", "label": "Other hospitals", "type": "hospital_in",
                                             "hospitals": [1, 2, 3]})
        result = build_cohort(custom, omop)
        expected = cohort.table[cohort.table.hospital.isin([1, 2, 3])]
        assert len(result.table) == len(expected)
        assert result.flow.n_removed.iloc[-1] == len(cohort.table) - len(expected)
    finally:
        CRITERIA.pop("hospital_in")


def test_bad_study_and_source(study, omop, tmp_path):
    bad = copy.deepcopy(study)
    bad["cohort"]["criteria"][1]["type"] = "prior_observation_days"
    with pytest.raises(StudyError, match="Criterion 'stay_length' has unknown type.*age, exposure_to_comparator, no_prior, prior_observation, visit_length"):
        build_cohort(bad, omop)
    with pytest.raises(SourceError, match="does not exist"):
        build_cohort(study, tmp_path / "nowhere.duckdb")
    lacking = tmp_path / "lacking.duckdb"
    with duckdb.connect(str(lacking)) as con:
        con.execute(f"ATTACH '{omop}' AS full_copy (READ_ONLY)")
        con.execute("CREATE TABLE person AS SELECT * EXCLUDE (gender_concept_id) FROM full_copy.person")
        con.execute("CREATE TABLE visit_occurrence AS SELECT * FROM full_copy.visit_occurrence")
    with pytest.raises(SourceError, match=r"lacking\.duckdb.*missing tables: death, measurement, "
                                          r"condition_occurrence; missing columns: person: gender_concept_id"):
        build_cohort(study, lacking)


def test_source_table_lower_cases_columns(omop):
    con = connect_source(omop)
    assert source_table(con, "DEATH").columns[:2] == ("person_id", "death_date")


@pytest.mark.parametrize("table", ["visit_occurrence", "person"])
def test_group_of_a_condition_indexed_study_comes_from_the_visit_or_the_person(study, omop, table):
    "A condition record has no care site: the group is read from its visit, or from the person."
    condition_study = copy.deepcopy(study)
    condition_study["cohort"] = {"index": {"event": "condition", "concepts": [132797], "occurrence": "first"},
                                 "criteria": []}
    condition_study["outcome"] = {"id": "death_in_hospital", "label": "Death", "type": "death",
                                  "window": {"start_day": 0, "end_day": 30}}
    condition_study["group"] = {**condition_study["group"], "table": table}
    condition_study["features"] = {"demographics": ["age", "sex"]}
    built = build_cohort(condition_study, omop)
    link = ("join visit_occurrence g using (visit_occurrence_id)" if table == "visit_occurrence"
            else "join person g using (person_id)")
    con = duckdb.connect(str(omop), read_only=True)
    expected = dict(con.execute(f"""
        with ranked as (
            select co.*, row_number() over (partition by co.person_id
                                            order by co.condition_start_date, co.condition_occurrence_id) as r
            from condition_occurrence co
            join concept_ancestor ca on ca.descendant_concept_id = co.condition_concept_id
                                    and ca.ancestor_concept_id = 132797)
        select g.care_site_id, count(*) from ranked {link}
        where r = 1 and g.care_site_id is not null group by 1""").fetchall())
    con.close()
    got = built.table["hospital"].value_counts().to_dict()
    assert {int(k): int(v) for k, v in got.items()} == expected
    assert sum(expected.values()) > 20
