"""Bad input at the command line: a short message naming the file and the problem, exit
status 2, no traceback, and no run folder left behind. Each test writes a fresh paper project
(in-process, in milliseconds) and runs the command inside it."""

import duckdb
import pytest
import yaml

from conftest import clinpaper


def assert_refused(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def no_runs_left(project):
    runs = project / "_runs"
    return not runs.exists() or not any(runs.iterdir())


def test_missing_cohort(scratch_project, tmp_path):
    result = clinpaper("run", "--cohort", tmp_path / "nope.duckdb", check=False, cwd=scratch_project)
    assert_refused(result, "nope.duckdb", "does not exist")
    assert no_runs_left(scratch_project)


def test_default_study_source_is_missing(scratch_project):
    "Without --cohort, the study's source.path (relative to study.yaml) is named."
    result = clinpaper("run", check=False, cwd=scratch_project / "checklists")
    assert_refused(result, str(scratch_project / "_data" / "demo.duckdb"), "does not exist",
                   "clinpaper synth --out")


def test_duckdb_without_omop_tables(scratch_project, tmp_path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE patients (id INTEGER)")
    result = clinpaper("run", "--cohort", path, check=False, cwd=scratch_project)
    assert_refused(result, "other.duckdb", "missing tables", "visit_occurrence", "person")
    assert no_runs_left(scratch_project)


def test_parquet_folder_without_tables(scratch_project, tmp_path):
    folder = tmp_path / "extract"
    folder.mkdir()
    result = clinpaper("run", "--cohort", folder, check=False, cwd=scratch_project)
    assert_refused(result, "extract", "no Parquet files")


def change_study(project, change):
    path = project / "study.yaml"
    study = yaml.safe_load(path.read_text())
    change(study)
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_unknown_key(scratch_project, small_cohort):
    path = change_study(scratch_project, lambda s: s["outcome"].update(windw="visit"))
    result = clinpaper("run", "--cohort", small_cohort, check=False, cwd=scratch_project)
    assert_refused(result, str(path), "unknown key `outcome.windw`", "did you mean `window`")
    assert no_runs_left(scratch_project)


def test_study_missing_key(scratch_project, small_cohort, tmp_path):
    "--study names the file explicitly, from outside the project."
    path = change_study(scratch_project, lambda s: s["cohort"].pop("index"))
    result = clinpaper("run", "--study", path, "--cohort", small_cohort, check=False, cwd=tmp_path)
    assert_refused(result, str(path), "missing required key `cohort.index`")


def test_study_wrong_type(scratch_project, small_cohort):
    path = change_study(scratch_project, lambda s: s["parameters"].update(chains="four"))
    result = clinpaper("run", "--cohort", small_cohort, check=False, cwd=scratch_project)
    assert_refused(result, str(path), "`parameters.chains` must be a whole number", "'four'")


def test_unknown_parameter(scratch_project, small_cohort):
    result = clinpaper("run", "--cohort", small_cohort, "-p", "chians=2", check=False,
                       cwd=scratch_project)
    assert_refused(result, "study.yaml", "`chians` names no parameter", "Did you mean `chains`?")
    assert no_runs_left(scratch_project)


def test_misspelt_glue_name_fails_before_any_kernel(scratch_project, small_cohort):
    "A manuscript that pastes a glue name no notebook makes is refused before any notebook runs."
    manuscript = scratch_project / "manuscript.md"
    text = manuscript.read_text()
    assert "{glue:text}`n_patients`" in text
    manuscript.write_text(text.replace("{glue:text}`n_patients`", "{glue:text}`n_patiens`", 1))
    line = next(number for number, content in enumerate(manuscript.read_text().splitlines(), 1)
                if "`n_patiens`" in content)
    from clinpaper.core import StudyError
    from clinpaper.run import run_study
    started = []   # run_study logs "running NOTEBOOK ..." before each notebook: none may start
    with pytest.raises(StudyError) as error:
        run_study(scratch_project / "study.yaml", cohort=small_cohort, log=started.append)
    assert not [m for m in started if m.startswith("running ")], started
    message = str(error.value)
    assert f"glue name `n_patiens` (manuscript.md, line {line}) is made by no notebook" in message
    assert "did you mean `n_patients`?" in message
    assert no_runs_left(scratch_project)
    # the command line says the same, with status 2 and no run started
    result = clinpaper("run", "--cohort", small_cohort, check=False, cwd=scratch_project)
    assert_refused(result, "`n_patiens`", f"manuscript.md, line {line}")
    assert "running 01_cohort" not in result.stderr


def test_missing_checklist_and_bibliography(scratch_project, small_cohort):
    (scratch_project / "checklists" / "tripod_ai.yaml").unlink()
    (scratch_project / "references.bib").unlink()
    result = clinpaper("run", "--cohort", small_cohort, check=False, cwd=scratch_project)
    assert_refused(result, "2 problem(s) found before running", "`checklist` names",
                   "tripod_ai.yaml, which does not exist",
                   f"_config.yml names the bibliography {scratch_project / 'references.bib'}")
    assert "running 01_cohort" not in result.stderr


@pytest.mark.parametrize("command", [["run"], ["build", "first"], ["compare", "first", "second"]])
def test_outside_any_project(tmp_path, command):
    result = clinpaper(*command, check=False, cwd=tmp_path)
    assert_refused(result, f"no paper project here (no _toc.yml in {tmp_path.resolve()} or above). "
                           "Make one with `clinpaper new DIR --template NAME` (`clinpaper new "
                           "--list` shows the templates).")


def test_debug_shows_traceback(scratch_project, tmp_path):
    result = clinpaper("--debug", "run", "--cohort", tmp_path / "nope.duckdb", check=False,
                       cwd=scratch_project)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_build_unknown_run(scratch_project, tmp_path):
    result = clinpaper("build", "nothing", "--runs", tmp_path, check=False)
    assert_refused(result, "no run named 'nothing'")
    result = clinpaper("build", "nothing", check=False, cwd=scratch_project)
    assert_refused(result, "no run named 'nothing'", str(scratch_project / "_runs"))


def test_a_column_the_analysis_table_will_not_have_fails_before_any_kernel(scratch_project, small_cohort):
    "A predictor, Table 1 variable or subgroup that names no column of the analysis table is refused at once."
    import yaml
    from clinpaper.core import StudyError
    from clinpaper.run import run_study
    study = yaml.safe_load((scratch_project / "study.yaml").read_text())
    study["model"]["predictors"].append({"column": "sepsiss", "label": "Sepsis, misspelt"})
    study["evaluation"]["subgroups"].append({"column": "age", "label": "Age"})   # continuous, no bands
    (scratch_project / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    started = []   # run_study logs "running NOTEBOOK ..." before each notebook: none may start
    with pytest.raises(StudyError) as error:
        run_study(scratch_project / "study.yaml", cohort=small_cohort, log=started.append)
    assert not [m for m in started if m.startswith("running ")], started
    message = str(error.value)
    assert "`model.predictors[10].column` names 'sepsiss', which is not a column of the analysis table " \
           "(did you mean 'sepsis'?)" in message
    assert "`evaluation.subgroups[3]` ('age') is continuous" in message
    assert no_runs_left(scratch_project)
