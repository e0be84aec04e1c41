"""`clinpaper score` and the model card (clinpaper.score), across modules.

Two kinds of run are scored. Small runs made here as the model notebook makes them (a real MCMC fit of a
hospital-variation study with physiology predictors, a spline of lactate, lactate and creatinine missing at random,
`missing: mice` or complete-case; the model, terms.json and scoring.json saved, the predictions saved), for the
contracts and the bad input. And the session's demo paper (`paper` fixture, the template's own run), scored on its
development patients and on a held-out synthetic cohort (another `clinpaper synth` seed), against
`HierarchicalLogistic.predict` on `Terms.transform` computed here. A demo run made before its model notebook
called `save_scoring` is scored from a copy to which the test adds scoring.json as that notebook would."""
import contextlib
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit

from conftest import TEMPLATES, clinpaper
from leaks import read_html, run_threshold, scan_page, source_identifiers
from clinpaper.cli import main
from clinpaper.config import load_study
from clinpaper.core import CohortError
from clinpaper.models import HierarchicalLogistic
from clinpaper.paper import Paper
from clinpaper.run import run_files
from clinpaper.score import model_card, save_scoring, score, write_model_card
from clinpaper.terms import Terms

PREDICTORS = [{"column": "age", "label": "Age (per 10 years)", "center": 65, "scale": 10},
              {"column": "male", "label": "Male sex"}, {"column": "sepsis", "label": "Sepsis at admission"},
              {"column": "lactate_max", "label": "Lactate (mmol/L)", "spline": 4},
              {"column": "map_min", "label": "Mean arterial pressure (per 10 mmHg)", "center": 75, "scale": 10},
              {"column": "creatinine_max", "label": "Creatinine (mg/dL)"},
              {"column": "temperature_max", "label": "Temperature (°C)", "center": 37}]
COLUMNS = ["person_id", "hospital", *[p["column"] for p in PREDICTORS]]


def simulate(n, *, seed, creatinine_missing=0.08):
    rng = np.random.default_rng(seed)
    age = rng.normal(64, 15, n).clip(18, 99).round(1)
    male, sepsis = rng.binomial(1, 0.58, n), rng.binomial(1, 0.25, n)
    map_min = (rng.normal(68, 11, n) - 6 * sepsis).clip(25, 140).round()
    temperature = (rng.normal(37.4, 0.7, n) + 0.5 * sepsis).clip(34, 41.5).round(1)
    lactate = np.exp(rng.normal(np.log(1.7), 0.5, n) + 0.35 * sepsis - 0.012 * (map_min - 68)).clip(0.2, 28).round(1)
    creatinine = np.exp(rng.normal(0, 0.45, n) + 0.004 * (age - 64) + 0.4 * np.log(lactate)).clip(0.2, 14).round(2)
    hospital = rng.integers(1, 7, n)
    log_odds = (-2.3 + 0.35 * (age - 65) / 10 + 0.15 * male + 0.5 * sepsis + 0.9 * np.log(lactate / 1.7)
                - 0.15 * (map_min - 75) / 10 + 0.3 * np.log(creatinine) + rng.normal(0, 0.3, 7)[hospital])
    table = pd.DataFrame({
        "person_id": np.arange(200_001, n + 200_001), "visit_occurrence_id": np.arange(700_001, n + 700_001),
        "index_datetime": pd.Timestamp("2022-03-01") + pd.to_timedelta(rng.integers(0, 500, n), unit="D"),
        "hospital": hospital, "age": age, "male": male, "sepsis": sepsis, "lactate_max": lactate, "map_min": map_min,
        "creatinine_max": creatinine, "temperature_max": temperature,
        "death_in_hospital": rng.binomial(1, expit(log_odds))})
    table.loc[rng.random(n) < 0.3 * np.where(sepsis == 1, 0.4, 1.3), "lactate_max"] = np.nan
    table.loc[rng.random(n) < creatinine_missing, "creatinine_max"] = np.nan
    return table


def make_run(folder, *, missing="mice", n=1200, seed=0, creatinine_missing=0.08, pooled=False):
    """A finished run as `clinpaper run` leaves it for `score`: the model fitted by MCMC (short chains) to the
    complete cases, saved with its terms (paper.save_model) and scoring spec (save_scoring), its predictions, a
    results.json of glued performance and a manifest of its files."""
    (folder / "data").mkdir(parents=True)
    study = yaml.safe_load((TEMPLATES / "hospital-variation" / "study.yaml").read_text())
    study["model"]["predictors"] = PREDICTORS
    study["model"]["missing"] = {"method": missing} if missing == "complete_case" else {"method": "mice", "m": 5}
    if pooled:   # a single-level model (the prediction template on a source without care sites)
        study["design"] = "prediction"
        del study["model"]["group"]
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    paper = Paper(load_study(folder / "study.yaml"), folder, glue=False)
    table = simulate(n, seed=seed, creatinine_missing=creatinine_missing)
    table.to_parquet(folder / "data" / "analysis.parquet", index=False)
    frame = paper.model_frame(table[table[paper.terms.predictors].notna().all(axis=1)])
    model = HierarchicalLogistic(outcome=paper.outcome, group=paper.model_group, predictors=paper.model_columns)
    model.fit(frame, draws=250, tune=250, chains=2, seed=paper.seed, progressbar=False)
    paper.save_model(model)
    save_scoring(paper, model)
    paper.save_predictions(model.predict(frame, seed=paper.seed).rename(columns={"mean": "risk"}))
    glued = {"n_patients": f"{n:,}", "n_events": f"{int(table['death_in_hospital'].sum()):,}", "n_groups": "6",
             "apparent_auroc": "0.733 (95% CI 0.690 to 0.771)", "apparent_calibration_slope": "1.05 (95% CI 0.84 to 1.27)",
             "apparent_brier": "0.1080 (95% CI 0.0970 to 0.1190)", "corrected_auroc": "0.716",
             "cv_auroc": "0.709 (95% CI 0.668 to 0.750)", "n_cv_folds": "6", "n_bootstrap": "200"}
    (folder / "results.json").write_text(json.dumps(
        {k: {"kind": "text", "notebook": "04_performance.ipynb", "text": v, "value": v} for k, v in glued.items()}))
    manifest = {"name": folder.name, "status": "finished", "source": {"path": "demo.duckdb", "format": "omop"}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": run_files(folder)}))
    return {"run": folder, "table": table, "model": model}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Runs 'mi' (multiple imputation) and 'cc' (complete-case) in one runs folder."
    folder = tmp_path_factory.mktemp("score") / "_runs"
    return {"folder": folder, "mi": make_run(folder / "mi"),
            "cc": make_run(folder / "cc", missing="complete_case", n=500, seed=1, creatinine_missing=0.012)}


def complete_rows(made, k=None):
    table = made["table"]
    rows = table[table[[p["column"] for p in PREDICTORS]].notna().all(axis=1)]
    return rows if k is None else rows.head(k)


def cli(*arguments):
    "`clinpaper ARGUMENTS` in this process: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in arguments])
    return code, out.getvalue(), err.getvalue()


# --- (a) the development patients get back the run's own predictions ----------------------------------------------

def test_development_patients_get_the_runs_predictions(runs):
    made = runs["mi"]
    saved = pd.read_parquet(made["run"] / "data" / "predictions.parquet")
    scores = score(made["run"], made["table"][COLUMNS], seed=0)
    # every predictor recorded and every hospital known: no random draw, so the seed does not matter
    assert np.abs(scores.loc[saved.index, ["risk", "low", "high"]].to_numpy()
                  - saved[["risk", "low", "high"]].to_numpy()).max() < 1e-12
    assert (scores.loc[saved.index, "imputed"] == "").all() and not scores["new_group"].any()
    incomplete = scores.drop(index=saved.index)
    assert len(incomplete) and (incomplete["imputed"] != "").all()   # the others imputed, none refused


# --- (d) an imputed input widens the interval ----------------------------------------------------------------------

def test_an_imputed_input_gives_a_wider_interval(runs):
    made = runs["mi"]
    spec = json.loads((made["run"] / "model" / "scoring.json").read_text())
    rule = spec["imputation"]["rules"]["lactate_max"]
    assert rule["scale"] == "log" and "outcome" not in json.dumps(rule["coefficients"])
    patients = complete_rows(made, 40)[COLUMNS]
    # each patient's lactate at the centre of its imputation rule (log scale) given the always-recorded predictors
    centre = rule["intercept"] + sum(b * patients[c] for c, b in rule["coefficients"].items())
    recorded = score(made["run"], patients.assign(lactate_max=np.exp(centre).round(2)))
    missing = score(made["run"], patients.assign(lactate_max=np.nan))
    assert (missing["imputed"] == "lactate_max").all() and (recorded["imputed"] == "").all()
    # the interval pools the risk over the plausible lactates: wider than at the rule's centre, for nearly every
    # patient (not a theorem for each: near a risk of 0, a mixture's highest-density interval can be the narrower)
    wider = (missing["high"] - missing["low"]) > (recorded["high"] - recorded["low"])
    assert wider.mean() >= 0.8, wider.mean()
    assert (missing["high"] - missing["low"]).mean() > 1.2 * (recorded["high"] - recorded["low"]).mean()
    # more imputations, the same seed: the same kind of numbers, reproducibly
    pd.testing.assert_frame_equal(score(made["run"], patients.assign(lactate_max=np.nan), imputations=5, seed=2),
                                  score(made["run"], patients.assign(lactate_max=np.nan), imputations=5, seed=2))


# --- (c) bad input: its message, nothing written, the CLI exits non-zero --------------------------------------------

BAD_INPUTS = {
    "missing column": (lambda t: t.drop(columns="map_min"),
                       "the column(s) 'map_min' (Mean arterial pressure) in mmHg that the model needs are not in"),
    "out of range": (lambda t: t.assign(age=lambda f: f["age"].where(f.index > f.index[6], 130.0)),
                     "`age` (Age): 7 rows lie outside the range the model accepts"),
    "temperature in °F": (lambda t: t.assign(temperature_max=t["temperature_max"] * 1.8 + 32),
                          "look recorded in °F, which the model does not take: it expects °C"),
    "creatinine in µmol/L": (lambda t: t.assign(creatinine_max=t["creatinine_max"] * 88.42),
                             "look recorded in µmol/L, which the model does not take: it expects mg/dL"),
    "lactate in mg/dL": (lambda t: t.assign(lactate_max=t["lactate_max"] * 9.008),
                         "look recorded in mg/dL, which the model does not take: it expects mmol/L"),
    "unknown 0/1 level": (lambda t: t.assign(sepsis=lambda f: f["sepsis"].where(f.index > f.index[2], 3)),
                          "`sepsis` (Sepsis at admission) is a 0/1 predictor, and 3 rows hold another value"),
    "0/1 as text": (lambda t: t.assign(male=t["male"].map({0: "F", 1: "M"})),
                    "`male` (Male sex) is a 0/1 predictor, and 50 rows hold another value"),
    "not a number": (lambda t: t.assign(map_min=t["map_min"].astype(object).where(t.index > t.index[3], "high")),
                     "`map_min` (Mean arterial pressure) holds 4 values that are not numbers (in 4 rows)"),
    "missing, never imputed": (lambda t: t.assign(age=lambda f: f["age"].where(f.index > f.index[1])),
                               "`age` (Age) is missing in 2 rows; it was recorded for every patient in development"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_is_written(runs, case, tmp_path):
    change, words = BAD_INPUTS[case]
    patients = change(complete_rows(runs["mi"], 50)[COLUMNS])
    out = tmp_path / "scores.csv"
    with pytest.raises(CohortError) as refused:
        score(runs["mi"]["run"], patients, out=out)
    message = str(refused.value)
    assert words in message and "nothing was scored or written" in message, message
    assert not out.exists()
    # the same table from a file, by the command line: exit 2, the message, no file
    data = tmp_path / "patients.csv"
    patients.to_csv(data, index=False)
    code, stdout, stderr = cli("score", "mi", "--runs", runs["folder"], "--data", data, "--out", out)
    assert code == 2 and words in stderr and "Traceback" not in stderr, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [data]


def test_a_complete_case_model_refuses_a_missing_value(runs, tmp_path):
    patients = complete_rows(runs["cc"], 30)[COLUMNS].copy()
    patients.iloc[:5, patients.columns.get_loc("lactate_max")] = np.nan
    out = tmp_path / "scores.parquet"
    with pytest.raises(CohortError, match="is missing in 5 rows; the model was fitted to the patients with every "
                                          "predictor recorded"):
        score(runs["cc"]["run"], patients, out=out)
    assert not out.exists()


def test_messages_show_no_value(runs):
    patients = complete_rows(runs["mi"], 50)[COLUMNS]
    with pytest.raises(CohortError) as refused:
        score(runs["mi"]["run"], patients.assign(lactate_max=patients["lactate_max"] * 9.008, age=patients["age"] + 60))
    spec = json.loads((runs["mi"]["run"] / "model" / "scoring.json").read_text())
    bounds = {f"{v:g}" for p in spec["predictors"] if p["valid"] for v in p["valid"]}
    for number in re.findall(r"\d+(?:\.\d+)?", str(refused.value).replace("(s)", "")):
        assert number in bounds or number == "9.008" or (number.isdigit() and int(number) <= 50), number


# --- the command line ----------------------------------------------------------------------------------------------

def test_cli_scores_a_table_and_says_how_many(runs, tmp_path):
    made = runs["mi"]
    patients = made["table"][COLUMNS].head(300).copy()
    patients.loc[patients.index[:20], "hospital"] = 77   # a hospital the model has not seen
    data, out = tmp_path / "patients.parquet", tmp_path / "scores.csv"
    patients.to_parquet(data, index=False)
    code, stdout, stderr = cli("score", "mi", "--runs", runs["folder"], "--data", data, "--out", out,
                               "--imputations", 8, "--seed", 3)
    assert code == 0, stderr
    written = pd.read_csv(out, keep_default_na=False, float_precision="round_trip")
    assert written.columns.tolist() == ["person_id", "risk", "low", "high", "imputed", "new_group"]
    n_imputed = int(patients[["lactate_max", "creatinine_max"]].isna().any(axis=1).sum())
    assert f"scored 300 rows of {data}" in stdout and f"{n_imputed} had an input imputed (8 imputations each)" in stdout
    assert "20 came from a hospital not in development" in stdout
    assert (written["imputed"] != "").sum() == n_imputed and written["new_group"].sum() == 20
    again = score(made["run"], data, imputations=8, seed=3)
    assert np.array_equal(again["risk"].to_numpy(), written["risk"].to_numpy())   # the CSV keeps every digit
    # the console script, outside the process: a run that does not exist
    result = clinpaper("score", "nope", "--runs", runs["folder"], "--data", data, "--out", out, check=False)
    assert result.returncode == 2 and "no run named 'nope'" in result.stderr and "Runs there: cc, mi" in result.stderr


def test_a_pooled_model_scores_as_predict_does(tmp_path):
    made = make_run(tmp_path / "_runs" / "pooled", n=600, seed=4, pooled=True)
    assert made["model"].group is None
    saved = pd.read_parquet(made["run"] / "data" / "predictions.parquet")
    scores = score(made["run"], made["table"][COLUMNS].drop(columns="hospital"))
    assert np.abs(scores.loc[saved.index, ["risk", "low", "high"]].to_numpy()
                  - saved[["risk", "low", "high"]].to_numpy()).max() < 1e-12
    assert not scores["new_group"].any()
    markdown = model_card(made["run"])[0]
    assert "random intercept" not in markdown and "drawn" not in markdown.split("## Limits")[1]


# --- (e) the model card --------------------------------------------------------------------------------------------

def test_model_card_of_a_small_run(runs, tmp_path):
    made = runs["cc"]
    markdown, page = model_card(made["run"])
    for words in ("Lactate (mmol/L)", "`lactate_max`", "mmol/L", "°C", "restricted cubic spline, 4 knots at",
                  "0.733 (95% CI 0.690 to 0.771)", "1.05 (95% CI 0.84 to 1.27)", "0.709 (95% CI 0.668 to 0.750)",
                  "clinpaper score cc --data", "refuses a patient with a missing predictor value"):
        assert words in markdown, words
    spec = json.loads((made["run"] / "model" / "scoring.json").read_text())
    few = next(p for p in spec["predictors"] if p["column"] == "creatinine_max")["n_missing"]
    assert 0 < few < 11
    row = next(line for line in markdown.splitlines() if "`creatinine_max`" in line)
    assert "| <11 |" in row and f"| {few} |" not in row
    md_path, html_path = write_model_card(made["run"], out=tmp_path)
    findings = scan_page(read_html(html_path), threshold=11,
                         forbidden=tuple(made["table"]["person_id"].astype(str)))
    assert not findings, "\n".join(map(str, findings))
    assert "http" not in html_path.read_text() and md_path.read_text() == markdown


# --- the session's demo paper: its own patients and a held-out synthetic cohort -------------------------------------

@pytest.fixture(scope="module")
def demo_run(paper, tmp_path_factory):
    """A copy of the demo paper's run 'first' that `score` can read: as run, or, if its model notebook did not yet
    call save_scoring, with scoring.json written into the copy as that notebook would (and recorded in its manifest)."""
    copy = tmp_path_factory.mktemp("demo") / "_runs" / "first"
    shutil.copytree(paper["runs"] / "first", copy)
    if not (copy / "model" / "scoring.json").is_file():
        opened = Paper(load_study(copy / "study.yaml"), copy, glue=False)
        save_scoring(opened, HierarchicalLogistic.load(copy / "model"))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"] = run_files(copy)
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.xdist_group("paper")
def test_demo_development_patients_get_the_runs_predictions(demo_run, paper):
    analysis = pd.read_parquet(demo_run / "data" / "analysis.parquet")
    saved = pd.read_parquet(demo_run / "data" / "predictions.parquet")
    terms = Terms.from_dict(json.loads((demo_run / "model" / "terms.json").read_text()))
    recorded = saved.index[analysis.loc[saved.index, terms.predictors].notna().all(axis=1)]
    assert len(recorded) > 0.5 * len(saved)
    scores = score(demo_run, analysis.loc[recorded])
    difference = np.abs(scores[["risk", "low", "high"]].to_numpy() - saved.loc[recorded, ["risk", "low", "high"]].to_numpy())
    assert difference.max() < 1e-9, difference.max()
    # from the OMOP source the run read: its cohort built again with the run's study, every patient scored (those
    # with a missing input the study imputes, imputed), those with every predictor recorded as the run predicted them
    spec = json.loads((demo_run / "model" / "scoring.json").read_text())
    unimputed = [c for c in terms.predictors if c not in ((spec.get("imputation") or {}).get("predictors") or [])]
    if analysis[unimputed].isna().any().any():   # a complete-case model: the cohort's incomplete rows are refused
        with pytest.raises(CohortError, match="is missing in"):
            score(demo_run, paper["cohort"])
        return
    from_source = score(demo_run, paper["cohort"]).set_index("visit_occurrence_id")
    assert len(from_source) == len(analysis)
    again = from_source.loc[analysis.loc[recorded, "visit_occurrence_id"], ["risk", "low", "high"]].to_numpy()
    assert np.abs(again - saved.loc[recorded, ["risk", "low", "high"]].to_numpy()).max() < 1e-9
    assert (from_source["imputed"] != "").sum() == len(analysis) - len(recorded)


@pytest.mark.xdist_group("paper")
def test_demo_model_scores_a_held_out_cohort_as_predict_does(demo_run, tmp_path):
    from clinpaper.cohort import build_cohort

    cohort = tmp_path / "held_out.duckdb"
    clinpaper("synth", "--out", cohort, "--patients", 800, "--sites", 8, "--seed", 23)
    table = build_cohort(load_study(demo_run / "study.yaml"), cohort).table
    spec = json.loads((demo_run / "model" / "scoring.json").read_text())
    terms = Terms.from_dict(json.loads((demo_run / "model" / "terms.json").read_text()))
    model = HierarchicalLogistic.load(demo_run / "model")
    # what score accepts, worked out here: values within each predictor's valid range or levels; a missing value
    # only of a predictor that the run's scoring spec imputes
    imputable = set((spec.get("imputation") or {}).get("predictors") or [])
    inside, outside, refused_missing = pd.Series(True, index=table.index), 0, 0
    for entry in spec["predictors"]:
        values = table[entry["column"]]
        ok = values.isin(entry["levels"]) if entry["binary"] else values.between(*entry["valid"])
        outside += int((~ok & values.notna()).sum())
        refused_missing += 0 if entry["column"] in imputable else int(values.isna().sum())
        inside &= ok
    accepted = table[inside]
    assert len(accepted) > 0.5 * len(table)
    if outside or refused_missing:   # from the OMOP source itself, the table is refused, the rows counted
        with pytest.raises(CohortError, match="outside the range the model accepts" if outside else "is missing in"):
            score(demo_run, cohort)
    else:   # scored from the source: the cohort built as the run built it, each recorded row as predict gives it
        from_source = score(demo_run, cohort, seed=5)
        filled = table.fillna({c: terms.spec(c)["reference"] for c in terms.predictors})
        expected = model.predict(terms.transform(filled).assign(**{model.group: table[model.group]}), seed=5)
        recorded = table[terms.predictors].notna().all(axis=1).to_numpy()
        assert np.abs(from_source[["risk", "low", "high"]].to_numpy()[recorded]
                      - expected[["mean", "low", "high"]].to_numpy()[recorded]).max() < 1e-9
    scores = score(demo_run, accepted, seed=5)
    frame = terms.transform(accepted).assign(**{model.group: accepted[model.group]})
    expected = model.predict(frame, seed=5)
    assert np.abs(scores[["risk", "low", "high"]].to_numpy() - expected[["mean", "low", "high"]].to_numpy()).max() < 1e-9
    # the same patients as another health system's: every hospital new, its effect drawn, the interval wider
    elsewhere = score(demo_run, accepted, seed=5, new_groups=True)
    assert elsewhere["new_group"].all()
    assert ((elsewhere["high"] - elsewhere["low"]) >= (scores["high"] - scores["low"]) - 1e-12).mean() > 0.95


@pytest.mark.xdist_group("paper")
def test_demo_model_card(demo_run, paper, tmp_path):
    results = json.loads((demo_run / "results.json").read_text())
    markdown, page = model_card(demo_run)
    spec = json.loads((demo_run / "model" / "scoring.json").read_text())
    for entry in spec["predictors"]:
        assert f"`{entry['column']}`" in markdown and entry["label"] in markdown
        if entry.get("unit"):
            assert entry["unit"] in markdown
    shown = [key for key in ("apparent_auroc", "apparent_calibration_slope", "apparent_calibration_intercept",
                             "apparent_brier", "cv_auroc", "corrected_auroc", "n_patients", "n_events")
             if key in results]
    assert "apparent_auroc" in shown
    for key in shown:
        assert results[key]["text"] in markdown, key
    assert "Synthetic data" in markdown   # clinpaper synth's cohort
    md_path, html_path = write_model_card(demo_run, out=tmp_path)
    findings = scan_page(read_html(html_path), threshold=run_threshold(demo_run),
                         forbidden=tuple(source_identifiers(paper["cohort"])))
    assert not findings, "\n".join(map(str, findings))
    assert 'src="data:image/png;base64,' in page or "fig_roc_calibration" not in markdown
