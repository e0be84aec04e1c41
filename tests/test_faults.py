"""Faults and careless commands: nothing lost, one run one paper, one error path.

Every test here works on a real paper project run by the real command line (papermill, a
Jupyter kernel, Jupyter Book, pandoc and Typst), made small so that a run takes seconds: one
MyST notebook that reads a flat table, writes patient-level data into the run (as every paper's
cohort step does: `data/analysis.parquet`), glues a count and, when asked, waits so that a test
can stop it in the middle. What each test checks is independent of clinpaper's own account: the
files on disk, their bytes, the exit status and the words on stderr.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, clinpaper

# one worker makes the tiny project (conftest tiny_made) once and runs these tests on copies of it
pytestmark = pytest.mark.xdist_group("faults")

TEMPLATES = Path(__file__).resolve().parents[1] / "clinpaper" / "templates" / "_common"

MANUSCRIPT = '''---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: python3, language: python, name: python3}
---

# A tiny paper

```{code-cell}
:tags: [parameters, remove-cell]

run_dir = "."
study_path = "study.yaml"
cohort_path = ""
```

```{code-cell}
:tags: [remove-cell]

import os
import time
from pathlib import Path
import pandas as pd
from clinpaper.report import Reporter
data = pd.read_csv(cohort_path)
(Path(run_dir) / "data").mkdir(exist_ok=True)
data.to_parquet(Path(run_dir) / "data" / "analysis.parquet")   # patient-level rows
paper = Reporter(run_dir, notebook="manuscript")
paper.count("n_patients", len(data))
paper.count("n_deaths", int(data["died"].sum()))
(Path(run_dir) / "started").write_text("yes")
time.sleep(float(os.environ.get("TINY_PAUSE", "0")))   # a test stops the run here
```

The cohort held {glue:text}`n_patients` patients, of whom {glue:text}`n_deaths` died.
'''

CODEBOOK = {"title": "A tiny table", "variables": {
    "person_id": {"label": "Person", "type": "id"},
    "age": {"label": "Age", "type": "continuous", "unit": "years"},
    "died": {"label": "Died", "type": "binary"}}}


def tiny_project(folder: Path, patients: int = 240) -> Path:
    "A paper project of one notebook on a flat table of `patients` rows."
    folder.mkdir(parents=True)
    shutil.copy(TEMPLATES / "_config.yml", folder / "_config.yml")
    shutil.copy(TEMPLATES / "references.bib", folder / "references.bib")
    (folder / "_toc.yml").write_text("format: jb-book\nroot: manuscript\n")
    (folder / "manuscript.md").write_text(MANUSCRIPT)
    (folder / "codebook.yaml").write_text(yaml.safe_dump(CODEBOOK))
    rows = ["person_id,age,died"] + [f"{i + 1},{40 + i % 50},{int(i % 4 == 0)}" for i in range(patients)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    study = {"title": "A tiny paper", "authors": ["A. Author"], "notebooks": ["manuscript.md"],
             "source": {"format": "flat", "path": "data.csv", "codebook": "codebook.yaml"},
             "outcome": {"id": "died", "label": "Death"},
             "parameters": {"seed": 1, "small_count_threshold": 11, "validate_against": None}}
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return folder


def cli(project, *args):
    """The command line run in this process, from `project` (no interpreter start-up and imports
    per call): a CompletedProcess with the exit status and what it printed."""
    import contextlib
    import io
    from clinpaper.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(project), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def tree(folder: Path) -> dict:
    "Every file below `folder` with its bytes: what a test compares before and after."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def refused(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture
def project(tiny_made, tmp_path):
    "A copy of the session's tiny project (conftest: runs `first` and `quick`, and the build of `first`)."
    made = tiny_made
    copy = tmp_path / "tiny"
    shutil.copytree(made, copy, symlinks=True)
    manifest = json.loads((copy / "_runs" / "first" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and "results.json" in manifest["files"]
    return copy


def start_run(project: Path, *args, pause: float = 60) -> subprocess.Popen:
    "`clinpaper run --name first` in the background, its notebook waiting `pause` seconds."
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TINY_PAUSE": str(pause)}
    return subprocess.Popen([str(BIN / "clinpaper"), "run", "--name", "first", "--force", *args], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_partial(project: Path, timeout: float = 120) -> Path:
    "The hidden partial run once its notebook has written patient-level data into it."
    deadline = time.time() + timeout
    while time.time() < deadline:
        for partial in (project / "_runs").glob(".first.partial-*"):
            if (partial / "started").exists() and (partial / "data" / "analysis.parquet").exists():
                return partial
        time.sleep(0.2)
    raise AssertionError("the run never reached its notebook")


# ---- never delete what clinpaper did not make ---------------------------------------------

def test_compare_out_onto_a_folder_of_the_users(project):
    mine = project / "thesis"
    mine.mkdir()
    (mine / "chapter1.docx").write_text("years of work")
    result = cli(project, "compare", "first", "first", "--out", mine)
    refused(result, "was not made by clinpaper", "thesis")
    assert tree(mine) == {"chapter1.docx": b"years of work"}


def test_build_out_onto_the_runs_folder(project):
    before = tree(project / "_runs" / "first")
    result = cli(project, "build", "first", "--out", project / "_runs")
    refused(result, "would replace the run itself")
    assert tree(project / "_runs" / "first") == before


def test_build_out_onto_another_run(project):
    shutil.copytree(project / "_runs" / "first", project / "_runs" / "second")
    before = tree(project / "_runs" / "second")
    other = project / "elsewhere"
    (other / "first").mkdir(parents=True)
    shutil.copytree(project / "_runs" / "second", other / "first", dirs_exist_ok=True)
    result = cli(project, "build", "first", "--out", other)
    refused(result, "is a clinpaper run folder; a build will not replace it")
    assert tree(project / "_runs" / "second") == before
    assert (other / "first" / "manifest.json").is_file()


def test_run_out_onto_a_run_or_the_project(project):
    result = cli(project, "run", "--name", "x", "--out", project / "_runs" / "first")
    refused(result, "that folder is a clinpaper run")
    result = cli(project, "run", "--name", "x", "--out", project)
    refused(result, "that is the paper project itself")
    assert not (project / "x").exists()


def test_run_over_a_users_folder_of_the_same_name(project):
    mine = project / "_runs" / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    result = cli(project, "run", "--name", "notes")
    refused(result, "was not made by clinpaper")
    assert tree(mine) == {"todo.txt": b"mine"}


def test_compare_out_replaces_its_own_comparison(project):
    out = project / "_build" / "cmp"
    clinpaper("compare", "first", "first", "--out", out, cwd=project)
    clinpaper("compare", "first", "first", "--out", out, cwd=project)   # its own: replaced
    assert (out / "index.html").is_file() and json.loads((out / ".clinpaper.json").read_text())["kind"] == "comparison"


# ---- the swap and what a killed command leaves ---------------------------------------------

def test_crash_between_the_two_renames_is_recovered(project):
    "The fallback swap's crash window (no RENAME_EXCHANGE): the next command puts the run back."
    runs = project / "_runs"
    before = tree(runs / "first")
    os.replace(runs / "first", runs / ".first.previous-0badf00d")
    result = cli(project, "status", "first")   # any later command
    assert result.returncode == 0, result.stderr
    assert "restored first from an interrupted swap" in result.stderr
    assert tree(runs / "first") == before and hidden(runs) == []


@pytest.mark.slow
def test_sigterm_removes_the_partial_run(project):
    before = tree(project / "_runs" / "first")
    process = start_run(project)
    partial = wait_for_partial(project)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated; nothing finished before was changed" in stderr and "Traceback" not in stderr
    assert not partial.exists() and hidden(project / "_runs") == []
    assert tree(project / "_runs" / "first") == before


@pytest.mark.slow
def test_ctrl_c_removes_the_partial_run(project):
    before = tree(project / "_runs" / "first")
    process = start_run(project)
    partial = wait_for_partial(project)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not partial.exists() and hidden(project / "_runs") == []
    assert tree(project / "_runs" / "first") == before


@pytest.mark.slow
def test_sigkill_leftover_is_removed_by_the_next_command(project):
    before = tree(project / "_runs" / "first")
    process = start_run(project)
    partial = wait_for_partial(project)
    process.kill()
    process.wait(timeout=60)
    assert (partial / "data" / "analysis.parquet").exists()   # patient-level data left behind
    assert tree(project / "_runs" / "first") == before
    result = cli(project, "status", "first")   # any later command
    assert result.returncode == 0, result.stderr
    assert "removed the partial first of a clinpaper command that was stopped" in result.stderr
    assert not partial.exists() and hidden(project / "_runs") == []


# ---- one run, one paper ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_runs_of_the_same_name_at_once(project):
    first = start_run(project, pause=30)
    wait_for_partial(project)
    second = clinpaper("run", "--name", "first", check=False, cwd=project, timeout=60)
    refused(second, "is being written by another clinpaper command (pid")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert hidden(project / "_runs") == []


def test_hand_edited_results_are_refused(project):
    results = project / "_runs" / "first" / "results.json"
    data = json.loads(results.read_text())
    data["n_patients"]["text"] = "9,999"
    results.write_text(json.dumps(data))
    built = tree(project / "_build" / "first")
    result = cli(project, "build", "first")
    refused(result, "does not match its manifest (changed: results.json)", "clinpaper run --name first")
    assert tree(project / "_build" / "first") == built   # the previous build stays


@pytest.mark.parametrize("harm", ["remove_figure", "add_table", "edit_notebook"])
def test_changed_run_files_are_refused(project, harm):
    run = project / "_runs" / "first"
    if harm == "remove_figure":
        (run / "data" / "analysis.parquet").unlink()
        expected = "removed: data/analysis.parquet"
    elif harm == "add_table":
        (run / "tables").mkdir(exist_ok=True)
        (run / "tables" / "extra.csv").write_text("n\n3\n")
        expected = "added: tables/extra.csv"
    else:
        notebook = run / "manuscript.ipynb"
        notebook.write_text(notebook.read_text().replace("A tiny paper", "A tidy paper"))
        expected = "changed: manuscript.ipynb"
    refused(cli(project, "build", "first"), expected)


def test_build_refuses_a_run_that_changes_under_it(project, monkeypatch):
    "A rerun that swaps in while the book is built: the build is refused and nothing replaced."
    from clinpaper import run as run_module
    built = tree(project / "_build" / "first")
    real = run_module.render_manuscript

    def rerun_meanwhile(*args, **kwargs):
        manifest = project / "_runs" / "first" / "manifest.json"
        data = json.loads(manifest.read_text())
        data["run_id"] = "another run"
        manifest.write_text(json.dumps(data))
        return real(*args, **kwargs)
    monkeypatch.setattr(run_module, "render_manuscript", rerun_meanwhile)
    monkeypatch.chdir(project)
    with pytest.raises(run_module.RunError, match="changed while it was being built"):
        run_module.build_book("first", log=lambda message: None)
    assert tree(project / "_build" / "first") == built


# ---- the one error path ----------------------------------------------------------------------

def test_runs_folder_that_cannot_be_written(project):
    "A folder clinpaper may not write to: the folder and the problem, status 2, nothing made."
    if os.geteuid() == 0:   # root writes through permission bits: use a folder the kernel refuses
        result = cli(project, "run", "--name", "second", "--out", "/sys/clinpaper_runs")
        refused(result, "/sys/clinpaper_runs", "operation not permitted")
        return
    runs = project / "_runs"
    runs.chmod(0o555)
    try:
        refused(cli(project, "run", "--name", "second"), "permission denied")
    finally:
        runs.chmod(0o755)


def test_runs_folder_on_a_file(project):
    (project / "runs_file").write_text("not a folder")
    result = cli(project, "run", "--name", "x", "--out", project / "runs_file" / "deeper")
    refused(result, "runs_file")


@pytest.mark.parametrize("name, words", [
    ("n" * 240, "bytes long; the most is 200"),
    (".first.partial-0123abcd", "starts with a dot"),
    ("a/b", "holds a path separator"),
])
def test_bad_run_names(project, name, words):
    refused(cli(project, "run", "--name", name), words)
    refused(cli(project, "build", name), words)


def test_corrupt_manifest(project):
    (project / "_runs" / "first" / "manifest.json").write_text('{"name": "first", ')
    refused(cli(project, "build", "first"), "manifest.json: not valid JSON (line 1")


def test_unfinished_run(project):
    manifest = project / "_runs" / "first" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["status"] = "running"
    manifest.write_text(json.dumps(data))
    refused(cli(project, "build", "first"), "not a finished run")


def test_validate_against_a_missing_run_is_refused_at_once(project):
    started = time.time()
    result = cli(project, "run", "--name", "ext", "-p", "validate_against=nosuchrun")
    refused(result, "`validate_against`", "nosuchrun", "is not a finished run", "Runs there: first")
    assert time.time() - started < 20   # refused before any kernel starts
    refused(cli(project, "run", "--name", "first", "-p", "validate_against=first"),
            "the run being made")


def test_disk_full_during_a_run(project, monkeypatch):
    "ENOSPC while the run writes: exit 2 with the words, the previous run intact, no partial left."
    from clinpaper import cli, run as run_module
    before = tree(project / "_runs" / "first")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(project / "_runs" / ".first.partial-x" / "results.json"))
    monkeypatch.setattr(run_module, "run_files", full)
    monkeypatch.chdir(project)
    assert cli.main(["run", "--name", "first"]) == 2
    assert tree(project / "_runs" / "first") == before and hidden(project / "_runs") == []


def test_database_error_in_a_notebook_shows_no_value(project):
    "A DuckDB error raised inside a notebook names its kind, never the value it choked on."
    page = project / "manuscript.md"
    page.write_text(page.read_text().replace(
        '(Path(run_dir) / "started").write_text("yes")',
        'import duckdb\nduckdb.connect().execute("SELECT CAST(\'MRN-0042-7781\' AS INTEGER)")'))
    result = cli(project, "run", "--name", "second")
    refused(result, "manuscript.md failed", "ConversionException", "not shown")
    assert "MRN-0042" not in result.stderr and "SELECT" not in result.stderr
    assert hidden(project / "_runs") == [] and not (project / "_runs" / "second").exists()


def test_internal_errors_are_not_passed_off_as_the_users(project, monkeypatch):
    from clinpaper import cli, run as run_module

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand for 'MRN-0042-7781'")
    monkeypatch.setattr(run_module, "run_study", bug)
    import contextlib
    import io
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli.main(["run"]) == 1
    assert "internal error (TypeError)" in stderr.getvalue() and "MRN-0042" not in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()


# ---- more faults of our own ------------------------------------------------------------------

@pytest.mark.slow
def test_data_source_changed_during_the_run(project):
    "Another program writes the cohort file while the run reads it: the run is not published."
    before = tree(project / "_runs" / "first")
    process = start_run(project, pause=4)
    wait_for_partial(project)
    with open(project / "data.csv", "a") as handle:
        handle.write("9999,50,0\n")
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 2, stderr
    assert "data.csv: the data source changed while the run read it" in stderr
    assert tree(project / "_runs" / "first") == before and hidden(project / "_runs") == []


def test_two_builds_of_the_same_name_at_once(project):
    from clinpaper.core import writer_lock
    built = tree(project / "_build" / "first")
    with writer_lock(project / "_build" / "first", what="build"):   # another build holds it
        result = cli(project, "build", "first")
    refused(result, "_build/first is being written by another clinpaper command (pid")
    assert tree(project / "_build" / "first") == built


def test_out_through_a_symlink_to_a_users_folder(project):
    mine = project / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    (project / "_build" / "linked").symlink_to(mine)
    result = cli(project, "compare", "first", "first", "--out", project / "_build" / "linked")
    refused(result, "exists and is not a folder; clinpaper will not replace it")
    assert tree(mine) == {"keep.txt": b"keep"} and (project / "_build" / "linked").is_symlink()


@pytest.mark.slow
def test_a_project_path_with_spaces_quotes_and_accents(tmp_path):
    "A folder name a user may well choose: the run and the build work, the outputs hold the counts."
    project = tiny_project(tmp_path / "Études d'été 2026" / "my paper")
    clinpaper("run", "--name", "first", cwd=project)
    result = clinpaper("build", "first", cwd=project)
    assert "240" in (project / "_build" / "first" / "html" / "manuscript.html").read_text()
    assert (project / "_build" / "first" / "manuscript.pdf").stat().st_size > 1000, result.stderr


def test_compare_refuses_an_edited_run(project):
    results = project / "_runs" / "first" / "results.json"
    results.write_text(results.read_text().replace('"240"', '"241"'))
    refused(cli(project, "compare", "first", "first"),
            "does not match its manifest (changed: results.json)")


@pytest.mark.slow
def test_sigterm_during_a_build_keeps_the_previous_build(project):
    built = tree(project / "_build" / "first")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([str(BIN / "clinpaper"), "build", "first"], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((project / "_build").glob(".first.partial-*/_source")):
        time.sleep(0.05)
    time.sleep(1)   # inside Jupyter Book now
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert hidden(project / "_build") == [] and tree(project / "_build" / "first") == built
