"""A bad study file or a bad `-p`: refused by `clinpaper run` in its first seconds, before any notebook
runs, with a StudyError (exit status 2 at the command line) whose message names the key. One case per
class of mistake; each is tried on a fresh paper project written in-process (milliseconds), and none
may leave a run folder behind."""
import time
from pathlib import Path

import pytest
import yaml

from clinpaper.cli import main
from clinpaper.config import load_study
from clinpaper.core import StudyError
from clinpaper.run import run_study

TEMPLATES = Path(__file__).resolve().parents[1] / "clinpaper" / "templates"


def new_project(folder: Path, template: str) -> Path:
    from clinpaper.new import new_project as write_project
    return write_project(folder / "paper", template=template, log=lambda m: None)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    "A small synthetic OMOP cohort: with it, a valid study would start its notebooks."
    path = tmp_path_factory.mktemp("cohort") / "demo.duckdb"
    assert main(["synth", "--out", str(path), "--patients", "300", "--sites", "3", "--seed", "5"]) == 0
    return path


def edit(project: Path, change) -> Path:
    path = project / "study.yaml"
    study = yaml.safe_load(path.read_text())
    change(study)
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    return path


def refused(project: Path, cohort=None, overrides=()) -> str:
    "Run the project's study; assert it is refused in seconds, with nothing written; the message."
    started = time.time()
    with pytest.raises(StudyError) as error:
        run_study(project / "study.yaml", cohort=cohort, name="bad", overrides=list(overrides),
                  log=lambda message: pytest.fail(f"a notebook started: {message}"))
    assert time.time() - started < 20, "the check came late"
    assert not (project / "_runs").exists(), "a run folder was made"
    return str(error.value)


# --- every -p is checked against its parameter's range ---------------------------------
OVERRIDES = [
    ("small_count_threshold=0", "`parameters.small_count_threshold` must be a whole number from 2"),
    ("small_count_threshold=1", "`parameters.small_count_threshold`"),
    ("seed=-1", "`parameters.seed` must be a whole number from 0 to 4294967295"),
    (f"seed={2**32}", "`parameters.seed`"),
    ("seed=", "`parameters.seed` must be a whole number, got nothing"),
    ("draws=0", "`parameters.draws` must be a whole number from 1"),
    ("tune=0", "`parameters.tune`"),
    ("chains=0", "`parameters.chains` must be a whole number from 1 to 64"),
    ("target_accept=1.5", "`parameters.target_accept` must be a number strictly between 0 and 1"),
    ("target_accept=0", "`parameters.target_accept`"),
    ("r_hat_max=0.9", "`parameters.r_hat_max` must be a number greater than 1"),
    ("divergences_max=-1", "`parameters.divergences_max`"),
    ("bootstrap=5", "`parameters.bootstrap` must be a whole number from 10"),
    ("ess_min=.nan", "`parameters.ess_min` must be a finite number"),
    ("draws=ten", "`parameters.draws` must be a whole number"),
    ("draws=10", "`parameters.ess_min` (400) is more than the draws made"),
    ("validate_against=../first", "`parameters.validate_against` must be the name of a run"),
    ("drawz=10", "`drawz` names no parameter"),
]


@pytest.mark.parametrize("override, fragment", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_override_out_of_range(tmp_path, cohort, override, fragment):
    message = refused(new_project(tmp_path, "hospital-variation"), cohort, [override])
    assert f"-p {override}" in message and fragment in message, message


def test_override_given_twice(tmp_path):
    message = refused(new_project(tmp_path, "hospital-variation"), overrides=["seed=1", "seed=2"])
    assert "`seed` is set twice (also -p seed=1)" in message


# --- the study file's own rules ---------------------------------------------------------
def same_id(section):
    def change(study):
        items = section(study)
        items.append(dict(items[0]))
    return change


STUDY_CASES = [
    ("window_negative", lambda s: s["features"].update(measurement_window_hours=-24),
     "`features.measurement_window_hours` must be a number greater than 0"),
    ("window_zero", lambda s: s["features"].update(measurement_window_hours=0),
     "`features.measurement_window_hours`"),
    ("criteria_same_id", lambda s: s["cohort"]["criteria"][1].update(id="adult"),
     "`cohort.criteria` holds id 'adult' twice"),
    ("measurements_same_id", same_id(lambda s: s["features"]["measurements"]),
     "`features.measurements` holds id 'heart_rate' twice"),
    ("conditions_same_id", same_id(lambda s: s["features"]["conditions"]),
     "`features.conditions` holds id 'sepsis' twice"),
    ("predictor_twice", same_id(lambda s: s["model"]["predictors"]),
     "`model.predictors` holds column 'age' twice"),
    ("subgroup_twice", same_id(lambda s: s["evaluation"]["subgroups"]),
     "`evaluation.subgroups` holds column 'sex' twice"),
    ("table_one_twice", lambda s: s["describe"]["table_one"]["variables"].append("age"),
     "`describe.table_one.variables` holds 'age' twice"),
    ("notebooks_empty", lambda s: s.update(notebooks=[]), "`notebooks` must be a list of at least 1 item"),
    ("notebooks_twice", lambda s: s["notebooks"].insert(0, s["notebooks"][0]), "`notebooks` holds '01_cohort.ipynb' twice"),
    ("bands_not_increasing", lambda s: s["evaluation"]["subgroups"][1].update(bands=[18, 65, 65, 80]),
     "`evaluation.subgroups[1].bands` must be a list of strictly increasing numbers"),
    ("valid_low_above_high", lambda s: s["features"]["measurements"][0].update(valid=[300, 20]),
     "`features.measurements[0].valid` must be a list of strictly increasing numbers"),
    ("valid_low_equals_high", lambda s: s["features"]["measurements"][0].update(valid=[20, 20]),
     "`features.measurements[0].valid`"),
    ("lookback_negative", lambda s: s["features"]["conditions"][1].update(lookback_days=-30),
     "`features.conditions[1].lookback_days` must be a whole number of at least 0"),
    ("empty_label", lambda s: s["outcome"].update(label=""), "`outcome.label` must be non-empty text"),
    ("blank_id", lambda s: s["features"]["conditions"][0].update(id=" "),
     "`features.conditions[0].id` must be non-empty text"),
    ("empty_title", lambda s: s.update(title=""), "`title` must be non-empty text"),
    ("outcome_window_reversed", lambda s: s["outcome"].update(window={"start_day": 30, "end_day": 1}),
     "`outcome.window.start_day` (30) is after `outcome.window.end_day` (1)"),
    ("outcome_window_visit_word", lambda s: s["outcome"].update(window="stay"), "`outcome.window` must be 'visit'"),
    ("criterion_min_above_max", lambda s: s["cohort"]["criteria"][0].update(max=16),
     "`cohort.criteria[0]`: `min` (18) is greater than `max` (16)"),
    ("criterion_negative_hours", lambda s: s["cohort"]["criteria"][1].update(min_hours=-4),
     "`cohort.criteria[1].min_hours` must be a number of at least 0"),
    ("column_made_twice", lambda s: s["features"]["conditions"][0].update(id="heart_rate_min"),
     "the analysis column 'heart_rate_min' would be made twice"),
    ("concept_zero", lambda s: s["features"]["conditions"][0].update(concepts=[0]),
     "`features.conditions[0].concepts[0]` must be a whole number of at least 1"),
    ("no_concepts", lambda s: s["features"]["measurements"][0].update(units=[]),
     "`features.measurements[0].units` must be a list of at least 1 item"),
    ("scale_zero", lambda s: s["model"]["predictors"][0].update(scale=0),
     "`model.predictors[0].scale` must be a number greater than 0"),
    ("aggregate_unknown", lambda s: s["features"]["measurements"][0].update(aggregate=["median"]),
     "`features.measurements[0].aggregate[0]` must be one of"),
    ("levels_three", lambda s: s["outcome"].update(levels=["a", "b", "c"]),
     "`outcome.levels` must be a list of exactly 2 items"),
    ("threshold_in_file", lambda s: s["parameters"].update(small_count_threshold=0),
     "`parameters.small_count_threshold`"),
    ("seed_in_file", lambda s: s["parameters"].update(seed=-1), "`parameters.seed`"),
    ("step_too_wide", lambda s: s["evaluation"]["decision_curve"].update(step=0.8),
     "`evaluation.decision_curve.step` (0.8) is wider"),
    ("median_odds_ratio_below_1", lambda s: s["model"].update(relevant_median_odds_ratio=0.5),
     "`model.relevant_median_odds_ratio` must be a number greater than 1"),
    ("predictor_missing", lambda s: s["model"]["predictors"][3].update(column="chff"),
     "`model.predictors[3].column` names 'chff', which is not a column"),
    ("outcome_as_predictor", lambda s: s["model"]["predictors"].append({"column": "death_in_hospital", "label": "Death"}),
     "`model.predictors[10].column` is 'death_in_hospital', the outcome"),
    ("follow_up_time_as_feature", lambda s: s["baselines"]["features"].append("los_days"),
     "is 'los_days', the outcome's follow-up time (`outcome.time`), known only at the end"),
    ("criterion_type_unknown", lambda s: s["cohort"]["criteria"][0].update(type="agee"),
     "`cohort.criteria[0].type` is 'agee', not a criterion type (did you mean `age`?)"),
    ("criterion_without_bound", lambda s: s["cohort"]["criteria"][1].pop("min_hours"),
     "`cohort.criteria[1]` (type visit_length) needs `min_hours`, `max_hours` or both"),
    ("criterion_domain_unknown", lambda s: s["cohort"]["criteria"].append(
        {"id": "gi", "label": "GI bleed before", "type": "no_prior", "domain": "procedure", "concepts": [192671]}),
     "`cohort.criteria[2].domain` must be one of condition, drug"),
    ("measurements_without_visit", lambda s: s["cohort"]["index"].update(event="condition"),
     "`features.measurements` (a window after admission) need a visit index event"),
    ("outcome_condition_without_concepts", lambda s: s["outcome"].update(type="condition"),
     "missing required key `outcome.concepts`"),
]


@pytest.mark.parametrize("change, fragment", [c[1:] for c in STUDY_CASES], ids=[c[0] for c in STUDY_CASES])
def test_bad_study_refused_before_any_notebook(tmp_path, cohort, change, fragment):
    project = new_project(tmp_path, "hospital-variation")
    edit(project, change)
    message = refused(project, cohort)
    assert fragment in message, message


COMPARATIVE_CASES = [
    ("trim_outside_0_1", lambda s: s["analysis"].update(trim=[-0.1, 0.9]), "`analysis.trim[0]` must be a number from 0 to 1"),
    ("trim_reversed", lambda s: s["analysis"].update(trim=[0.9, 0.1]), "`analysis.trim` must be a list of strictly increasing"),
    ("treated_unknown", lambda s: s["analysis"].update(treated="ibuprofen"), "`analysis.treated` is 'ibuprofen'"),
    ("exposures_same_id", same_id(lambda s: s["cohort"]["exposures"]), "`cohort.exposures` holds id 'celecoxib' twice"),
    ("covariates_empty", lambda s: s["analysis"].update(covariates=[]), "`analysis.covariates` must be a list of at least 1"),
]


@pytest.mark.parametrize("change, fragment", [c[1:] for c in COMPARATIVE_CASES], ids=[c[0] for c in COMPARATIVE_CASES])
def test_bad_comparative_study(tmp_path, change, fragment):
    project = new_project(tmp_path, "comparative")
    edit(project, change)
    assert fragment in refused(project)


# --- the file itself ------------------------------------------------------------------
def test_study_file_not_utf8(tmp_path):
    project = new_project(tmp_path, "hospital-variation")
    path = project / "study.yaml"
    path.write_bytes(path.read_text().replace("°C", "°C").encode("latin-1"))
    message = refused(project)
    assert str(path) in message and "not UTF-8 text" in message and "line" in message


def test_study_key_given_twice(tmp_path):
    project = new_project(tmp_path, "hospital-variation")
    path = project / "study.yaml"
    path.write_text(path.read_text().replace("  chains: 4", "  chains: 4\n  chains: 2"))
    assert "the key 'chains' is given twice in one mapping" in refused(project)


# --- at the command line: exit status 2, the key named, no traceback ----------------------
CLI_CASES = [
    (["-p", "seed=-1"], None, "`parameters.seed`"),
    (["-p", "small_count_threshold=0"], None, "`parameters.small_count_threshold`"),
    (["-p", "chains=0"], None, "`parameters.chains`"),
    ([], lambda s: s["features"].update(measurement_window_hours=-24), "`features.measurement_window_hours`"),
    ([], lambda s: s.update(notebooks=[]), "`notebooks`"),
]


@pytest.mark.parametrize("arguments, change, fragment", CLI_CASES, ids=[c[2].strip("`") + str(i) for i, c in enumerate(CLI_CASES)])
def test_command_line_exit_status_2(tmp_path, cohort, capsys, arguments, change, fragment):
    project = new_project(tmp_path, "hospital-variation")
    if change:
        edit(project, change)
    started = time.time()
    status = main(["run", "--study", str(project / "study.yaml"), "--cohort", str(cohort), "--name", "bad", *arguments])
    error = capsys.readouterr().err
    assert status == 2 and fragment in error and "Traceback" not in error, (status, error)
    assert time.time() - started < 20 and not (project / "_runs").exists()


def test_every_template_study_validates():
    "The rules hold for the study files that `clinpaper new` writes (and with their usual -p)."
    studies = sorted(TEMPLATES.glob("*/study*.yaml"))
    assert len(studies) >= 6
    for path in studies:
        study = load_study(path)
        if "draws" in study["parameters"]:
            load_study(path, ["draws=500", "tune=500", "chains=2", "bootstrap=50", "r_hat_max=1.05", "ess_min=50"])
