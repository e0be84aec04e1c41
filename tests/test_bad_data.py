"""Bad data, one parametrized case per class: a small synthetic OMOP extract (or flat table) damaged with SQL,
then built. A data rule that would distort the flow is a flow step and a counted row of the cleaning table
(checked against an independent SQL count); data that cannot make a true paper is an error that names the
table, the column, the rule and the count, and never a data value or SQL."""
import copy
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from clinpaper.cohort import build_cohort, connect_source, source_error
from clinpaper.core import CohortError, SourceError, mask_count
from clinpaper.flat import load_flat

STUDY_FILE = Path(__file__).resolve().parents[1] / "clinpaper" / "templates" / "hospital-variation" / "study.yaml"
# what never belongs in a message: DuckDB's own text, SQL, and the values planted below
LEAKS = ("MRN-", "ICU-A", "bpm", "LOINC", "8867-4", "unknown-date", "SELECT", "LINE 1", "CAST(", "INT64",
         "Conversion Error", "Traceback")


@pytest.fixture(scope="module")
def study():
    return yaml.safe_load(STUDY_FILE.read_text())


@pytest.fixture(scope="module")
def omop(tmp_path_factory):
    synth = pytest.importorskip("clinpaper.synth")
    path = tmp_path_factory.mktemp("omop") / "base.duckdb"
    synth.synthesize(path, patients=300, sites=4, seed=15)
    return path


@pytest.fixture(scope="module")
def clean(study, omop):
    "The cohort of the undamaged extract."
    return build_cohort(study, omop)


def damaged(omop, tmp_path, *statements, name="damaged.duckdb"):
    path = tmp_path / name
    shutil.copy(omop, path)
    with duckdb.connect(str(path)) as con:
        for statement in statements:
            con.execute(statement)
    return path


def build(study, path):
    "The cohort and the messages of its warnings."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cohort = build_cohort(study, path)
    return cohort, [str(w.message) for w in caught]


def assert_clean_message(message: str):
    for leak in LEAKS:
        assert leak not in message, (leak, message)


# The demo study's flow in plain SQL, written independently of the Ibis code: the first ICU stay per person
# (rows deduplicated first), then the fate of each: the first data rule it breaks, else the first criterion.
FATE_SQL = """
WITH icu AS (
    SELECT DISTINCT visit_occurrence_id, person_id, visit_start_datetime AS s, visit_end_datetime AS e, care_site_id
    FROM visit_occurrence WHERE visit_concept_id = 32037
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY s NULLS LAST, visit_occurrence_id) AS k FROM icu
), p AS (
    SELECT DISTINCT person_id,
           CASE WHEN year(birth_datetime) BETWEEN 1850 AND year(current_date) THEN CAST(birth_datetime AS DATE)
                WHEN year_of_birth BETWEEN 1850 AND year(current_date)
                THEN make_date(year_of_birth, coalesce(month_of_birth, 7), coalesce(day_of_birth, 15)) END AS birth
    FROM person
), d AS (
    SELECT person_id, min(death_date) AS death FROM death GROUP BY 1
), fates AS (
    SELECT r.*, CASE
        WHEN r.person_id NOT IN (SELECT person_id FROM person) THEN 'person_recorded'
        WHEN r.s IS NULL THEN 'start_recorded'
        WHEN r.e IS NULL THEN 'end_recorded'
        WHEN r.e < r.s THEN 'end_after_start'
        WHEN p.birth IS NULL THEN 'birth_recorded'
        WHEN CAST(r.s AS DATE) < p.birth THEN 'after_birth'
        WHEN d.death < p.birth THEN 'death_after_birth'
        WHEN CAST(r.s AS DATE) > d.death THEN 'before_death'
        WHEN CAST(r.s AS DATE) > current_date THEN 'not_in_future'
        WHEN CAST(r.e AS DATE) > current_date THEN 'ended'
        WHEN date_sub('year', p.birth, CAST(r.s AS DATE)) < 18 THEN 'adult'
        WHEN (epoch(r.e) - epoch(r.s)) / 3600.0 < 4 THEN 'stay_length'
        WHEN r.care_site_id IS NULL THEN 'group_recorded'
        ELSE 'kept' END AS fate
    FROM ranked r LEFT JOIN p USING (person_id) LEFT JOIN d USING (person_id)
    WHERE r.k = 1
)
SELECT fate, count(*) FROM fates GROUP BY 1
"""


def expected_removed(path) -> dict:
    "step -> stays removed, by the independent SQL (steps that remove none left out)."
    with duckdb.connect(str(path), read_only=True) as con:
        return {fate: n for fate, n in con.execute(FATE_SQL).fetchall() if fate != "kept"}


def got_removed(cohort) -> dict:
    flow = cohort.flow
    return {row.step: int(row.n_removed) for row in flow.itertuples()
            if row.step not in ("source", "first_stay") and row.n_removed}


def unconstrained(table):
    "SQL that rebuilds `table` without its NOT NULL constraints (a careless export has none)."
    return [f"CREATE TABLE scratch AS SELECT * FROM {table}", f"DROP TABLE {table}",
            f"ALTER TABLE scratch RENAME TO {table}"]


# ---------------------------------------------------------------------------------------------------------
# Data rules: the record is left out in a flow step of its own and counted in the cleaning table.
# (class, SQL that damages the extract, the flow step, the cleaning table's variable)
RULES = [
    ("orphan visits (person row missing)",
     ["DELETE FROM person WHERE person_id IN (SELECT person_id FROM person ORDER BY person_id LIMIT 14)"],
     "person_recorded", "visit_occurrence.person_id"),
    ("stay ends before it starts",
     ["UPDATE visit_occurrence SET visit_end_datetime = visit_start_datetime - INTERVAL 3 HOUR, "
      "visit_end_date = visit_start_date - 1 WHERE visit_occurrence_id % 9 = 0"],
     "end_after_start", "visit_occurrence.visit_end_datetime"),
    ("stay without an end",
     [*unconstrained("visit_occurrence"), "UPDATE visit_occurrence SET visit_end_datetime = NULL, visit_end_date = NULL WHERE visit_occurrence_id % 11 = 0"],
     "end_recorded", "visit_occurrence.visit_end_date"),
    ("stay without a start",
     [*unconstrained("visit_occurrence"), "UPDATE visit_occurrence SET visit_start_datetime = NULL, visit_start_date = NULL "
      "WHERE visit_occurrence_id % 13 = 0"],
     "start_recorded", "visit_occurrence.visit_start_date"),
    ("year of birth implausible (1800)",
     ["UPDATE person SET year_of_birth = 1800, birth_datetime = NULL WHERE person_id % 10 = 0"],
     "birth_recorded", "person.year_of_birth"),
    ("year of birth missing",
     [*unconstrained("person"), "UPDATE person SET year_of_birth = NULL, birth_datetime = NULL WHERE person_id % 12 = 0"],
     "birth_recorded", "person.year_of_birth"),
    ("visit before birth",
     ["UPDATE person SET year_of_birth = 2024, month_of_birth = 1, day_of_birth = 1, "
      "birth_datetime = TIMESTAMP '2024-01-01' WHERE person_id % 10 = 3"],
     "after_birth", "visit_occurrence.visit_start_date"),
    ("death before birth",
     ["INSERT INTO death (person_id, death_date) SELECT person_id, DATE '1900-01-01' FROM person "
      "WHERE person_id % 15 = 1 AND person_id NOT IN (SELECT person_id FROM death)"],
     "death_after_birth", "death.death_date"),
    ("visit after death",
     ["INSERT INTO death (person_id, death_date) SELECT person_id, min(visit_start_date) - 30 FROM visit_occurrence "
      "WHERE person_id % 8 = 2 AND person_id NOT IN (SELECT person_id FROM death) GROUP BY person_id"],
     "before_death", "visit_occurrence.visit_start_date"),
    ("visit dated in the future",
     ["UPDATE visit_occurrence SET visit_start_datetime = visit_start_datetime + INTERVAL 90 YEAR, "
      "visit_end_datetime = visit_end_datetime + INTERVAL 90 YEAR, visit_start_date = visit_start_date + INTERVAL 90 YEAR, "
      "visit_end_date = visit_end_date + INTERVAL 90 YEAR WHERE person_id % 9 = 4"],
     "not_in_future", "visit_occurrence.visit_start_date"),
    ("placeholder end date in the future",
     ["UPDATE visit_occurrence SET visit_end_datetime = TIMESTAMP '2099-12-31', visit_end_date = DATE '2099-12-31' "
      "WHERE person_id % 10 = 7"],
     "ended", "visit_occurrence.visit_end_date"),
]


@pytest.mark.parametrize("statements, step, variable", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_data_rule_is_its_own_flow_step_and_a_counted_cleaning_row(study, omop, tmp_path, statements, step, variable):
    path = damaged(omop, tmp_path, *statements)
    expected = expected_removed(path)
    assert expected.get(step, 0) > 0, "the damage must hit some first stays"
    cohort, said = build(study, path)
    assert got_removed(cohort) == expected          # every step's count, by the independent SQL
    flow = cohort.flow.set_index("step")
    assert list(cohort.flow.step[:2]) == ["source", "first_stay"]
    assert cohort.flow.step.tolist().index(step) < cohort.flow.step.tolist().index("adult")  # before the criteria
    cleaning = cohort.cleaning
    rows = cleaning[(cleaning.variable == variable) & (cleaning.label == flow.loc[step, "reason"])]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert int(row.n_removed) == expected[step] == int(flow.loc[step, "n_removed"])
    assert int(row.n_rows_in_window) - int(row.n_valid) == int(row.n_removed)
    warned = [m for m in said if "breaks data rules" in m]
    assert len(warned) == 1 and variable in warned[0]
    assert f"({mask_count(expected[step], threshold=11)})" in warned[0]   # small counts masked
    assert len(cohort.table) == flow.n_remaining.iloc[-1]


def test_orphans_are_not_counted_as_minors(study, omop, clean, tmp_path):
    "The issue's case: without the rule, the orphans fell into 'younger than 18 years'."
    clean = clean.flow.set_index("step")
    path = damaged(omop, tmp_path, RULES[0][1][0])
    flow = build(study, path)[0].flow.set_index("step")
    with duckdb.connect(str(path), read_only=True) as con:
        orphans = con.execute("SELECT count(DISTINCT person_id) FROM visit_occurrence WHERE person_id NOT IN "
                              "(SELECT person_id FROM person)").fetchone()[0]
    assert flow.loc["person_recorded", "n_removed"] == orphans == 14
    assert flow.loc["adult", "n_removed"] <= clean.loc["adult", "n_removed"]   # not 14 more
    assert flow.loc["adult", "reason"] == clean.loc["adult", "reason"]


@pytest.mark.parametrize("table, key", [("visit_occurrence", "visit_occurrence_id"), ("person", "person_id")])
def test_exact_duplicate_rows_are_dropped_and_counted(study, omop, clean, tmp_path, table, key):
    path = damaged(omop, tmp_path, f"INSERT INTO {table} SELECT * FROM {table} WHERE {key} % 7 = 0")
    with duckdb.connect(str(path), read_only=True) as con:
        if table == "visit_occurrence":
            n_rows, n_distinct = con.execute("SELECT count(*), count(DISTINCT visit_occurrence_id) FROM "
                                             "visit_occurrence WHERE visit_concept_id = 32037").fetchone()
        else:
            n_rows, n_distinct = con.execute("SELECT count(*), count(DISTINCT person_id) FROM person").fetchone()
    cohort, said = build(study, path)
    pd.testing.assert_frame_equal(cohort.flow, clean.flow)          # the flow is as true as before
    pd.testing.assert_frame_equal(cohort.table, clean.table)
    row = cohort.cleaning.set_index("variable").loc[f"{table}.{key}"]
    assert (int(row.n_rows_in_window), int(row.n_valid), int(row.n_removed)) == (n_rows, n_distinct,
                                                                                 n_rows - n_distinct)
    assert n_rows > n_distinct and any("Duplicate rows" in m for m in said)


def test_duplicate_measurement_rows_are_dropped_and_counted(study, omop, clean, tmp_path):
    "An extract whose measurement table was appended twice in part: the copies would inflate counts and means."
    path = damaged(omop, tmp_path, "INSERT INTO measurement SELECT * FROM measurement WHERE measurement_id % 5 = 0")
    concepts = sorted({c for m in study["features"]["measurements"] for c in m["concepts"]})
    with duckdb.connect(str(path), read_only=True) as con:
        n_rows, n_distinct = con.execute(f"SELECT count(*), count(DISTINCT measurement_id) FROM measurement "
                                         f"WHERE measurement_concept_id IN ({', '.join(map(str, concepts))})").fetchone()
    cohort, _ = build(study, path)
    pd.testing.assert_frame_equal(cohort.table, clean.table)
    row = cohort.cleaning.set_index("variable").loc["measurement.measurement_id"]
    assert (int(row.n_rows_in_window), int(row.n_removed)) == (n_rows, n_rows - n_distinct) and n_rows > n_distinct


def test_several_death_dates_are_counted_and_the_earliest_used(study, omop, clean, tmp_path):
    path = damaged(omop, tmp_path, "INSERT INTO death SELECT * REPLACE (death_date + 3 AS death_date) FROM death "
                                   "WHERE person_id % 3 = 0")
    with duckdb.connect(str(path), read_only=True) as con:
        n_persons, n_several = con.execute("SELECT count(*), count(*) FILTER (WHERE n > 1) FROM (SELECT person_id, "
                                           "count(DISTINCT death_date) AS n FROM death GROUP BY 1)").fetchone()
    cohort, said = build(study, path)
    row = cohort.cleaning.set_index("variable").loc["death.person_id"]
    assert (int(row.n_rows_in_window), int(row.n_rows_in_window - row.n_valid)) == (n_persons, n_several)
    assert n_several > 0 and any(f"(the earliest used) ({mask_count(n_several)})" in m for m in said)
    pd.testing.assert_frame_equal(cohort.table, clean.table)   # the earliest date is the one recorded before


def test_inverted_observation_periods_are_their_own_step(study, omop, tmp_path):
    "Without the rule, a person whose observation period ends before it starts fell into 'less than 365 days'."
    prior = copy.deepcopy(study)
    prior["cohort"]["criteria"].append({"id": "lookback", "label": "Less than 30 days observed before admission",
                                        "type": "prior_observation", "days": 30})
    path = damaged(omop, tmp_path, "UPDATE observation_period SET observation_period_end_date = "
                                   "observation_period_start_date - 10 WHERE person_id % 10 = 5")
    with duckdb.connect(str(path), read_only=True) as con:
        inverted = {p for (p,) in con.execute("SELECT person_id FROM observation_period "
                                               "WHERE observation_period_end_date < observation_period_start_date").fetchall()}
    cohort, _ = build(prior, path)
    flow = cohort.flow.set_index("step")
    assert flow.loc["periods_valid", "n_removed"] == len(inverted) > 0   # every person has an ICU stay
    assert not set(cohort.table.person_id) & inverted
    assert flow.loc["lookback", "reason"] == "Less than 30 days observed before admission"


def test_a_data_rule_that_empties_the_cohort_says_so(study, omop, tmp_path):
    path = damaged(omop, tmp_path, "DELETE FROM person")
    with pytest.raises(CohortError, match="The cohort is empty: the data rule 'Person missing from "
                                          "the person table' removed the last 300 index events. The source's "
                                          r"visit_occurrence.person_id is broken"):
        build_cohort(study, path)


@pytest.mark.parametrize("table, key, change", [
    ("visit_occurrence", "visit_occurrence_id", "care_site_id + 1 AS care_site_id"),
    ("person", "person_id", "8532 + 8507 - gender_concept_id AS gender_concept_id"),
], ids=["visit", "person"])
def test_conflicting_duplicates_are_an_error(study, omop, tmp_path, table, key, change):
    path = damaged(omop, tmp_path, f"INSERT INTO {table} SELECT * REPLACE ({change}) FROM {table} WHERE {key} % 7 = 0")
    with duckdb.connect(str(path), read_only=True) as con:
        extra = "AND visit_concept_id = 32037" if table == "visit_occurrence" else ""
        n_ids = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {table} WHERE true {extra} GROUP BY 1 "
                            "HAVING count(*) > 1)").fetchone()[0]
    with pytest.raises(CohortError) as caught:
        build_cohort(study, path)
    message = str(caught.value)
    assert f"{table}.{key} must be unique" in message and f"but {n_ids:,} ids are each held" in message
    assert_clean_message(message)


# ---------------------------------------------------------------------------------------------------------
# Values of the wrong type: an error naming table, column, rule and count; never the value.
def retyped(table, column, expression):
    "SQL that rebuilds `table` with `column` replaced by `expression` (which may change its type)."
    return [f"CREATE TABLE scratch AS SELECT * REPLACE ({expression} AS {column}) FROM {table}",
            f"DROP TABLE {table}", f"ALTER TABLE scratch RENAME TO {table}"]


TYPES = [
    ("MRNs in person_id", "person", "person_id", "'MRN-00' || person_id", "true", "whole numbers"),
    ("some unreadable visit dates", "visit_occurrence", "visit_start_date",
     "CASE WHEN visit_occurrence_id % 17 = 0 THEN 'unknown-date' ELSE CAST(visit_start_date AS VARCHAR) END",
     "visit_occurrence_id % 17 = 0", "dates"),
    ("source codes in a concept column", "measurement", "measurement_concept_id",
     "CASE WHEN measurement_id % 50 = 0 THEN 'LOINC 8867-4' ELSE CAST(measurement_concept_id AS VARCHAR) END",
     "measurement_id % 50 = 0", "whole numbers"),
    ("units in value_as_number", "measurement", "value_as_number",
     "CASE WHEN measurement_id % 40 = 0 THEN value_as_number || ' bpm' ELSE CAST(value_as_number AS VARCHAR) END",
     "measurement_id % 40 = 0 AND value_as_number IS NOT NULL", "numbers"),
    ("text codes in the group column", "visit_occurrence", "care_site_id", "'ICU-A' || care_site_id",
     "care_site_id IS NOT NULL", "whole numbers"),
    ("fractions in an id", "person", "person_id", "person_id + 0.5", "true", "whole numbers"),
]


@pytest.mark.parametrize("table, column, expression, broken, words", [t[1:] for t in TYPES], ids=[t[0] for t in TYPES])
def test_wrong_types_are_counted_never_shown(study, omop, tmp_path, table, column, expression, broken, words):
    with duckdb.connect(str(omop), read_only=True) as con:
        n_bad, n_rows = con.execute(f"SELECT count(*) FILTER (WHERE {broken}), count(*) FROM {table}").fetchone()
    assert n_bad > 0
    path = damaged(omop, tmp_path, *retyped(table, column, expression))
    with pytest.raises(SourceError) as caught:
        build_cohort(study, path)
    message = str(caught.value)
    assert f"{table}.{column} must hold {words}, but {n_bad:,} of {n_rows:,} rows hold" in message
    assert_clean_message(message)


def test_conversion_errors_that_escape_are_translated(study, omop, tmp_path):
    "A database error from anywhere (here a cast the type check cannot see) is put in clinpaper's words."
    error = duckdb.ConversionException("Conversion Error: Could not convert string 'MRN-0042-7781' to INT64\n\n"
                                       "LINE 1: SELECT CAST(person_id AS BIGINT) FROM person")
    message = str(source_error(error, where=Path("/data/cdm.duckdb")))
    assert message.startswith("The data source /data/cdm.duckdb holds a value that cannot be converted")
    assert_clean_message(message)
    assert isinstance(source_error(duckdb.Error("anything at all: 'MRN-1'"), where="x"), SourceError)
    assert_clean_message(str(source_error(duckdb.Error("anything at all: 'MRN-1'"), where="x")))


# ---------------------------------------------------------------------------------------------------------
# Codes that match nothing: every value unknown is an error; concepts without any record, a warning.
def test_every_unit_unknown_is_an_error(study, omop, clean, tmp_path):
    path = damaged(omop, tmp_path, "UPDATE measurement SET unit_concept_id = 0 WHERE measurement_concept_id = 3027018")
    with pytest.raises(CohortError) as caught:
        build_cohort(study, path)
    message = str(caught.value)
    clean = clean.cleaning.set_index("variable").loc["heart_rate"]
    assert f"Measurement 'heart_rate' (Heart rate): none of its {int(clean.n_rows_in_window):,} measurement rows" in message
    assert f"({int(clean.n_rows_in_window):,} in a unit_concept_id outside units [8483]" in message


def test_every_value_out_of_range_is_an_error(study, omop, tmp_path):
    """Temperature exported in Fahrenheit: every value outside valid [25, 45] (the synthetic extract's implausible
    zeros stay zero: in Fahrenheit one would read 32, inside the range)."""
    path = damaged(omop, tmp_path, "UPDATE measurement SET value_as_number = value_as_number * 1.8 + 32 "
                                   "WHERE measurement_concept_id = 3020891 AND value_as_number > 0")
    with pytest.raises(CohortError, match=r"Measurement 'temperature' \(Temperature\): none of its .* outside "
                                          r"valid \[25, 45\]"):
        build_cohort(study, path)


def test_every_gender_unknown_is_an_error(study, omop, clean, tmp_path):
    path = damaged(omop, tmp_path, "UPDATE person SET gender_concept_id = 0")
    n_persons = len(clean.table)
    with pytest.raises(CohortError, match=f"person.gender_concept_id: none of the {n_persons:,} persons"):
        build_cohort(study, path)


@pytest.mark.parametrize("statement, column, said", [
    ("DELETE FROM measurement WHERE measurement_concept_id = 3047181", "lactate_max", "measurement 'lactate'"),
    ("DELETE FROM condition_occurrence WHERE condition_concept_id = 443392", "cancer", "condition 'cancer'"),
], ids=["measurement", "condition"])
def test_concepts_without_any_record_are_warned(study, omop, tmp_path, statement, column, said):
    path = damaged(omop, tmp_path, statement)
    cohort, messages = build(study, path)
    values = cohort.table[column]
    assert values.isna().all() or (values == 0).all()
    assert any(said in m and "for everyone" in m for m in messages), messages


def test_impossible_birth_days_do_not_crash(study, omop, tmp_path):
    "Month 13 and 31 February fall back to the middle of the year or month, as a missing month or day does."
    path = damaged(omop, tmp_path, "UPDATE person SET birth_datetime = NULL",
                   "UPDATE person SET month_of_birth = 13 WHERE person_id % 5 = 0",
                   "UPDATE person SET month_of_birth = 2, day_of_birth = 31 WHERE person_id % 5 = 1")
    cohort, _ = build(study, path)
    with duckdb.connect(str(path), read_only=True) as con:
        years = dict(con.execute("SELECT person_id, year_of_birth FROM person").fetchall())
    table = cohort.table
    approximate = table.index_datetime.dt.year - table.person_id.map(years)
    assert ((table.age - approximate).abs() <= 1).all()


# ---------------------------------------------------------------------------------------------------------
# Files: each failure its own message.
def test_locked_duckdb_file_says_so(study, omop, tmp_path):
    path = tmp_path / "locked.duckdb"
    shutil.copy(omop, path)
    writer = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"con = duckdb.connect({str(path)!r})\nprint('ready', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with pytest.raises(SourceError) as caught:
            build_cohort(study, path)
    finally:
        writer.kill()
        writer.wait()
    message = str(caught.value)
    assert f"The data source {path} is open in another program (DuckDB holds a lock" in message
    assert "PID" not in message and "not a DuckDB database" not in message


def test_damaged_duckdb_files(study, omop, tmp_path):
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database")
    with pytest.raises(SourceError, match="is not a DuckDB database"):
        build_cohort(study, text)
    truncated = tmp_path / "truncated.duckdb"
    truncated.write_bytes(omop.read_bytes()[:5000])
    with pytest.raises(SourceError, match=r"is damaged \(truncated or corrupt\)"):
        build_cohort(study, truncated)


def parquet_folder(omop, folder):
    folder.mkdir(parents=True)
    with duckdb.connect(str(omop), read_only=True) as con:
        for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            target = str(folder / f"{name}.parquet").replace("'", "''")
            con.execute(f"COPY {name} TO '{target}' (FORMAT parquet)")
    return folder


def test_corrupt_parquet_file_names_its_table(study, omop, tmp_path):
    folder = parquet_folder(omop, tmp_path / "cdm")
    (folder / "death.parquet").write_bytes(b"PAR1 this is no longer a parquet file")
    with pytest.raises(SourceError) as caught:
        build_cohort(study, folder)
    message = str(caught.value)
    assert f"The Parquet file {folder / 'death.parquet'} (table death) is not a readable Parquet file" in message
    assert_clean_message(message)


@pytest.mark.parametrize("other", ["PERSON.parquet", "person/part0.parquet"])
def test_two_sources_of_one_table_are_refused(study, omop, tmp_path, other):
    "PERSON.parquet beside person.parquet (or a person/ folder): one would silently replace the other."
    folder = parquet_folder(omop, tmp_path / "cdm")
    (folder / other).parent.mkdir(exist_ok=True)
    shutil.copy(folder / "person.parquet", folder / other)
    if other == "PERSON.parquet" and len(list(folder.glob("*.parquet"))) == len(list(folder.glob("*.PARQUET"))):
        pytest.skip("a case-insensitive file system")
    with pytest.raises(SourceError, match=r"holds two sources of table person \(.* and .*\); one would silently"):
        connect_source(folder)


@pytest.mark.parametrize("name", ["it's a cdm", 'the "cdm"', "cdm[1]", "cdm *"])
def test_quotes_and_pattern_characters_in_folder_names(study, omop, clean, tmp_path, name):
    folder = parquet_folder(omop, tmp_path / name)
    cohort = build_cohort(study, folder)
    pd.testing.assert_frame_equal(cohort.table, clean.table)


def test_quote_in_a_duckdb_file_name(study, omop, clean, tmp_path):
    path = tmp_path / "it's.duckdb"
    shutil.copy(omop, path)
    assert len(build_cohort(study, path).table) == len(clean.table)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(study, omop, tmp_path):
    path = tmp_path / "secret.duckdb"
    shutil.copy(omop, path)
    path.chmod(0)
    try:
        with pytest.raises(SourceError, match="cannot be read: permission denied"):
            connect_source(path)
    finally:
        path.chmod(0o600)


def test_source_error_messages():
    "Each class of database or OS error gets its own words."
    cases = {
        duckdb.IOException('IO Error: Could not set lock on file "x": Conflicting lock is held in p (PID 1)'):
            "is open in another program",
        PermissionError(13, "Permission denied"): "permission denied",
        duckdb.IOException('IO Error: The file "x" exists, but it is not a valid DuckDB database file!'):
            "is not a DuckDB database",
        duckdb.Error("Corrupt database file: computed checksum 1 does not match stored checksum 2"): "is damaged",
        duckdb.InvalidInputException("Invalid Input Error: No magic bytes found at end of file 'x.parquet'"):
            "is not a readable Parquet file",
        duckdb.IOException('IO Error: No files found that match the pattern "x[1].parquet"'): "matches no file",
        duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate"): "more memory",
    }
    for error, words in cases.items():
        message = str(source_error(error, where=Path("/data/cdm.duckdb")))
        assert message.startswith("The data source /data/cdm.duckdb ") and words in message, message
        assert "PID" not in message and "checksum" not in message


# ---------------------------------------------------------------------------------------------------------
# Flat tables
CODEBOOK = {
    "patient_id": {"label": "Patient", "type": "id"},
    "age": {"label": "Age", "type": "continuous", "unit": "years", "valid": [18, 110]},
    "temperature": {"label": "Temperature", "type": "continuous", "unit": "°C", "valid": [25, 45]},
    "sex": {"label": "Sex", "type": "categorical", "levels": ["Female", "Male"]},
    "sepsis": {"label": "Sepsis", "type": "binary"},
    "admitted": {"label": "Admission date", "type": "date"},
    "died": {"label": "Death", "type": "binary", "role": "outcome"},
}


@pytest.fixture
def registry():
    rng = np.random.default_rng(15)
    n = 200
    return pd.DataFrame({
        "patient_id": np.arange(1, n + 1), "age": rng.integers(18, 95, n), "temperature": rng.normal(37, 1, n).round(1),
        "sex": rng.choice(["Female", "Male"], n), "sepsis": rng.integers(0, 2, n),
        "admitted": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1000, n), unit="D"),
        "died": (rng.random(n) < 0.2).astype(int)})


FLAT_ERRORS = [
    ("every level unknown", "sex", lambda f: f.assign(sex=f.sex.str[0]), "are not a level of the codebook (Female, Male)"),
    ("every binary value unreadable", "sepsis", lambda f: f.assign(sepsis=np.where(f.sepsis == 1, "yes", "no")),
     "cannot be read as 0/1"),
    ("every value out of range", "temperature", lambda f: f.assign(temperature=f.temperature * 1.8 + 32),
     "lie outside valid [25, 45]"),
]


@pytest.mark.parametrize("column, damage, words", [c[1:] for c in FLAT_ERRORS], ids=[c[0] for c in FLAT_ERRORS])
def test_flat_column_none_of_whose_values_fits_is_an_error(registry, tmp_path, column, damage, words):
    frame = damage(registry)
    frame.loc[:4, column] = None        # a few blanks: counted apart from the values that do not fit
    path = tmp_path / "registry.csv"
    frame.to_csv(path, index=False)
    n_present = int(frame[column].notna().sum())
    with pytest.raises(CohortError) as caught:
        load_flat(path, CODEBOOK)
    message = str(caught.value)
    assert f"column '{column}' ({CODEBOOK[column]['label']}) holds {n_present:,} values and none fits" in message
    assert f"{n_present:,} {words}" in message
    for value in frame[column].dropna().astype(str).unique()[:20]:
        assert f" {value} " not in message and f"'{value}'" not in message


def test_flat_partly_unknown_levels_are_counted(registry, tmp_path):
    frame = registry.assign(sex=registry.sex.where(registry.index % 9 != 0, "F"))
    path = tmp_path / "registry.csv"
    frame.to_csv(path, index=False)
    cohort = load_flat(path, CODEBOOK)
    assert cohort.cleaning.set_index("variable").loc["sex", "n_wrong_level"] == int((frame.sex == "F").sum())


def test_flat_future_dates_are_counted_out_of_range(registry, tmp_path):
    frame = registry.copy()
    future = frame.index % 10 == 0
    frame.loc[future, "admitted"] = pd.Timestamp("2099-01-01")
    path = tmp_path / "registry.parquet"
    frame.to_parquet(path, index=False)
    cohort = load_flat(path, CODEBOOK)
    row = cohort.cleaning.set_index("variable").loc["admitted"]
    assert row.n_out_of_range == int(future.sum()) and row.n_missing == int(future.sum())
    assert cohort.table.admitted.max() < pd.Timestamp.now()


@pytest.mark.parametrize("write, words", [
    (lambda p, f: p.write_bytes(f.assign(sex="Mâle").to_csv(index=False).encode("latin-1")), "is not UTF-8 text (byte"),
    (lambda p, f: p.write_text(f.to_csv(index=False).replace("\n2,", "\n2,extra,", 1)), "line 3 has 8 fields where the header has 7"),
    (lambda p, f: p.write_text(f.to_csv(index=False).replace("\n1,", "\n1,extra,", 1)), "1 rows have more fields than the header's 7"),
    (lambda p, f: p.write_text(""), "is empty: it holds no header and no rows"),
    (lambda p, f: p.with_suffix(".parquet").write_bytes(b"PAR1 broken"), "is not a readable Parquet file"),
], ids=["latin-1", "ragged line", "ragged first line", "empty file", "corrupt parquet"])
def test_flat_unreadable_files(registry, tmp_path, write, words):
    path = tmp_path / "registry.csv"
    write(path, registry)
    if not path.exists():
        path = path.with_suffix(".parquet")
    with pytest.raises(SourceError) as caught:
        load_flat(path, CODEBOOK)
    assert words in str(caught.value), str(caught.value)
    assert "extra" not in str(caught.value) and "Mâle" not in str(caught.value)


def test_flat_rule_that_fails_on_the_values_does_not_quote_them(registry, tmp_path):
    path = tmp_path / "registry.csv"
    registry.to_csv(path, index=False)
    rule = {"id": "cast", "label": "Cast", "type": "rule", "exclude": "sex.astype('float') > 1"}
    with pytest.raises(Exception) as caught:
        load_flat(path, CODEBOOK, criteria=[rule])
    message = str(caught.value)
    assert "cannot be evaluated" in message and "(ValueError)" in message
    assert "Female" not in message and "Male" not in message


def test_a_conversion_error_is_classed_by_its_type_not_its_text():
    "The value quoted by DuckDB could hold any word ('corrupt', 'lock', 'parquet'): the class decides."
    error = duckdb.ConversionException("Conversion Error: Could not convert string 'corrupt parquet lock' to INT64")
    message = str(source_error(error, where=Path("/data/cdm.duckdb")))
    assert "cannot be converted" in message and "corrupt" not in message and "lock" not in message
