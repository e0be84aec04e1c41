"""The run cache: a rerun executes only the steps whose inputs changed and the steps after them.

A real paper project of three MyST notebooks on a flat table, run by the real command line
(papermill, Jupyter kernels): `step1` reads the table and writes a table of counts (and a scratch
file), `step2` reads what step1 wrote, removes the scratch file and glues a mean, and the
manuscript glues a sentence and uses both. Each change a user makes (prose, code, data, a
parameter, a package version, a damaged cache entry, a run killed in the middle) is made for
real, and what each test checks is on disk: which steps the manifest says were executed, what
the run log says, and the bytes of the run's files compared with those of a full run.
"""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, clinpaper
from test_faults import CODEBOOK, TEMPLATES, cli

pytestmark = pytest.mark.xdist_group("cache")

HEADER = '''---
jupytext:
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: python3, language: python, name: python3}
---
'''

PARAMETERS = '''
```{code-cell}
:tags: [parameters, remove-cell]

run_dir = "."
study_path = "study.yaml"
cohort_path = ""
seed = 1
```
'''

STEP1 = HEADER + '''
# Step 1
''' + PARAMETERS + '''
```{code-cell}
from pathlib import Path
import numpy as np
import pandas as pd
from clinpaper.report import Reporter
data = pd.read_csv(cohort_path)
run = Path(run_dir)
(run / "tables").mkdir(exist_ok=True)
bands = data.assign(band=(data["age"] // 10) * 10).groupby("band").size().rename("n").reset_index()
bands.to_csv(run / "tables" / "bands.csv", index=False)
(run / "scratch.txt").write_text("step 2 removes this")
noise = np.random.default_rng(seed).normal(size=3).round(6).tolist()
paper = Reporter(run_dir, notebook="step1")
paper.count("n_patients", len(data))
paper.text("noise", noise, ", ".join(map(str, noise)))
```

Step 1 counted the patients.
'''

STEP2 = HEADER + '''
# Step 2
''' + PARAMETERS + '''
```{code-cell}
import os
import time
from pathlib import Path
import pandas as pd
from clinpaper.report import Reporter
run = Path(run_dir)
bands = pd.read_csv(run / "tables" / "bands.csv")
mean_band = float((bands["band"] * bands["n"]).sum() / bands["n"].sum())
(run / "scratch.txt").unlink()
(run / "step2_started").write_text("yes")
time.sleep(float(os.environ.get("CACHE_PAUSE", "0")))   # a test stops the run here
paper = Reporter(run_dir, notebook="step2")
paper.number("mean_band", mean_band, digits=2)
```

Step 2 read what step 1 wrote.
'''

MANUSCRIPT = HEADER + '''
# A cached paper
''' + PARAMETERS + '''
```{code-cell}
:tags: [remove-cell]

from clinpaper.report import Reporter, read_results, reglue
reglue(run_dir)   # the values the other notebooks recorded
results = read_results(run_dir)
paper = Reporter(run_dir, notebook="manuscript")
paper.text("closing", results["n_patients"]["value"], f"All {results['n_patients']['text']} patients were counted.")
```

The cohort held {glue:text}`n_patients` patients, in age bands of mean {glue:text}`mean_band`.
{glue:text}`closing`

## Discussion

The discussion.
'''

STEPS = ["step1.ipynb", "step2.ipynb", "manuscript.ipynb"]


def cached_project(folder: Path, patients: int = 200) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(TEMPLATES / "_config.yml", folder / "_config.yml")
    shutil.copy(TEMPLATES / "references.bib", folder / "references.bib")
    (folder / "_toc.yml").write_text("format: jb-book\nroot: manuscript\nchapters:\n- file: step1\n- file: step2\n")
    for name, text in (("step1.md", STEP1), ("step2.md", STEP2), ("manuscript.md", MANUSCRIPT)):
        (folder / name).write_text(text)
    (folder / "codebook.yaml").write_text(yaml.safe_dump(CODEBOOK))
    write_data(folder, patients)
    study = {"title": "A cached paper", "authors": ["A. Author"],
             "notebooks": ["step1.md", "step2.md", "manuscript.md"], "manuscript": "manuscript.md",
             "source": {"format": "flat", "path": "data.csv", "codebook": "codebook.yaml"},
             "outcome": {"id": "died", "label": "Death"},
             "parameters": {"seed": 1, "small_count_threshold": 11, "validate_against": None}}
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return folder


def write_data(folder: Path, patients: int, offset: int = 40) -> None:
    rows = ["person_id,age,died"] + [f"{i + 1},{offset + i % 50},{int(i % 4 == 0)}" for i in range(patients)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")


def run_files(run: Path) -> dict:
    """The bytes of every file the steps wrote: not the notebooks (their cells carry timings), nor
    what the run itself writes (its manifest, and study.yaml, which names the project's paths)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.suffix != ".ipynb"
            and p.name not in ("manifest.json", ".clinpaper.json", "study.yaml")}


def manifest(project: Path, name: str) -> dict:
    return json.loads((project / "_runs" / name / "manifest.json").read_text())


def states(project: Path, name: str) -> list[str]:
    steps = manifest(project, name)["steps"]
    return [steps[s]["state"] for s in STEPS]


def run(project, name, *args):
    result = cli(project, "run", "--name", name, *args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def cached_made(tmp_path_factory):
    "The three-step project with run `a` made from a cold cache (once per worker)."
    project = cached_project(tmp_path_factory.mktemp("cached") / "paper")
    run(project, "a")
    return project


@pytest.fixture
def project(cached_made, tmp_path):
    "A copy of the project, its runs and its cache."
    copy = tmp_path / "paper"
    shutil.copytree(cached_made, copy, symlinks=True)
    return copy


def test_cold_run_executes_every_step_and_fills_the_cache(cached_made):
    steps = manifest(cached_made, "a")["steps"]
    assert [steps[s]["state"] for s in STEPS] == ["executed"] * 3
    assert steps["step1.ipynb"]["why"] == "not in the cache"
    assert steps["step2.ipynb"]["why"] == "a step before it was executed"
    entries = sorted((cached_made / "_cache" / "steps").iterdir())
    assert sorted(p.name for p in entries) == sorted(steps[s]["key"] for s in STEPS)
    assert not (cached_made / "_runs" / "a" / "scratch.txt").exists()


def test_unchanged_rerun_takes_every_step_from_the_cache(project):
    result = run(project, "b")
    assert states(project, "b") == ["reused"] * 3
    assert "3 of 3 steps taken from the cache" in result.stderr
    assert "running" not in result.stderr
    assert run_files(project / "_runs" / "b") == run_files(project / "_runs" / "a")
    assert not (project / "_runs" / "b" / "scratch.txt").exists()   # removed by step 2, as in the full run
    # the build of a run made from the cache, and `status`
    assert cli(project, "status", "b").returncode == 0
    assert cli(project, "build", "b").returncode == 0


def test_prose_edit_is_merged_without_executing(project):
    page = project / "manuscript.md"
    page.write_text(page.read_text().replace("The discussion.", "A sentence added to the Discussion."))
    step = project / "step1.md"
    step.write_text(step.read_text().replace("Step 1 counted the patients.", "Step 1 counted them all."))
    result = run(project, "b")
    assert states(project, "b") == ["reused"] * 3, result.stderr
    executed = (project / "_runs" / "b" / "manuscript.ipynb").read_text()
    assert "A sentence added to the Discussion." in executed and "The discussion." not in executed
    assert "Step 1 counted them all." in (project / "_runs" / "b" / "step1.ipynb").read_text()
    built = cli(project, "build", "b")
    assert built.returncode == 0, built.stderr
    out = project / "_build" / "b"
    assert "A sentence added to the Discussion." in (out / "html" / "manuscript.html").read_text()
    import docx
    assert "A sentence added to the Discussion." in "\n".join(
        p.text for p in docx.Document(out / "manuscript.docx").paragraphs)
    from pypdf import PdfReader
    pdf = "".join(page.extract_text() for page in PdfReader(out / "manuscript.pdf").pages)
    assert "Asentenceaddedto theDiscussion.".replace(" ", "") in pdf.replace(" ", "").replace("\n", "")


def test_code_edit_executes_that_step_and_the_later_ones_with_the_full_runs_bytes(project):
    step = project / "step2.md"
    step.write_text(step.read_text().replace("run = Path(run_dir)\n", "run = Path(run_dir)   # edited\n"))
    result = run(project, "b")
    assert states(project, "b") == ["reused", "executed", "executed"]
    steps = manifest(project, "b")["steps"]
    assert steps["step2.ipynb"]["why"] == "its code changed"
    assert steps["manuscript.ipynb"]["why"] == "a step before it was executed"
    assert "running step2.md (its code changed)" in result.stderr
    # a full run of the same sources gives the same bytes as the run made partly from the cache
    run(project, "full", "--force")
    assert states(project, "full") == ["executed"] * 3
    assert all(s["why"] == "--force" for s in manifest(project, "full")["steps"].values())
    cached, full = run_files(project / "_runs" / "b"), run_files(project / "_runs" / "full")
    assert cached == full and b"mean_band" in cached["results.json"]


def test_changed_data_with_the_same_name_executes_everything(project):
    write_data(project, 200, offset=50)
    run(project, "b")
    assert states(project, "b") == ["executed"] * 3
    assert manifest(project, "b")["steps"]["step1.ipynb"]["why"] == "the data fingerprint changed"
    before = json.loads((project / "_runs" / "a" / "results.json").read_text())["mean_band"]["value"]
    after = json.loads((project / "_runs" / "b" / "results.json").read_text())["mean_band"]["value"]
    assert after == pytest.approx(before + 10)


def test_a_parameter_executes_everything_and_says_which(project):
    result = run(project, "b", "-p", "seed=9")
    assert states(project, "b") == ["executed"] * 3
    assert "study parameters.seed: 1 → 9" in manifest(project, "b")["steps"]["step1.ipynb"]["why"]
    assert "parameters.seed: 1 → 9" in result.stderr
    noise = lambda name: json.loads((project / "_runs" / name / "results.json").read_text())["noise"]["value"]
    assert noise("b") != noise("a")
    run(project, "c")   # back to the study's own seed: from the cache again
    assert states(project, "c") == ["reused"] * 3


def test_a_package_version_change_executes_everything(project, monkeypatch):
    import clinpaper.run as run_module
    real = run_module.package_versions

    def newer(*args, **kwargs):
        return {**real(*args, **kwargs), "pymc": "99.0.0"}

    monkeypatch.setattr(run_module, "package_versions", newer)
    run(project, "b")
    assert states(project, "b") == ["executed"] * 3
    assert "package pymc" in manifest(project, "b")["steps"]["step1.ipynb"]["why"]
    assert "→ 99.0.0" in manifest(project, "b")["steps"]["step1.ipynb"]["why"]


@pytest.mark.parametrize("damage", ["changed file", "missing file", "bad entry.json"])
def test_a_damaged_entry_is_detected_and_executed_again(project, damage):
    key = manifest(project, "a")["steps"]["step2.ipynb"]["key"]
    entry = project / "_cache" / "steps" / key
    if damage == "changed file":
        (entry / "files" / "results.json").write_text("{}")
    elif damage == "missing file":
        (entry / "notebook.ipynb").unlink()
    else:
        (entry / "entry.json").write_text('{"format": 1, "key": ')
    result = run(project, "b")
    assert states(project, "b") == ["reused", "executed", "executed"]
    assert f"the cache entry of {key[:12]} was damaged" in result.stderr
    assert run_files(project / "_runs" / "b") == run_files(project / "_runs" / "a")
    run(project, "c")   # the entry was written again
    assert states(project, "c") == ["reused"] * 3


def test_a_killed_run_keeps_the_previous_run_and_the_next_run_resumes(project):
    runs = project / "_runs"
    before = run_files(runs / "a")
    assert cli(project, "clean").returncode == 0
    assert not list((project / "_cache" / "steps").glob("*"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CACHE_PAUSE": "60"}
    process = subprocess.Popen([str(BIN / "clinpaper"), "run", "--name", "a"], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while not list(runs.glob(".a.partial-*/step2_started")):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)   # the command and its kernel, without warning
    process.wait()
    assert run_files(runs / "a") == before   # the previous run, intact
    result = run(project, "a")
    assert states(project, "a") == ["reused", "executed", "executed"], result.stderr
    assert run_files(runs / "a") == before
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]
    assert not [p for p in (project / "_cache").iterdir() if p.name.startswith(".writing")]


def test_clean_and_the_size_limit(project, monkeypatch):
    result = cli(project, "clean")
    assert result.returncode == 0 and "removed 3 cached step(s)" in result.stdout
    monkeypatch.setenv("CLINPAPER_CACHE_SIZE", "1k")
    result = run(project, "b")
    assert states(project, "b") == ["executed"] * 3
    assert "larger than the cache's limit" in result.stderr
    assert not list((project / "_cache" / "steps").iterdir())
    monkeypatch.delenv("CLINPAPER_CACHE_SIZE")
    run(project, "c", "--no-cache")
    assert manifest(project, "c")["steps"]["step1.ipynb"]["why"] == "the cache is off"
    assert not list((project / "_cache" / "steps").iterdir())


def test_two_runs_at_once_share_the_cache(project):
    cli(project, "clean")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    processes = [subprocess.Popen([str(BIN / "clinpaper"), "run", "--name", name], cwd=project, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("b", "c")]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    result = run(project, "d")
    assert states(project, "d") == ["reused"] * 3, result.stderr
    assert run_files(project / "_runs" / "d") == run_files(project / "_runs" / "a")
    assert run_files(project / "_runs" / "b") == run_files(project / "_runs" / "c")


def test_the_build_is_incremental(project):
    "A build again reads no page again and keeps the DOCX and PDF; an edit redoes only what it touches."
    first = cli(project, "build", "a")
    assert first.returncode == 0 and "building the web book (every page)" in first.stderr, first.stderr
    html = project / "_build" / "a" / "html"
    pages = {p.name: p.read_bytes() for p in html.glob("*.html")}
    docx = (project / "_build" / "a" / "manuscript.docx").read_bytes()
    again = cli(project, "build", "a")
    assert "building the web book (0 changed file(s))" in again.stderr, again.stderr
    assert "the manuscript (DOCX, PDF) is unchanged since the last build: kept" in again.stderr
    assert {p.name: p.read_bytes() for p in html.glob("*.html")} == pages
    assert (project / "_build" / "a" / "manuscript.docx").read_bytes() == docx
    step = project / "step1.md"
    step.write_text(step.read_text().replace("Step 1 counted the patients.", "Step 1 counted them all."))
    edited = cli(project, "build", "a")
    assert "building the web book (1 changed file(s))" in edited.stderr, edited.stderr
    assert "unchanged since the last build: kept" in edited.stderr   # the manuscript did not change
    assert "Step 1 counted them all." in (html / "step1.html").read_text()
    page = project / "manuscript.md"
    page.write_text(page.read_text().replace("The discussion.", "A new Discussion."))
    edited = cli(project, "build", "a")
    assert "rendering the manuscript (DOCX, PDF)" in edited.stderr
    import docx as word
    assert "A new Discussion." in "\n".join(p.text for p in word.Document(project / "_build" / "a" / "manuscript.docx").paragraphs)
    assert json.loads((project / "_build" / "a" / "build.json").read_text())["incremental"] == {
        "web_book": "1 changed file(s)", "manuscript": "rendered"}
    assert cli(project, "clean").returncode == 0
    assert not (project / "_cache" / "builds").exists()


def test_status_says_what_a_rerun_would_execute(project):
    "After an edit, status names the steps a rerun executes; after the edit is undone, none."
    step = project / "step2.md"
    original = step.read_text()
    step.write_text(original.replace("run = Path(run_dir)\n", "run = Path(run_dir)   # edited\n"))
    result = cli(project, "status", "a")
    assert result.returncode == 1
    assert "a rerun executes 2 of 3 step(s) (from step2.ipynb on); the others are in the run cache" in result.stdout
    run(project, "a")
    step.write_text(original)   # undone: the run's steps are outdated, their old outputs cached
    result = cli(project, "status", "a")
    assert result.returncode == 1 and "a rerun takes it from the run cache" in result.stdout, result.stdout
    assert "a rerun executes 0 of 3 step(s)" in result.stdout
    run(project, "a")
    assert states(project, "a") == ["reused"] * 3
    assert cli(project, "status", "a").returncode == 0


def test_a_failed_step_stops_the_run_with_the_kernel_started_ahead(project):
    """A step that fails while the next step's kernel is being started ahead: the run stops at
    once with the notebook's error (no wait on the kernel started ahead), the previous run is
    intact, and the steps that succeeded are cached."""
    runs = project / "_runs"
    before = run_files(runs / "a")
    step = project / "step2.md"
    step.write_text(step.read_text().replace("mean_band = float(", "raise ValueError('boom')\nmean_band = float("))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    failed = subprocess.run([str(BIN / "clinpaper"), "run", "--name", "a"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)   # a hang fails the test
    assert failed.returncode == 2 and "step2.md failed: ValueError: boom" in failed.stderr, failed.stderr
    assert run_files(runs / "a") == before
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]
