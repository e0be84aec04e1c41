"""Bad input at the command line: a short message naming the file and the problem, exit
status 2, no traceback, and no run folder left behind."""
import duckdb
import yaml

from conftest import STUDY, clinpaper


def assert_refused(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def no_runs_left(runs):
    return not runs.exists() or not any(runs.iterdir())


def test_missing_cohort(tmp_path):
    runs = tmp_path / "runs"
    result = clinpaper("run", "--cohort", tmp_path / "nope.duckdb", "--out", runs, check=False)
    assert_refused(result, "nope.duckdb", "does not exist")
    assert no_runs_left(runs)


def test_duckdb_without_omop_tables(tmp_path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE patients (id INTEGER)")
    runs = tmp_path / "runs"
    result = clinpaper("run", "--cohort", path, "--out", runs, check=False)
    assert_refused(result, "other.duckdb", "missing tables", "visit_occurrence", "person")
    assert no_runs_left(runs)


def test_parquet_folder_without_tables(tmp_path):
    folder = tmp_path / "extract"
    folder.mkdir()
    result = clinpaper("run", "--cohort", folder, "--out", tmp_path / "runs", check=False)
    assert_refused(result, "extract", "no Parquet files")


def write_study(tmp_path, change):
    study = yaml.safe_load(STUDY.read_text())
    change(study)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    # the study's notebooks are found relative to the study file
    for notebook in study.get("notebooks", []):
        (tmp_path / notebook).write_text((STUDY.parent / notebook).read_text())
    return path


def test_study_unknown_key(tmp_path, small_cohort):
    path = write_study(tmp_path, lambda s: s["outcome"].update(windw="visit"))
    result = clinpaper("run", "--study", path, "--cohort", small_cohort, "--out",
                       tmp_path / "runs", check=False)
    assert_refused(result, str(path), "unknown key `outcome.windw`", "did you mean `window`")
    assert no_runs_left(tmp_path / "runs")


def test_study_missing_key(tmp_path, small_cohort):
    path = write_study(tmp_path, lambda s: s["cohort"].pop("index"))
    result = clinpaper("run", "--study", path, "--cohort", small_cohort, "--out",
                       tmp_path / "runs", check=False)
    assert_refused(result, str(path), "missing required key `cohort.index`")


def test_study_wrong_type(tmp_path, small_cohort):
    path = write_study(tmp_path, lambda s: s["parameters"].update(chains="four"))
    result = clinpaper("run", "--study", path, "--cohort", small_cohort, "--out",
                       tmp_path / "runs", check=False)
    assert_refused(result, str(path), "`parameters.chains` must be a whole number", "'four'")


def test_unknown_parameter(tmp_path, small_cohort):
    result = clinpaper("run", "--cohort", small_cohort, "--out", tmp_path / "runs",
                       "-p", "chians=2", check=False)
    assert_refused(result, "study.yaml", "`chians` names no parameter", "Did you mean `chains`?")
    assert no_runs_left(tmp_path / "runs")


def test_debug_shows_traceback(tmp_path):
    result = clinpaper("--debug", "run", "--cohort", tmp_path / "nope.duckdb", check=False)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_build_unknown_run(tmp_path):
    result = clinpaper("build", "nothing", "--runs", tmp_path, check=False)
    assert_refused(result, "no run named 'nothing'")
