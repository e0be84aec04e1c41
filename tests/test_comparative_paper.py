"""A comparative paper that is not the template's: ibuprofen versus naproxen and gastrointestinal
hemorrhage within 180 days on the Eunomia database, with a small-count threshold of 5, inverse
probability weights and a rare condition in Table 1, made by editing study.yaml only and run and built with the command line (`clinpaper new`, `run`, `build`). Its
naproxen group has no event in the window, so no ratio may be printed and the paper must say why.
The DOCX and PDF text hold the study's labels and none of the celecoxib/diclofenac study's wording;
nothing says "<11"; the rare condition's small cell is masked after weighting too. Then the same run with a covariate that separates the groups (02 and 03 rerun
with papermill on a copy): no weighted estimate, and the reason in words."""
import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import clinpaper, new_project
from leaks import run_threshold, scan_outputs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("comparative_paper")]

TREATED, COMPARATOR = ("ibuprofen", "Ibuprofen", 1177480), ("naproxen", "Naproxen", 1115008)
# what a paper of this study may not say: the template study's drugs and words
NSAID_WORDS = ["celecoxib", "diclofenac", "cox-2", "selective", "one-year", "one year", "1-year",
               "within 365 days", "<11"]


def other_study(path):
    "The template's study.yaml with another drug pair, a 180-day window and a threshold of 5."
    study = yaml.safe_load(path.read_text())
    study["title"] = "Gastrointestinal hemorrhage in new users of ibuprofen and naproxen"
    study["short_title"] = "Ibuprofen versus naproxen and GI bleeding"
    study["cohort"]["exposures"] = [{"id": i, "label": label, "concepts": [c]}
                                    for i, label, c in (TREATED, COMPARATOR)]
    study["analysis"]["treated"] = TREATED[0]
    study["outcome"]["window"] = {"start_day": 1, "end_day": 180}
    study["parameters"]["small_count_threshold"] = 5
    # inverse probability weights (sums near twice the counts) and a rare condition, recorded before
    # the first exposure in a few naproxen patients: a weighted Table 1 that would give them away
    study["analysis"]["adjustment"] = "iptw"
    study["analysis"]["sensitivity"] = ["overlap", "match"]
    study["features"]["conditions"].append({"id": "epilepsy", "label": "Epilepsy", "concepts": [380378],
                                            "lookback_days": None})
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return study


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    project = new_project(tmp_path_factory.mktemp("ibuprofen") / "paper", "comparative")
    study = other_study(project / "study.yaml")
    clinpaper("run", "--name", "other", "-p", "bootstrap=20", cwd=project)
    clinpaper("build", "other", cwd=project)
    run, build = project / "_runs" / "other", project / "_build" / "other"
    import docx
    from pypdf import PdfReader
    document = docx.Document(build / "manuscript.docx")
    paragraphs = "\n".join(p.text for p in document.paragraphs)
    tables = "\n".join(c.text for t in document.tables for r in t.rows for c in r.cells)
    pdf = "".join(p.extract_text() for p in PdfReader(build / "manuscript.pdf").pages)
    return {"project": project, "study": study, "run": run, "build": build,
            "results": json.loads((run / "results.json").read_text()),
            "docx": paragraphs, "docx_tables": tables, "pdf": pdf, "document": document}


def plain(text: str) -> str:
    return re.sub(r"\s+([.,;:)])", r"\1", re.sub(r"\s+", " ", text))


def test_no_leak_in_any_rendered_output(paper):
    "At the study's threshold of 5, in the web book, the DOCX and the PDF, weighted tables included."
    threshold = run_threshold(paper["run"])
    assert threshold == 5
    findings = scan_outputs(paper["build"], threshold=threshold, forbidden=[str(paper["project"])])
    assert not findings, "\n".join(map(str, findings))


def test_the_paper_speaks_of_its_own_study(paper):
    docx_text = (paper["docx"] + "\n" + paper["docx_tables"]).lower()
    pdf_text = re.sub(r"\s+", " ", paper["pdf"]).lower()
    for word in ("ibuprofen", "naproxen", "gastrointestinal hemorrhage", "within 180 days",
                 "ibuprofen versus naproxen"):
        assert word in docx_text, word
        assert word.replace(" ", "") in pdf_text.replace(" ", ""), word
    for word in NSAID_WORDS:
        assert word not in docx_text, word
        assert word.replace(" ", "") not in pdf_text.replace(" ", ""), word
    assert paper["results"]["window_words"]["text"] == "within 180 days"
    assert "{glue" not in paper["docx"]


def test_counts_are_masked_at_the_studys_threshold(paper):
    "Threshold 5: the ibuprofen group's single event shows as '<5', independently of the run's code."
    table = pd.read_parquet(paper["run"] / "data" / "analysis.parquet")
    events = table.groupby("exposure")["gi_bleed"].sum()
    assert 0 < events["ibuprofen"] < 5 and events["naproxen"] == 0
    results = paper["results"]
    assert results["events_treated"]["text"] == "<5" and results["events_comparator"]["text"] == "0"
    assert results["threshold_text"]["text"] == "<5"
    body = plain(paper["docx"])
    assert "<5 patients who started ibuprofen and 0 who started naproxen had gastrointestinal hemorrhage" in body
    assert re.search(r'shown as ["\u201c]<5["\u201d]', body)   # Word's curly quotes
    assert "<11" not in body + paper["docx_tables"] + paper["pdf"]


def _docx_table(document, row_label):
    "The rows (label -> cells) of each DOCX table that has a row `row_label`."
    found = []
    for table in document.tables:
        rows = {r.cells[0].text.strip(): [c.text for c in r.cells] for r in table.rows}
        if row_label in rows:
            header = [c.text for c in table.rows[0].cells]
            found.append({label: dict(zip(header, cells)) for label, cells in rows.items()})
    return found


def test_weighted_counts_of_a_small_cell_are_masked(paper):
    "Epilepsy: fewer than 5 naproxen patients, so masked before and after weighting, and not derivable."
    table = pd.read_parquet(paper["run"] / "data" / "analysis.parquet")
    weights = pd.read_parquet(paper["run"] / "data" / "weights.parquet")["weight"]
    counts = table.groupby("exposure")["epilepsy"].sum()              # independent: pandas
    weighted = (table["epilepsy"] * weights).groupby(table["exposure"]).sum()
    assert 0 < counts["naproxen"] < 5 <= counts["ibuprofen"]
    assert weighted["naproxen"] >= 5   # unmasked, the weighted count would be shown
    before, after = _docx_table(paper["document"], "Epilepsy, n (%)")
    for shown, values in ((before, counts), (after, weighted)):
        row = shown["Epilepsy, n (%)"]
        assert row["Naproxen"].startswith("<5 (<"), row
        assert row["Ibuprofen"].startswith(f"{values['ibuprofen']:,.0f} ("), row
        assert row["Overall"] == "–", row   # else Overall minus ibuprofen gives naproxen's count
    assert f"{weighted['naproxen']:,.0f} (" not in after["Epilepsy, n (%)"]["Naproxen"]
    assert "–" in paper["docx"] and "cannot be worked out" in plain(paper["docx"])


def test_an_underpowered_comparison_is_withheld_with_the_reason(paper):
    """A few ibuprofen events and none with naproxen: the minimum detectable relative risk is far above the
    threshold of 10, so the diagnostics fail and no estimate is computed or shown, only why."""
    from lifelines import CoxPHFitter
    from scipy.stats import norm
    results = paper["results"]
    table = pd.read_parquet(paper["run"] / "data" / "analysis.parquet")
    weights = pd.read_parquet(paper["run"] / "data" / "weights.parquet")
    positive = weights["weight"] > 0
    events = int((positive & (table["gi_bleed"] == 1) & (table["time_to_event"] <= 180)).sum())
    share = float((weights.loc[positive, "treatment"] == 1).mean())
    mdrr = np.exp(np.sqrt((norm.ppf(0.975) + norm.ppf(0.8)) ** 2 / (events * share * (1 - share))))   # Schoenfeld
    assert results["mdrr"]["value"] == pytest.approx(mdrr, rel=1e-9) and mdrr > 10
    assert results["diagnostics_passed"]["text"] == "failed"
    sentence = results["diagnostics_sentence"]["text"].strip()
    assert sentence.startswith("Every effect estimate of this comparison is withheld because the study diagnostics failed: ")
    assert f"the minimum detectable relative risk was {mdrr:.2f}, above the study's threshold of 10.00" in sentence
    for name in ("hazard_ratio", "hazard_ratio_crude", "risk_ratio", "risk_difference", "risk_treated"):
        assert results[name]["text"] == "withheld", name
    body = plain(paper["docx"]).replace("\u2019", "'")   # Word's apostrophes
    assert body.count(sentence) >= 2   # the abstract and the results
    assert not re.search(r"(hazard|risk) ratio was \d", body)
    diagnostics = _docx_table(paper["document"], "The minimum detectable relative risk")[0]
    assert diagnostics["The minimum detectable relative risk"]["Status"] == "FAILED"
    effects = _docx_table(paper["document"], "Every effect estimate")[0]
    assert effects["Every effect estimate"]["Value (95% CI)"].startswith("withheld")
    assert sentence in plain(paper["pdf"]).replace("\u2019", "'")
    # what the gate keeps out: lifelines' own crude fit on the run's table returns a number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = CoxPHFitter().fit(table.assign(treated=(table.exposure == "ibuprofen").astype(int))
                                [["time_to_event", "gi_bleed", "treated"]], "time_to_event", "gi_bleed")
    assert fit.hazard_ratios_["treated"] > 1000
    assert f"{fit.hazard_ratios_['treated']:,.2f}" not in paper["docx"] + paper["docx_tables"]


def test_separation_withholds_the_weighted_estimates(paper, tmp_path):
    "A condition recorded in the ibuprofen group only: 02 says why; the crude comparison fails its balance diagnostic."
    import papermill
    run = tmp_path / "separated"
    shutil.copytree(paper["run"], run)
    table = pd.read_parquet(run / "data" / "analysis.parquet")
    ibuprofen = np.flatnonzero(table["exposure"] == "ibuprofen")
    table["esophagitis"] = 0
    table.loc[table.index[ibuprofen[:20]], "esophagitis"] = 1
    table.to_parquet(run / "data" / "analysis.parquet", index=False)
    assert pd.crosstab(table["esophagitis"], table["exposure"]).loc[1, "naproxen"] == 0
    for notebook in ("02_balance.ipynb", "03_controls.ipynb", "04_effects.ipynb"):
        papermill.execute_notebook(str(paper["project"] / notebook), str(run / notebook),
                                   parameters={"run_dir": str(run), "study_path": str(run / "study.yaml")},
                                   cwd=str(run), kernel_name="python3", progress_bar=False)
    results = json.loads((run / "results.json").read_text())
    why = ("The propensity score could not be estimated: esophagitis was recorded only in the ibuprofen "
           "group, so those patients had no counterpart in the other group. No adjusted estimate is "
           "possible; a crude comparison, not adjusted for confounding, is shown only if it passes the study "
           "diagnostics.")
    assert results["separation_sentence"]["text"] == " " + why
    assert results["smd_max_after"]["text"] == "not estimated"
    assert results["ess_treated"]["text"] == "not estimated"
    # crude: the largest difference is the one before adjustment (esophagitis: 20 ibuprofen patients, no naproxen)
    arm = table["exposure"] == "ibuprofen"
    p1, p0 = table.loc[arm, "esophagitis"].mean(), table.loc[~arm, "esophagitis"].mean()
    smd = (p1 - p0) / np.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    largest = json.loads((run / "data" / "propensity.json").read_text())["max_smd_after"]
    assert largest >= smd - 1e-9 and largest > 0.1
    sentence = results["diagnostics_sentence"]["text"]
    assert f"the largest absolute standardized mean difference after adjustment was {largest:.2g}, above the study's threshold of 0.1" in sentence
    assert results["hazard_ratio"]["text"] == "withheld"
    assert results["risk_sentence"]["text"] == sentence.strip()
