"""The paper end to end, in a project made by `clinpaper new` outside the repository: synthesize
a small cohort, run and build it, and check that the web book, the DOCX and the PDF show the
counts that an independent SQL query on the DuckDB file gives; that a second run on another
cohort leaves the first run byte-identical; that a failing rerun leaves the previous run
untouched; that the same data, study and seed give the same numbers; and that prose edited in
manuscript.md after a run reaches all three outputs without a rerun."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from bs4 import BeautifulSoup

from clinpaper.core import write_marker
from conftest import EXTERNAL, ROOT, clinpaper, tree_digest
from leaks import run_threshold, scan_outputs, source_identifiers

# all tests that use the built paper run in one xdist worker (it is built once per worker)
pytestmark = pytest.mark.xdist_group("paper")

INDEPENDENT_SQL = """
WITH icu AS (
    SELECT v.*, row_number() OVER (PARTITION BY person_id
                                   ORDER BY visit_start_datetime, visit_occurrence_id) AS k
    FROM visit_occurrence v WHERE visit_concept_id = 32037
), first_stay AS (
    SELECT i.*, p.birth_datetime::DATE AS birth FROM icu i JOIN person p USING (person_id)
    WHERE k = 1
), aged AS (
    SELECT *, year(visit_start_date) - year(birth)
              - CASE WHEN month(visit_start_date) * 100 + day(visit_start_date)
                          < month(birth) * 100 + day(birth) THEN 1 ELSE 0 END AS age
    FROM first_stay
), cohort AS (
    SELECT * FROM aged
    WHERE age >= 18
      AND epoch(visit_end_datetime) - epoch(visit_start_datetime) >= 4 * 3600
)
SELECT
    (SELECT count(*) FROM icu) AS n_index_events,
    (SELECT count(*) FROM cohort) AS n_patients,
    (SELECT count(DISTINCT care_site_id) FROM cohort) AS n_hospitals,
    (SELECT count(*) FROM cohort c WHERE EXISTS (
        SELECT 1 FROM death d WHERE d.person_id = c.person_id
          AND d.death_date BETWEEN c.visit_start_date AND c.visit_end_date)) AS n_deaths,
    (SELECT count(*) FROM aged WHERE age < 18) AS n_children
"""


def sql_counts(path):
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(INDEPENDENT_SQL).fetchone()
        names = [d[0] for d in con.description]
    return dict(zip(names, row))


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_results_match_independent_sql(paper):
    counts = sql_counts(paper["cohort"])
    assert counts["n_children"] > 0, "the synthetic cohort should hold children to exclude"
    results = json.loads((paper["runs"] / "first" / "results.json").read_text())
    # glue name -> the SQL's count (the glue names are the study's: its group, its outcome)
    for name, counted in (("n_index_events", "n_index_events"), ("n_patients", "n_patients"),
                          ("n_groups", "n_hospitals"), ("n_events", "n_deaths")):
        assert results[name]["value"] == counts[counted], name
        assert results[name]["text"] == f"{counts[counted]:,}" or counts[counted] < 11
    assert 0.05 < counts["n_deaths"] / counts["n_patients"] < 0.2


def test_build_prints_the_three_outputs(paper):
    final = paper["builds"] / "first"
    for kind, name in (("html", "html/index.html"), ("docx", "manuscript.docx"),
                       ("pdf", "manuscript.pdf")):
        assert f"{kind}: {final / name}" in paper["build_stdout"]
        assert (final / name).stat().st_size > 0


def test_html_shows_the_sql_counts(paper):
    html = paper["builds"] / "first" / "html"
    page = BeautifulSoup((html / "manuscript.html").read_text(), "html.parser")
    text = page.get_text(" ")
    counts = sql_counts(paper["cohort"])
    assert f"We included {counts['n_patients']:,} patients in {counts['n_hospitals']:,}" in \
        re.sub(r"\s+", " ", text)
    assert f"{counts['n_deaths']:,}" in text
    assert f"Of {counts['n_index_events']:,} index events in the source" in re.sub(r"\s+", " ", text)
    # every figure the page refers to is there
    for image in page.find_all("img"):
        source = image.get("src", "")
        if not source.startswith("data:"):
            assert (html / source).resolve().exists(), source
    assert len(page.find_all("img")) >= 3
    assert len(page.find_all("table")) >= 2


def test_docx_shows_the_sql_counts(paper):
    import docx
    document = docx.Document(paper["builds"] / "first" / "manuscript.docx")
    text = "\n".join(p.text for p in document.paragraphs)
    counts = sql_counts(paper["cohort"])
    assert f"We included {counts['n_patients']:,} patients in {counts['n_hospitals']:,}" in text
    headings = [p.text for p in document.paragraphs if p.style.name.startswith("Heading")]
    for heading in ("Abstract", "Methods", "Results", "Discussion", "References"):
        assert heading in headings
    assert len(document.tables) >= 2
    assert len(document.inline_shapes) >= 3
    assert "{glue" not in text and "{numref" not in text


def test_pdf_shows_the_sql_counts(paper):
    from pypdf import PdfReader
    reader = PdfReader(paper["builds"] / "first" / "manuscript.pdf")
    text = squash("".join(page.extract_text() for page in reader.pages))
    counts = sql_counts(paper["cohort"])
    assert squash(f"We included {counts['n_patients']:,} patients in {counts['n_hospitals']:,}") in text
    assert len(reader.pages) >= 3


def test_no_leak_in_any_rendered_output(paper):
    "No count from 1 to the threshold - 1, shown or derivable, no identifier, date of birth or absolute path."
    findings = scan_outputs(paper["builds"] / "first", threshold=run_threshold(paper["runs"] / "first"),
                            forbidden=source_identifiers(paper["cohort"]) + [str(paper["base"])])
    assert not findings, "\n".join(map(str, findings))


def test_manifest(paper):
    manifest = json.loads((paper["runs"] / "first" / "manifest.json").read_text())
    digest = hashlib.sha256(Path(paper["cohort"]).read_bytes()).hexdigest()
    assert manifest["source"]["fingerprint"]["sha256"] == digest
    assert manifest["seed"] == manifest["parameters"]["seed"]
    assert manifest["packages"]["pymc"].startswith("5.")
    assert set(manifest["timings"]["notebooks"]) == set(manifest["notebooks"])


def test_no_patient_rows_in_rendered_outputs(paper):
    "Person ids of the source never appear in the web book or the manuscript."
    with duckdb.connect(str(paper["cohort"]), read_only=True) as con:
        ids = {str(r[0]) for r in con.execute(
            "SELECT person_source_value FROM person WHERE person_source_value IS NOT NULL "
            "LIMIT 200").fetchall()}
    html = paper["builds"] / "first" / "html" / "manuscript.html"
    text = html.read_text()
    assert ids and not any(f">{i}<" in text for i in ids)


def test_other_cohort_and_failed_rerun_leave_first_run_untouched(paper, external_run):
    runs = paper["runs"]
    # a second run, on another cohort, left the first run's files byte-identical
    assert (external_run / "manifest.json").exists()
    assert tree_digest(runs / "first") == paper["first_digest"]
    results = json.loads((external_run / "results.json").read_text())
    assert results["validate_against"]["text"] == "first"
    assert 0.5 < results["external_auroc"]["value"] < 1
    # a rerun of "first" that fails the convergence gate publishes nothing and keeps the old run
    failed = clinpaper("run", "--cohort", paper["cohort"], "--name", "first", "-p", "r_hat_max=1.0001",
                       "-p", "draws=200", "-p", "tune=200", check=False, cwd=paper["project"])
    assert failed.returncode == 2
    assert "03_model.ipynb failed" in failed.stderr and "r_hat" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert tree_digest(runs / "first") == paper["first_digest"]
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]   # no partial folder


def test_same_data_same_seed_same_numbers(paper, external_run):
    "The external run made again (same cohort, study, parameters and seed): every number the same."
    runs = paper["runs"]
    arguments = [a if a != "external" else "again" for a in EXTERNAL]
    # --force: every notebook executed again, not taken from the run cache
    clinpaper("run", "--cohort", paper["base"] / "external.duckdb", *arguments, "--force",
              cwd=paper["project"])
    first = json.loads((external_run / "results.json").read_text())
    again = json.loads((runs / "again" / "results.json").read_text())
    # the reproducibility appendix records the code version (git commit), which is not a number
    # of the paper and changes if a commit lands between the two runs
    for results in (first, again):
        results.pop("table_reproducibility")
    assert len(first) > 100 and first == again


def test_run_keeps_the_executed_manuscript(paper):
    "manuscript.md runs into manuscript.ipynb; the manifest knows each page by its executed name."
    import nbformat
    run = paper["runs"] / "first"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["manuscript"] == "manuscript.ipynb"
    assert manifest["sources"]["manuscript.ipynb"] == "manuscript.md"
    assert manifest["project_root"] == str(paper["project"].resolve())
    assert not (run / "manuscript.md").exists()
    executed = nbformat.read(str(run / "manuscript.ipynb"), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'run_dir = "."' in injected[0].source
    assert executed.metadata.get("papermill", {}).get("exception") is None
    # the web book shows the paper only: its pages are the toc's, no library notebook
    html = paper["builds"] / "first" / "html"
    pages = {p.stem for p in html.glob("*.html")} - {"index", "genindex", "search"}
    assert pages == {Path(n).stem for n in manifest["notebooks"]}
    assert not (html / "nbs").exists() and not (html / "book").exists()


DISCUSSION = ("Our edited Discussion names the {glue:text}`n_patients` patients of the run in "
              "a sentence written after it.")


@pytest.fixture
def edited_manuscript(paper):
    "manuscript.md of the session's project, restored after the test."
    path = paper["project"] / "manuscript.md"
    original = path.read_text()
    yield path, original
    path.write_text(original)


def docx_text(path):
    import docx
    return "\n".join(p.text for p in docx.Document(path).paragraphs)


def pdf_text(path):
    from pypdf import PdfReader
    return squash("".join(page.extract_text() for page in PdfReader(path).pages))


def test_edited_prose_reaches_all_outputs_without_rerun(paper, edited_manuscript, tmp_path):
    path, original = edited_manuscript
    assert "\n## Discussion\n" in original
    path.write_text(original.replace("\n## Discussion\n", f"\n## Discussion\n\n{DISCUSSION}\n", 1))
    run_before = tree_digest(paper["runs"] / "first")
    built = clinpaper("build", "first", "--out", tmp_path, cwd=paper["project"])
    assert "manuscript prose taken from manuscript.md (edited after run first)" in built.stderr
    n_patients = json.loads((paper["runs"] / "first" / "results.json").read_text())["n_patients"]["text"]
    sentence = ("Our edited Discussion names the " + n_patients + " patients of the run in a "
                "sentence written after it.")
    html = BeautifulSoup((tmp_path / "first" / "html" / "manuscript.html").read_text(), "html.parser")
    assert sentence in re.sub(r"\s+", " ", html.get_text(" ")).replace(" .", ".")
    assert sentence in docx_text(tmp_path / "first" / "manuscript.docx")
    assert squash(sentence) in pdf_text(tmp_path / "first" / "manuscript.pdf")
    assert json.loads((tmp_path / "first" / "build.json").read_text())["prose"]["manuscript.ipynb"] == "prose"
    assert tree_digest(paper["runs"] / "first") == run_before   # the run is not touched


def test_misspelt_glue_in_edited_prose_fails_before_sphinx(paper, edited_manuscript, tmp_path):
    path, original = edited_manuscript
    path.write_text(original.replace("\n## Discussion\n",
                                     "\n## Discussion\n\nWe saw {glue:text}`n_patiens` patients.\n", 1))
    line = path.read_text().splitlines().index("We saw {glue:text}`n_patiens` patients.") + 1
    (tmp_path / "first").mkdir()
    write_marker(tmp_path / "first", "build")   # an earlier build of clinpaper's
    (tmp_path / "first" / "keep.txt").write_text("an earlier build")
    failed = clinpaper("build", "first", "--out", tmp_path, check=False, cwd=paper["project"])
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"`n_patiens` (manuscript.md, line {line}, edited after run first)" in failed.stderr
    assert "building the web book" not in failed.stderr            # Sphinx never started
    assert [p.name for p in tmp_path.iterdir()] == ["first"]       # no partial build left
    assert (tmp_path / "first" / "keep.txt").read_text() == "an earlier build"


def test_changed_code_refuses_the_build_then_a_reference_is_added(paper, edited_manuscript, tmp_path):
    """A code cell changed after the run: the build refuses (it would show what the source no
    longer says) and names the file; with the source as run, a library reference can be added."""
    path, original = edited_manuscript
    changed = original.replace("```{code-cell}\n", "```{code-cell}\n# a changed cell\n", 1)
    path.write_text(changed.replace("\n## Discussion\n", f"\n## Discussion\n\n{DISCUSSION}\n", 1))
    refused = clinpaper("build", "first", "--out", tmp_path, check=False, cwd=paper["project"])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "the code cells of manuscript.md changed" in refused.stderr
    assert "clinpaper run --name first" in refused.stderr
    assert not (tmp_path / "first").exists()
    status = clinpaper("status", "first", check=False, cwd=paper["project"])
    assert status.returncode == 1 and "manuscript.ipynb" in status.stdout and "outdated" in status.stdout
    path.write_text(original)
    clinpaper("build", "first", "--out", tmp_path, "--reference", ROOT / "nbs", cwd=paper["project"])
    html = tmp_path / "first" / "html"
    assert (html / "reference" / "07_run.html").is_file()
    assert "Library reference" in (html / "manuscript.html").read_text()


def test_a_late_code_edit_reexecutes_only_that_step_and_later_with_the_same_bytes(paper):
    """One figure's code changed in a late notebook (04_performance): the earlier steps are taken
    from the run cache, that notebook and the manuscript are executed, and every file the run
    wrote is byte-identical to the full run's (the reproducibility table excepted: it states that
    the project now has uncommitted changes)."""
    page = paper["project"] / "04_performance.ipynb"
    original = page.read_text()
    notebook = json.loads(original)
    code = [c for c in notebook["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", [])]
    code[-1]["source"] = ["# a figure's label edited\n"] + code[-1]["source"]
    page.write_text(json.dumps(notebook, indent=1))
    try:
        ran = clinpaper("run", "--cohort", paper["cohort"], "--name", "cached", cwd=paper["project"])
    finally:
        page.write_text(original)
    runs = paper["runs"]
    manifest = json.loads((runs / "cached" / "manifest.json").read_text())
    assert manifest["cache"]["reused"] == ["01_cohort.ipynb", "02_describe.ipynb", "03_model.ipynb",
                                           "03a_model_checks.ipynb"], ran.stderr
    assert manifest["cache"]["executed"] == ["04_performance.ipynb", "manuscript.ipynb"]
    assert manifest["steps"]["04_performance.ipynb"]["why"] == "its code changed"
    assert "running 04_performance.ipynb (its code changed)" in ran.stderr
    first, cached = tree_digest(runs / "first"), tree_digest(runs / "cached")
    own = lambda digest: {f: d for f, d in digest.items() if not f.endswith(".ipynb")
                          and f not in ("manifest.json", ".clinpaper.json", "results.json",
                                        "tables/table_reproducibility.csv")}
    assert own(cached) == own(first) and len(own(first)) > 10
    results = [json.loads((runs / name / "results.json").read_text()) for name in ("first", "cached")]
    tables = [r.pop("table_reproducibility") for r in results]
    assert results[0] == results[1] and len(results[0]) > 100
    assert "uncommitted changes" in json.dumps(tables[1]) and "uncommitted changes" not in json.dumps(tables[0])
