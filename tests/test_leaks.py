"""The leak scanner (tests/leaks.py) on hand-made pages, and each disclosure class of issue 15 as a
case: the old rendering (what clinpaper showed before) is caught, the library's rendering is not.
Numbers are checked against independent arithmetic."""
import itertools
import math

import docx
import numpy as np
import pandas as pd
import pytest

from leaks import Page, Table, read_docx, read_html, scan_outputs, scan_page, text_counts
from clinpaper.describe import (flow_table, format_table_one, protected_variables, shown_share, suppress_counts,
                                table_one)
from clinpaper.evaluate import format_subgroups
from clinpaper.figures import kaplan_meier_table

THRESHOLD = 11


def html_page(tmp_path, body: str, name="page.html"):
    path = tmp_path / name
    path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
    return path


def html_table(frame: pd.DataFrame, index=False) -> str:
    return frame.to_html(index=index)


def kinds(findings) -> list:
    return sorted(f.kind for f in findings)


# --- counts in running text ---------------------------------------------------------------------

ORDINARY = [
    "See Table 3 and Figure S4; Appendix B.",
    "Patients aged 18 years or older, with an ICU stay of 4 hours or more, were included.",
    "Measurements were summarised over the first 24 hours after the index event.",
    "The AUROC was 0.71 (95% CI 0.68 to 0.75) in 5-fold cross-validation.",
    "from day 1 through day 180 after the index date",
    "2 chains of 300 draws after 300 tuning steps; 8 hospitals; 200 draws",
    "A hospital with fewer than 11 patients with or without the outcome is not drawn.",
    "In 2 of 8 hospitals the observed rate lay outside its interval.",
    "CDM version 5.4; ICD-10; doi:10.1093/aje/kwm; https://doi.org/10.1000/182 [3]",
    "8.0 events per predictor; 12.5 events per parameter",
    "0 patients were excluded; 1,467 patients in 8 hospitals; 11 patients",
    "The hazard ratio was 1.51 (95% CrI 1.34 to 1.71); the SD 0.26 (95% CrI 0.04 to 0.69).",
    "published in 2024; 3 of the 5 models; Item 7",
    "ranked 1 to 8; top 5 hospitals; at least 5 events",
]
LEAKY = [
    ("We excluded 5 patients younger than 18.", 5),
    ("3 ICU stays were shorter than 4 hours.", 3),
    ("The smallest hospital (n = 7) had no events.", 7),
    ("Excluded: 4\nYounger than 18 years", 4),
    ("202 patients had the outcome, of whom 7 (0.5%) were children.", 7),
    ("4 deaths occurred in hospital 7.", 4),
    ("2 new users of naproxen had the outcome.", 2),
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_numbers_are_not_counts(text):
    assert text_counts(text, THRESHOLD) == []


@pytest.mark.parametrize("text,value", LEAKY)
def test_small_counts_in_text_are_found(text, value):
    found = text_counts(text, THRESHOLD)
    assert [v for v, _ in found] == [value], found
    assert text_counts(text, value) == []   # at a threshold of the count itself, it may be shown


def test_a_masked_count_beside_its_exact_percentage():
    # "<11 (0.5%)" of 1,467 patients: 0.5% of 1,467 is 7.3, so the count was 7 (0.45% to 0.55%: 7 or 8)
    assert [round(1467 * p / 100) for p in (0.45, 0.55)] == [7, 8]
    assert len(text_counts("We included 1,467 patients; <11 (0.5%) had the outcome.", THRESHOLD)) == 1
    # a bound says nothing the reader does not know: no finding
    assert text_counts("We included 1,467 patients; <11 (<0.8%) had the outcome.", THRESHOLD) == []
    assert shown_share(7, 1467, threshold=THRESHOLD) == "<0.8%"


# --- identifiers, dates of birth, paths ---------------------------------------------------------

@pytest.mark.parametrize("text,kind", [
    ("Could not convert string 'MRN-0042-7781' to INT64", "identifier"),
    ("row with person_id = 4711 has no visit", "identifier"),
    ("born 1947-03-02 in Ghent", "date of birth"),
    ("date of birth: 02/03/1947", "date of birth"),
    ("read /tmp/pytest-of-root/pytest-3/cohorts0/small.duckdb", "path"),
    ("the run in /work/main/demo/_runs/demo", "path"),
    ("see file:///home/anna/paper/manuscript.md", "path"),
    ("C:\\Users\\anna\\paper\\study.yaml", "path"),
])
def test_identifiers_dates_of_birth_and_paths(text, kind, tmp_path):
    page = Page("p.html", texts=[text])
    assert kinds(scan_page(page, threshold=THRESHOLD, home="/nonexistent")) == [kind]


@pytest.mark.parametrize("text", ["Data source: small.duckdb", "tables/supplement_observed_expected.csv",
                                  "https://doi.org/10.1000/182", "index 2020 to 2024", "and/or; 1/2 of them",
                                  "a ratio of 3/4"])
def test_relative_paths_and_urls_are_not_leaks(text):
    assert scan_page(Page("p.html", texts=[text]), threshold=THRESHOLD, home="/nonexistent") == []


def test_forbidden_strings_and_the_home_folder():
    page = Page("p.html", texts=["patient 0042-7781 was seen", "written under /srvx/anna-home/x"])
    found = scan_page(page, threshold=THRESHOLD, forbidden=["0042-7781"], home="/srvx/anna-home")
    assert kinds(found) == ["identifier", "path"]


# --- tables -------------------------------------------------------------------------------------

def test_small_counts_in_table_cells(tmp_path):
    table = pd.DataFrame({"Hospital": ["H1", "H2", "H3"], "Patients": ["216", "7", "120"],
                          "Observed rate": ["17.1%", "5.0%", "9.2%"], "Expected deaths": ["28.8", "2.1", "9.9"]})
    page = read_html(html_page(tmp_path, html_table(table)))
    found = scan_page(page, threshold=THRESHOLD, home="/nonexistent")
    assert [(f.kind, f.detail) for f in found] == [("small count", "7")]
    # columns of rates, expected counts, ESS or parameters are not counts
    other = pd.DataFrame({"Parameter": ["Intercept", "sigma"], "Bulk ESS": ["821", "9"], "R-hat": ["1.002", "1.01"],
                          "Effective number of parameters": ["7", "3"], "Item": ["1", "2"]})
    assert scan_page(read_html(html_page(tmp_path, html_table(other), "b.html")), threshold=THRESHOLD,
                     home="/nonexistent") == []


def test_a_table_one_cell_with_its_percentage(tmp_path):
    shown = pd.DataFrame({"Overall": ["700", "20 (2.9%)"], "0": ["600", "17 (2.8%)"], "1": ["100", "3 (3.0%)"]},
                         index=pd.Index(["n", "Sepsis, n (%)"], name="Characteristic"))
    found = scan_page(read_html(html_page(tmp_path, html_table(shown, index=True))), threshold=THRESHOLD,
                      home="/nonexistent")
    assert [(f.kind, f.detail) for f in found] == [("small count", "3 (3.0%)")]


def test_docx_tables_and_paragraphs(tmp_path):
    document = docx.Document()
    document.add_paragraph("We excluded 4 patients without a stay.")
    table = document.add_table(rows=3, cols=3)
    for i, row in enumerate([["Step", "Patients", "Removed"], ["Source", "700", ""], ["Adults", "696", "<11"]]):
        for j, text in enumerate(row):
            table.cell(i, j).text = text
    document.save(tmp_path / "manuscript.docx")
    page = read_docx(tmp_path / "manuscript.docx", "manuscript.docx")
    assert page.tables[0].rows[2] == ["Adults", "696", "<11"]
    found = scan_page(page, threshold=THRESHOLD, home="/nonexistent")
    assert kinds(found) == ["derivable", "small count"]
    assert "worked out as 4" in next(f.detail for f in found if f.kind == "derivable")


def test_scan_outputs_reads_every_output(tmp_path):
    build = tmp_path / "build"
    (build / "html").mkdir(parents=True)
    html_page(build / "html", "<p>We excluded 3 patients.</p>", "index.html")
    html_page(build / "html", "<p>Nothing to see.</p>", "02_describe.html")
    document = docx.Document()
    document.add_paragraph("The source was /tmp/cohort.duckdb.")
    document.save(build / "manuscript.docx")
    found = scan_outputs(build, threshold=THRESHOLD, home="/nonexistent")
    assert sorted((f.file, f.kind) for f in found) == [("html/index.html", "small count"), ("manuscript.docx", "path")]
    with pytest.raises(FileNotFoundError, match="no rendered output"):
        scan_outputs(tmp_path / "empty", threshold=THRESHOLD)
    with pytest.raises(ValueError, match="whole number >= 2"):
        scan_outputs(build, threshold=1)


def test_scanner_reads_pdf_text(tmp_path):
    pytest.importorskip("pypdf")
    from leaks import read_pdf
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    fig.text(0.1, 0.5, "Excluded: 4 younger than 18 years")
    fig.savefig(tmp_path / "manuscript.pdf")
    plt.close(fig)
    page = read_pdf(tmp_path / "manuscript.pdf", "manuscript.pdf")
    assert any("Excluded: 4" in text for text in page.texts)
    assert kinds(scan_page(page, threshold=THRESHOLD, home="/nonexistent")) == ["small count"]


# --- the disclosure classes of the issue: the old rendering is caught, the library's is not -----

def flow_page(tmp_path, shown: pd.DataFrame, name: str):
    return read_html(html_page(tmp_path, html_table(shown), name))


def test_flow_700_696_beside_excluded_masked(tmp_path):
    flow = pd.DataFrame({"step": ["source", "adult", "stay"], "label": ["Stays", "Adults", "Stays of 4 hours"],
                         "n_remaining": [700, 696, 682], "n_removed": [0, 4, 14],
                         "reason": ["", "Younger than 18 years", "Stay shorter than 4 hours"]})
    assert 700 - 696 == 4
    old = pd.DataFrame({"Step": flow.label, "Stays": ["700", "696", "682"], "Removed": ["", "<11", "14"]})
    found = scan_page(flow_page(tmp_path, old, "old.html"), threshold=THRESHOLD, home="/nonexistent")
    assert [f.detail for f in found if f.kind == "derivable"] == ["masked count worked out as 4 from the table's sums"]
    for rows in (slice(None), slice(0, 2)):   # with a neighbour to merge with, and alone (the source hidden)
        new = flow_table(flow.iloc[rows], threshold=THRESHOLD)
        assert scan_page(flow_page(tmp_path, new, "new.html"), threshold=THRESHOLD, home="/nonexistent") == []


def test_table_one_row_17_14_masked(tmp_path):
    data = pd.DataFrame({"death": [0] * 600 + [1] * 100, "sepsis": [1] * 14 + [0] * 586 + [1] * 3 + [0] * 97})
    t1 = table_one(data, columns=["sepsis"], group="death")
    new = format_table_one(t1, threshold=THRESHOLD)
    old = new.copy()
    old.loc["sepsis, n (%)", ["Overall", "0"]] = ["17 (2.4%)", "14 (2.3%)"]
    old.loc["sepsis, n (%)", "SMD"] = "0.04"
    assert 17 - 14 == 3
    found = scan_page(read_html(html_page(tmp_path, html_table(old, index=True))), threshold=THRESHOLD,
                      home="/nonexistent")
    assert [f.detail for f in found] == ["masked count worked out as 3 from the table's sums"]
    assert scan_page(read_html(html_page(tmp_path, html_table(new, index=True), "new.html")), threshold=THRESHOLD,
                     home="/nonexistent") == []


def _smd_candidates(smd: float, count_b: int, size_a: int, size_b: int, threshold: int) -> list:
    "Every masked count 1..threshold-1 of group a whose binary SMD, rounded as shown, is `smd` (independent arithmetic)."
    p_b = count_b / size_b
    found = []
    for x in range(1, threshold):
        p_a = x / size_a
        pooled = math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / 2)
        if round(abs(p_a - p_b) / pooled, 2) == round(smd, 2):
            found.append(x)
    return found


def test_smd_of_a_masked_binary_variable():
    data = pd.DataFrame({"ward": ["a"] * 30 + ["b"] * 30, "sepsis": [1] * 4 + [0] * 26 + [1] * 15 + [0] * 15})
    t1 = table_one(data, columns=["sepsis"], group="ward")
    smd = float(t1.smd.dropna().iloc[0])
    assert _smd_candidates(smd, 15, 30, 30, THRESHOLD) == [4]   # the old table's SMD gave the 4 back
    shown = format_table_one(t1, threshold=THRESHOLD)
    assert shown.loc["sepsis, n (%)", "a"].startswith("<11") and shown.loc["sepsis, n (%)", "SMD"] == "–"
    assert protected_variables(t1, threshold=THRESHOLD) == ["sepsis"]


def _subgroup_parts():
    "Subgroups of 1,467 patients and 202 deaths: the youngest band's 10 deaths and hospital C's 4 survivors small."
    def part(levels, n, events):
        return pd.DataFrame({"level": levels, "n": n, "events": events, "auroc": 0.7, "auroc_low": 0.6,
                             "auroc_high": 0.8, "observed_expected": 1.0, "observed_expected_low": 0.8,
                             "observed_expected_high": 1.25})
    return [("Sex", part(["Female", "Male"], [636, 831], [78, 124]), False),
            ("Age, years", part(["18-49", "50-64", "65-79", "80+"], [287, 442, 503, 235], [10, 45, 94, 53]), False),
            ("Hospital", part(["A", "B", "C", "D"], [700, 500, 15, 252], [100, 60, 11, 31]), True)]


def _protected_subgroups(parts):
    "What the performance notebooks do: format_subgroups, then suppress_counts on each subgroup's levels."
    shown, _ = format_subgroups(parts, threshold=THRESHOLD)
    counts = pd.concat([pd.DataFrame({"Subgroup": label, "Level": p["level"].astype(str), "n": p["n"],
                                      "events": p["events"]}) for label, p, _ in parts], ignore_index=True)
    protected = suppress_counts(counts, threshold=THRESHOLD, by="Subgroup", label="Level").set_index(["Subgroup", "Level"])
    for i, row in shown.iterrows():
        found = protected.loc[(row["Subgroup"], row["Level"])]
        shown.loc[i, ["Patients", "Events"]] = [found["n_shown"], found["events_shown"]]
        if found["protected"]:
            shown.loc[i, ["AUROC (95% CI)", "O/E (95% CI)"]] = "not shown"
    return shown


def test_table_s3_subtracted_from_the_total_deaths(tmp_path):
    parts = _subgroup_parts()
    assert 202 - (45 + 94 + 53) == 10 and 15 - 11 == 4
    old, _ = format_subgroups(parts, threshold=THRESHOLD)
    found = scan_page(read_html(html_page(tmp_path, html_table(old))), threshold=THRESHOLD, home="/nonexistent")
    details = sorted(f.where.split(", ", 1)[1] + ": " + f.detail.split(" worked out as ")[1].split()[0] for f in found)
    assert details == ["row 'Age, years', column 'Events': 10",
                       "row 'Hospital' C: Patients less Events (not shown): 4"]
    new = _protected_subgroups(parts)
    assert scan_page(read_html(html_page(tmp_path, html_table(new), "new.html")), threshold=THRESHOLD,
                     home="/nonexistent") == []
    # hospital C's O/E interval would give its 11 deaths back (its log-scale SE is sqrt(1/O - 1/n)): not shown
    from clinpaper.evaluate import observed_expected
    interval = observed_expected(np.r_[np.ones(11), np.zeros(4)], np.full(15, 0.6))
    se = math.log(interval["high"] / interval["low"]) / (2 * 1.959964)   # se^2 = 1/O - 1/n, n = 15 shown
    assert round(1 / (se ** 2 + 1 / 15)) == 11
    assert new.set_index("Level").loc["C", "O/E (95% CI)"].startswith("not shown")


def test_per_group_table_against_the_total(tmp_path):
    # one row per hospital beside the total deaths that Table 1 and the text show
    counts = pd.DataFrame({"group": ["1", "2", "3", "4"], "n": [216, 226, 51, 410], "observed": [37, 27, 6, 52]})
    old = pd.DataFrame({"Hospital": counts.group, "Patients": counts.n.astype(str),
                        "Died": [str(v) if v >= THRESHOLD else "<11" for v in counts.observed]})
    total = pd.DataFrame({"Hospital": ["Total"], "Patients": ["903"], "Died": ["122"]})
    page = read_html(html_page(tmp_path, html_table(pd.concat([old, total]))))
    assert [f.detail for f in scan_page(page, threshold=THRESHOLD, home="/nonexistent")] == [
        "masked count worked out as 6 from the table's sums"]
    shown = suppress_counts(counts, threshold=THRESHOLD, n="n", events="observed", label="group")
    new = pd.DataFrame({"Hospital": counts.group, "Patients": shown.n_shown, "Died": shown.events_shown})
    page = read_html(html_page(tmp_path, html_table(pd.concat([new, total])), "new.html"))
    assert scan_page(page, threshold=THRESHOLD, home="/nonexistent") == []
    assert shown.protected.tolist() == [False, True, True, False]   # hospital 2's rate would give 27 back, then 6


def test_kaplan_meier_steps():
    # 40 patients: 2 die on day 3, the others are censored later; the exact curve's first step is 38/40
    data = pd.DataFrame({"days": [3.0, 3.0] + list(np.linspace(5, 60, 38)), "died": [1, 1] + [0] * 36 + [1, 1]})
    exact = kaplan_meier_table(data, duration="days", event="died")
    first = exact[exact.events > 0].iloc[0]
    assert round(first.at_risk * (1 - first.survival)) == 2   # the old curve's step, times the group's size
    rounded = kaplan_meier_table(data, duration="days", event="died", threshold=THRESHOLD)
    drops = rounded.at_risk.to_numpy()[1:] * (1 - rounded.survival.to_numpy()[1:] /
                                               np.maximum(rounded.survival.to_numpy()[:-1], 1e-12))
    assert np.allclose(np.mod(np.round(drops, 6), THRESHOLD), 0) and np.allclose(rounded.at_risk % THRESHOLD, 0)


def test_weighted_table_one_is_still_protected():
    rng = np.random.default_rng(3)
    data = pd.DataFrame({"arm": ["a"] * 200 + ["b"] * 200, "cancer": [1] * 4 + [0] * 196 + [1] * 30 + [0] * 170,
                         "w": rng.uniform(1, 3, 400)})
    before = table_one(data, columns=["cancer"], group="arm")
    after = table_one(data, columns=["cancer"], group="arm", weights="w")
    shown = format_table_one(after, threshold=THRESHOLD, unweighted=before)
    row = shown.loc["cancer, n (%)"]
    assert row["a"].startswith("<11") and "–" in (row["Overall"], row["b"]) and row["SMD"] == "–"
    assert protected_variables(after, threshold=THRESHOLD, unweighted=before) == ["cancer"]


def test_missing_values_against_the_cleaning_table(tmp_path):
    # the cleaning table shows 15 patients without a lactate; Table 1 hid its Overall 15 and showed the
    # survivors' 13: the deaths' masked 2 was 15 - 13
    data = pd.DataFrame({"death": [0] * 200 + [1] * 50,
                         "lactate": [np.nan] * 13 + [1.5] * 187 + [np.nan] * 2 + [2.5] * 48})
    t1 = table_one(data, columns=["lactate"], group="death")
    codebook = {"lactate": {"label": "Lactate, maximum", "unit": "mmol/L"}}
    cleaning = pd.DataFrame({"Variable": ["Lactate"], "Unit": ["mmol/L"], "Out of range": ["0"],
                             "Patients without a value": ["15"]})
    assert 15 - 13 == 2
    pages = {}
    for name, known in (("old", ()), ("new", [("lactate", "missing")])):
        shown = format_table_one(t1, codebook=codebook, threshold=THRESHOLD, known=known)
        body = html_table(shown, index=True) + html_table(cleaning)
        pages[name] = scan_page(read_html(html_page(tmp_path, body, f"{name}.html")), threshold=THRESHOLD,
                                home="/nonexistent")
    assert [f.detail for f in pages["old"]] == ["masked count worked out as 2 from the table's sums"]
    assert pages["new"] == []


@pytest.mark.parametrize("line", ["7 Variables Outcomes, exposures, predictors, confounders",
                                  "6 Participants Eligibility criteria and sources",
                                  "13 Participants Numbers at each stage"])
def test_a_checklist_item_at_the_start_of_a_pdf_line_is_not_a_count(line):
    assert text_counts(line, THRESHOLD) == []
    assert [v for v, _ in text_counts("Of these, 7 participants were excluded.", THRESHOLD)] == [7]
