"""Papers from flat analysis tables, made by YAML and Markdown edits only (no notebook code):
- the demo's own analysis table as a CSV gives, through `clinpaper new --source flat`, the OMOP
  run's cohort and, within Monte Carlo error, its estimates; its secondary Weibull fit, given a gate it
  cannot pass, is withheld and the paper is still built;
- a real dataset that ships with an installed package (lifelines' NCCTG lung cancer trial: 228
  patients in 18 institutions) becomes a hospital-variation paper of death during follow-up by
  institution, with its own variables, labels, units and exclusions, run and built end to end;
  an edited Discussion paragraph in manuscript.md reaches the web book, the DOCX and the PDF."""
import json
import re
import subprocess
import zipfile

import docx
import pandas as pd
import pytest
import yaml

from conftest import clinpaper, new_project
from leaks import run_threshold, scan_outputs
from test_secondary import check_withheld_secondary

pytestmark = pytest.mark.xdist_group("paper")   # reuses the paper built by the session fixture


def test_flat_table_gives_the_omop_paper(paper, tmp_path):
    table = pd.read_parquet(paper["runs"] / "first" / "data" / "analysis.parquet")
    project = new_project(tmp_path / "flat_paper", "hospital-variation", "--source", "flat")
    flat = project / "_data" / "icu_flat.csv"
    flat.parent.mkdir(exist_ok=True)
    table.to_csv(flat, index=False)
    # the Weibull sensitivity model is secondary (the template's default) and given a gate no fit of this
    # size passes: the paper must still be published, with that fit withheld (test_secondary)
    study = yaml.safe_load((project / "study.yaml").read_text())
    study["secondary_gate"] = {"ess_min": 1_000_000}
    (project / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    clinpaper("run", "--name", "flat", cwd=project)
    omop = json.loads((paper["runs"] / "first" / "results.json").read_text())
    from_flat = json.loads((project / "_runs" / "flat" / "results.json").read_text())
    for name in ("n_patients", "n_events", "n_groups", "outcome_percent"):
        assert from_flat[name]["text"] == omop[name]["text"], name
    assert from_flat["n_patients"]["value"] == len(table)
    # the same data and seed: the estimates agree within Monte Carlo error (the hospital codes
    # are categories in the flat table, so the sampler sees the groups in another order)
    for name in ("or_sepsis", "or_age", "or_chf", "median_odds_ratio", "apparent_auroc"):
        assert from_flat[name]["value"] == pytest.approx(omop[name]["value"], rel=0.03), name
    assert "flat analysis table" in from_flat["methods_cohort"]["text"]
    clinpaper("build", "flat", cwd=project)
    check_withheld_secondary(project / "_runs" / "flat", project / "_build" / "flat", ess_min=1_000_000)


LUNG_CODEBOOK = {
    "title": "NCCTG advanced lung cancer trial (lifelines.datasets.load_lung)",
    "variables": {
        "id": {"label": "Patient", "type": "id"},
        "inst": {"label": "Institution", "type": "categorical", "role": "group"},
        "time": {"label": "Follow-up", "type": "continuous", "unit": "days", "valid": [1, 2000],
                 "nonnormal": True},
        "status": {"label": "Death during follow-up", "type": "binary", "role": "outcome"},
        "age": {"label": "Age", "type": "continuous", "unit": "years", "valid": [18, 100]},
        "sex": {"label": "Female sex", "type": "binary"},
        "ph.ecog": {"label": "ECOG performance score (physician)", "type": "continuous",
                    "valid": [0, 4]},
        "ph.karno": {"label": "Karnofsky score (physician)", "type": "continuous", "valid": [0, 100]},
        "meal.cal": {"label": "Calories at meals", "type": "continuous", "unit": "kcal",
                     "valid": [0, 5000], "nonnormal": True},
        "wt.loss": {"label": "Weight loss in the last six months", "type": "continuous",
                    "unit": "lb", "valid": [-50, 100], "nonnormal": True},
    },
}


def lung_study(study: dict) -> dict:
    "The scaffolded flat study, edited as an author would: the lung trial's question and words."
    study.update(title="Variation between institutions in death during follow-up of advanced lung cancer",
                 short_title="Lung cancer deaths across institutions")
    study["cohort"] = {"criteria": [
        {"id": "under_50", "label": "Younger than 50 years", "type": "rule", "exclude": "age < 50"},
        {"id": "no_ecog", "label": "No physician-rated ECOG score", "type": "rule",
         "exclude": "`ph.ecog`.isna()"}]}
    study["outcome"] = {"id": "status", "label": "Death during follow-up",
                        "levels": ["Alive at last follow-up", "Died"], "time": "time"}
    study["group"] = {"id": "inst", "label": "Institution", "plural": "institutions", "column": "inst"}
    study["model"] = {"outcome": "status", "group": "inst", "predictors": [
        {"column": "age", "label": "Age (per 10 years)", "center": 65, "scale": 10},
        {"column": "sex", "label": "Female sex"},
        {"column": "ph.ecog", "label": "ECOG score (per point)"}]}
    study["describe"] = {"table_one": {"variables": ["age", "sex", "ph.ecog", "ph.karno", "meal.cal",
                                                     "wt.loss", "time"]}}
    study["evaluation"] = {"subgroups": [{"column": "sex", "label": "Female sex"},
                                         {"column": "age", "label": "Age, years", "bands": [50, 65, 75]}],
                           "kaplan_meier_by": "sex"}
    study["baselines"] = {"features": ["age", "sex", "ph.ecog", "ph.karno", "meal.cal", "wt.loss"]}
    study["sensitivity"] = ["predictive_checks", "pooling", "observed_expected"]
    study["source"]["path"] = "_data/lung.csv"
    study["parameters"]["small_count_threshold"] = 5   # the trial's own disclosure rule
    return study


# words of the ICU demo (and of the NSAID study) that a paper on this trial must never print
DEMO_WORDS = ("ICU", "intensive care", "In-hospital", "in-hospital", "died in hospital", "Sepsis", "sepsis",
              "hospitals", "Hospital", "OMOP", "celecoxib", "Celecoxib", "diclofenac", "<11",
              "rerun with", "-p ", "HDI")


def nested_parentheses(text: str) -> list[str]:
    "The passages of `text` where a parenthesis opens inside another (an editor sends those back)."
    found, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth == 1:
                start = i
            elif depth == 2:
                found.append(text[start:start + 120])
        elif char == ")" and depth:
            depth -= 1
    return found


def test_nested_parentheses_are_found():
    assert nested_parentheses("odds ratio 2.21 (95% CrI 2.01 to 2.42) and (Table 2)") == []
    assert nested_parentheses("(odds ratio 2.21 (95% CrI 2.01 to 2.42))")


@pytest.mark.xdist_group("lung")   # needs no session paper: runs beside it, on the other worker
def test_lung_trial_paper_from_yaml_and_markdown_only(tmp_path):
    from lifelines.datasets import load_lung
    project = new_project(tmp_path / "lung_paper", "hospital-variation", "--source", "flat")
    notebooks = {p.name: p.read_bytes() for p in project.glob("*.ipynb")}
    lung = load_lung()
    lung.insert(0, "id", range(1, len(lung) + 1))
    lung["sex"] = lung["sex"] - 1   # the trial codes 1 male, 2 female: 0/1 for a binary column
    (project / "_data").mkdir(exist_ok=True)
    lung.to_csv(project / "_data" / "lung.csv", index=False)
    (project / "codebook.yaml").write_text(yaml.safe_dump(LUNG_CODEBOOK, sort_keys=False))
    study = yaml.safe_load((project / "study.yaml").read_text())
    (project / "study.yaml").write_text(yaml.safe_dump(lung_study(study), sort_keys=False))
    clinpaper("run", "--name", "lung", "-p", "draws=600", "-p", "tune=600", "-p", "chains=2",
              "-p", "ess_min=100", "-p", "bootstrap=50", cwd=project)

    results = json.loads((project / "_runs" / "lung" / "results.json").read_text())
    # the cohort against pandas on the package's own data: institution recorded, then the rules
    kept = lung[lung["inst"].notna()]
    n_old_enough = int((kept["age"] >= 50).sum())
    expected = kept[(kept["age"] >= 50) & kept["ph.ecog"].notna()]
    assert results["n_patients"]["value"] == len(expected)
    assert results["n_removed_under_50"]["value"] == len(kept) - n_old_enough
    assert results["n_removed_no_ecog"]["value"] == n_old_enough - len(expected)
    assert results["n_events"]["value"] == int(expected["status"].sum())
    assert results["n_groups"]["value"] == expected["inst"].nunique()
    assert "or_ph_ecog" in results and "hr_age" not in results   # survival was not asked for
    table_one = pd.read_csv(project / "_runs" / "lung" / "tables" / "table_one.csv")
    shown = " ".join(table_one.astype(str).to_numpy().ravel())
    for label in ("Alive at last follow-up", "Died", "Karnofsky score (physician)", "kcal"):
        assert label in " ".join(table_one.columns) + " " + shown, label
    text = " ".join(v["text"] for v in results.values() if v["kind"] == "text")
    for demo_word in ("ICU", "in-hospital", "sepsis", "Sepsis", "hospitals"):
        assert demo_word not in text, demo_word

    # an author edits the Discussion in manuscript.md (a text file) and rebuilds: no rerun
    manuscript = project / "manuscript.md"
    sentence = "Institutions in this trial differed little once performance status was known."
    source = manuscript.read_text()
    start = source.index("## Discussion")
    end = source.index("+++", start)
    manuscript.write_text(source[:start] + f"## Discussion\n\n{sentence}\n\n" + source[end:])
    clinpaper("build", "lung", cwd=project)
    build = project / "_build" / "lung"
    # no count below the study's threshold (5), shown or derivable, no identifier or absolute path
    findings = scan_outputs(build, threshold=run_threshold(project / "_runs" / "lung"), forbidden=[str(tmp_path)])
    assert not findings, "\n".join(map(str, findings))
    assert sentence in (build / "html" / "manuscript.html").read_text()
    with zipfile.ZipFile(build / "manuscript.docx") as archive:
        assert sentence in archive.read("word/document.xml").decode()
    pdf_text = subprocess.run(["pdftotext", "-layout", str(build / "manuscript.pdf"), "-"],
                              capture_output=True, text=True, check=True).stdout
    assert " ".join(sentence.split()[:6]) in " ".join(pdf_text.split())
    assert f"{results['n_patients']['text']} patients" in " ".join(pdf_text.split())
    # the manuscript as a reader gets it: the study's words and threshold, none of the demo's
    with zipfile.ZipFile(build / "manuscript.docx") as archive:
        docx_text = re.sub(r"<[^>]+>", "", archive.read("word/document.xml").decode()).replace("&lt;", "<")
    for where, text in (("DOCX", docx_text), ("PDF", pdf_text)):
        flat = " ".join(text.split())
        for word in DEMO_WORDS:
            assert word not in flat, (where, word, flat[max(0, flat.find(word) - 80):flat.find(word) + 80])
        for word in ("institutions", "death during follow-up", "<5", "ECOG"):
            assert word in flat, (where, word)
    # the prose (not the tables, whose cells a text extraction runs together) never nests brackets
    prose = " ".join(p.text for p in docx.Document(str(build / "manuscript.docx")).paragraphs)
    prose = prose[:prose.rfind("References")]
    assert not nested_parentheses(prose), nested_parentheses(prose)
    # and no notebook code was touched
    assert {p.name: p.read_bytes() for p in project.glob("*.ipynb")} == notebooks
