"""`clinpaper compare` on two real runs of the paper: two small synthetic cohorts (the second
from another health system, run with another seed), each run once per session with the
command line, then compared. Every number the comparison shows is checked against the two
runs' own files read here directly (results.json, tables/*.csv, manifest.json)."""
import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from clinpaper.compare import compare, compare_runs, write_comparison
from clinpaper.run import run_files
from clinpaper.core import RunError
from conftest import clinpaper

pytestmark = pytest.mark.xdist_group("paper")   # reuses the runs of the session's paper

@pytest.fixture(scope="session")
def two_runs(paper, external_run, tmp_path_factory):
    """Runs A and B of the paper, reused from the session's end-to-end runs: A is "first" (the
    small cohort), B is "external" (another health system's cohort, seed 7, an external
    validation of A's model). CLINPAPER_COMPARE_RUNS=FOLDER uses runs A and B made earlier."""
    if os.environ.get("CLINPAPER_COMPARE_RUNS"):
        return Path(os.environ["CLINPAPER_COMPARE_RUNS"])
    runs = tmp_path_factory.mktemp("compare") / "runs"
    runs.mkdir()
    (runs / "A").symlink_to(paper["runs"] / "first", target_is_directory=True)
    (runs / "B").symlink_to(external_run, target_is_directory=True)
    return runs


def results(run):
    return json.loads((run / "results.json").read_text())


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def table(run, name):
    with open(run / "tables" / f"{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cohort_differences_are_b_minus_a(two_runs):
    a, b = results(two_runs / "A"), results(two_runs / "B")
    cohort = compare_runs(two_runs / "A", two_runs / "B")["cohort"].set_index("name")
    for name in ("n_patients", "n_events", "n_index_events"):
        difference = b[name]["value"] - a[name]["value"]
        assert abs(difference) >= 11          # large enough to be shown
        assert cohort.loc[name, "difference"] == difference
        assert cohort.loc[name, "change"] == f"{difference:+,}"
        assert cohort.loc[name, ["A", "B"]].tolist() == [a[name]["text"], b[name]["text"]]
    percent = b["outcome_percent"]["value"] - a["outcome_percent"]["value"]
    assert cohort.loc["outcome_percent", "difference"] == pytest.approx(percent)
    # every masked count of either run stays masked, without a difference
    for name in cohort.index:
        if a.get(name, {}).get("text", "").startswith("<") or \
                b.get(name, {}).get("text", "").startswith("<"):
            assert cohort.loc[name, "change"] == "masked"
            assert cohort.loc[name].isna()["difference"]


def test_flow_table_one_and_estimates_side_by_side(two_runs):
    sections = compare_runs(two_runs / "A", two_runs / "B")
    flow_a, flow_b = table(two_runs / "A", "table_flow"), table(two_runs / "B", "table_flow")
    flow = sections["flow"].set_index("Step")
    # a small exclusion is merged with its neighbour, so two cohorts may show different steps: every
    # step of either run is there, in each run's order, with that run's counts
    steps_a, steps_b = [row["Step"] for row in flow_a], [row["Step"] for row in flow_b]
    assert set(flow.index) == set(steps_a) | set(steps_b)
    assert [step for step in flow.index if step in steps_a] == steps_a
    unit = list(flow_a[0])[1]   # what the flow counts, as the study's cohort step names it ("Patients")
    assert unit in ("Patients", "Index events")
    for rows, run in ((flow_a, "A"), (flow_b, "B")):
        for row in rows:
            assert flow.loc[row["Step"], f"{unit} {run}"] == row[unit]
    first = flow_a[0]["Step"]
    assert first == flow_b[0]["Step"]
    counted = int(flow_b[0][unit].replace(",", "")) - int(flow_a[0][unit].replace(",", ""))
    assert flow.loc[first, f"{unit} change"] == f"{counted:+,}"

    one_a, one_b = table(two_runs / "A", "table_one"), table(two_runs / "B", "table_one")
    table_one = sections["table_one"]
    assert len(table_one) == len(one_a) == len(one_b)   # same study: the same rows
    assert table_one["Overall A"].tolist() == [row["Overall"] for row in one_a]
    assert table_one["Overall B"].tolist() == [row["Overall"] for row in one_b]
    assert table_one["SMD B"].tolist() == [row["SMD"] for row in one_b]
    assert table_one["changed"].tolist() == [x["Overall"] != y["Overall"]
                                             for x, y in zip(one_a, one_b)]

    a, b = results(two_runs / "A"), results(two_runs / "B")
    estimates = sections["estimates"].set_index("name")
    odds = sorted(name for name in a if name.startswith("or_"))
    assert odds and list(estimates.index[:len(odds)]) == odds
    for name in odds + ["sigma_group", "median_odds_ratio"]:
        assert estimates.loc[name, ["A", "B"]].tolist() == [a[name]["text"], b[name]["text"]]
        assert estimates.loc[name, "difference"] == pytest.approx(b[name]["value"] - a[name]["value"])
    # B ran on another cohort with other sampler settings and seed: the methods text differs in them (and in
    # the parameterization's data-derived words), and the change lists the first differences word by word
    change = estimates.loc["methods_model", "change"]
    manifest_a, manifest_b = manifest(two_runs / "A"), manifest(two_runs / "B")
    chains = f"{manifest_a['parameters']['chains']} → {manifest_b['parameters']['chains']}"
    draws = f"{manifest_a['parameters']['draws']:,} → {manifest_b['parameters']['draws']:,}"
    listed, _, more = change.partition("; and ")
    pairs = [item.split(" → ") for item in listed.split("; ")]
    text_a, text_b = a["methods_model"]["text"], b["methods_model"]["text"]
    assert all(len(pair) == 2 and pair[0] in text_a and pair[1] in text_b for pair in pairs), change
    first = next(i for i, (x, y) in enumerate(zip(text_a.split(), text_b.split())) if x != y)
    assert text_a.split()[first] == pairs[0][0], (change, text_a.split()[first])
    assert chains in change or draws in change or (more and int(more.split()[0]) >= 2), change

    # performance: both runs' apparent and cross-validated metrics; B's external validation
    # against A's model only in B
    performance = sections["performance"].set_index("name")
    for name in ("apparent_auroc", "apparent_brier", "cv_auroc"):
        assert performance.loc[name, ["A", "B"]].tolist() == [a[name]["text"], b[name]["text"]]
        assert performance.loc[name, "difference"] == pytest.approx(b[name]["value"] - a[name]["value"])
    external = sorted(name for name in b if name.startswith("external_") and name not in a
                      and b[name]["kind"] == "text")
    assert "external_auroc" in external
    assert (performance.loc[external, "A"] == "(absent)").all()
    assert performance.loc[external, "B"].tolist() == [b[name]["text"] for name in external]
    metric_words = ("auroc", "auprc", "brier", "calibration", "ici", "e50", "e90",
                    "observed_expected", "net_benefit")
    texts = {n for run in (a, b) for n, e in run.items() if e["kind"] == "text"}
    assert set(performance.index) == {n for n in texts if any(w in n for w in metric_words)}
    assert not set(performance.index) & set(estimates.index)


def test_manifest_lists_what_differed_only(two_runs):
    a, b = manifest(two_runs / "A"), manifest(two_runs / "B")
    items = compare_runs(two_runs / "A", two_runs / "B")["manifest"].set_index("item")
    assert items.loc["parameters.seed", ["A", "B"]].tolist() == \
        [str(a["parameters"]["seed"]), str(b["parameters"]["seed"])] == ["20261121", "7"]
    assert items.loc["source.path", ["A", "B"]].tolist() == [a["source"]["path"], b["source"]["path"]]
    assert items.loc["source.fingerprint.sha256", "B"] == b["source"]["fingerprint"]["sha256"]
    same = [name for name in a["packages"] if a["packages"][name] == b["packages"].get(name)]
    assert same and not any(f"packages.{name}" in items.index for name in same)
    assert items.loc["parameters.validate_against", ["A", "B"]].tolist() == ["null", "first"]
    assert items.loc["parameters.draws", ["A", "B"]].tolist() == \
        [str(a["parameters"]["draws"]), str(b["parameters"]["draws"])] == ["1000", "500"]   # the study's, then -p
    for item in ("study.sha256", "notebooks", "parameters.small_count_threshold"):
        assert item not in items.index
    assert items.loc["timings.total_seconds", ["A", "B"]].tolist() == \
        [str(a["timings"]["total_seconds"]), str(b["timings"]["total_seconds"])]


def test_page_json_and_markdown(two_runs, tmp_path):
    page = compare("A", "B", runs=two_runs, out=tmp_path / "cmp")
    assert page == tmp_path / "cmp" / "index.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    headings = [h.get_text() for h in soup.find_all("h2")]
    assert headings[:6] == ["Cohort", "Flow", "Table 1", "Estimates", "Performance",
                            "What differed in the manifests"]
    assert len(soup.find_all("table")) == 6
    assert not soup.find_all(["script", "link"])            # self-contained
    figures_a = {p.stem for p in (two_runs / "A" / "figures").glob("*.png")}
    figures_b = {p.stem for p in (two_runs / "B" / "figures").glob("*.png")}
    sources = [img["src"] for img in soup.find_all("img")]
    assert sorted(sources) == sorted(f"figures/{run}_{name}.png" for name in figures_a & figures_b
                                     for run in "AB")
    for source in sources:
        copied = page.parent / source
        run, _, name = Path(source).name.partition("_")
        assert copied.read_bytes() == (two_runs / run / "figures" / name).read_bytes()
    a, b = results(two_runs / "A"), results(two_runs / "B")
    row = soup.find("td", string="n_patients").find_parent("tr")
    assert [td.get_text() for td in row.find_all("td")][1:3] == \
        [a["n_patients"]["text"], b["n_patients"]["text"]]

    record = json.loads((page.parent / "comparison.json").read_text())
    assert set(record["sections"]) == {"cohort", "flow", "table_one", "estimates",
                                       "performance", "manifest"}
    cohort = {r["name"]: r for r in record["sections"]["cohort"]["records"]}
    assert cohort["n_patients"]["difference"] == b["n_patients"]["value"] - a["n_patients"]["value"]
    # a masked count's raw value is nowhere in the comparison's records
    for name, entry in a.items():
        if entry.get("kind") == "text" and str(entry["text"]).startswith("<"):
            assert entry["value"] not in [v for v in cohort[name].values()
                                          if not isinstance(v, str)]
    markdown = (page.parent / "comparison.md").read_text()
    assert "## Table 1" in markdown and "| n_patients" in markdown


def test_missing_table_is_reported(two_runs, tmp_path):
    partial = tmp_path / "B_without_table_one"
    shutil.copytree(two_runs / "B", partial,
                    ignore=shutil.ignore_patterns("data", "model", "*.ipynb"))
    (partial / "tables" / "table_one.csv").unlink()
    # a run that never had the table (a study without Table 1): its manifest lists the files it holds
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["files"] = run_files(partial)
    (partial / "manifest.json").write_text(json.dumps(manifest))
    sections = compare_runs(two_runs / "A", partial)
    assert sections["table_one"].attrs["note"] == "tables/table_one.csv is absent in run B."
    assert set(sections["table_one"]["Overall B"]) == {"(absent)"}
    steps = {row["Step"] for run in ("A", "B") for row in table(two_runs / run, "table_flow")}
    assert len(sections["flow"]) == len(steps)
    page = write_comparison(two_runs / "A", partial, tmp_path / "page")
    assert "tables/table_one.csv is absent in run B." in page.read_text()


def test_errors_keep_an_earlier_page(two_runs, tmp_path):
    out = tmp_path / "cmp"
    compare("A", "B", runs=two_runs, out=out)
    before = (out / "index.html").read_bytes()
    with pytest.raises(RunError, match=r"no run named 'C'.*Runs there: A, B\."):
        compare("A", "C", runs=two_runs, out=out)
    unfinished = tmp_path / "runs"
    unfinished.mkdir()
    shutil.copytree(two_runs / "A", unfinished / "A",
                    ignore=shutil.ignore_patterns("data", "model", "*.ipynb", "manifest.json"))
    shutil.copytree(two_runs / "B", unfinished / "B",
                    ignore=shutil.ignore_patterns("data", "model", "*.ipynb", "results.json"))
    with pytest.raises(RunError, match="not a finished run \\(no manifest.json\\)"):
        compare("A", "B", runs=unfinished, out=out)
    with pytest.raises(RunError, match="not a finished run \\(no results.json\\)"):
        compare("B", "B", runs=unfinished, out=out)
    assert (out / "index.html").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_command_line_defaults_inside_the_project(paper, external_run):
    "From a folder of the project, runs are found in _runs/ and the page goes to _build/."
    done = clinpaper("compare", "first", "external", cwd=paper["project"] / "_data")
    page = paper["project"] / "_build" / "compare_first_vs_external" / "index.html"
    assert page.is_file() and f"comparison: {page}" in done.stdout


def test_command_line(two_runs, tmp_path):
    if "compare" not in clinpaper("--help").stdout:
        pytest.skip("the CLI has no compare subcommand yet")
    done = clinpaper("compare", "A", "B", "--runs", two_runs, "--out", tmp_path / "cli")
    assert (tmp_path / "cli" / "index.html").is_file()
    assert str(tmp_path / "cli" / "index.html") in done.stdout
    failed = clinpaper("compare", "A", "nope", "--runs", two_runs, "--out", tmp_path / "x",
                       check=False)
    assert failed.returncode == 2 and "Runs there: A, B." in failed.stderr
