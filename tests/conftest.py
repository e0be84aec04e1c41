"""Shared fixtures: the repository's paths, a small synthetic OMOP cohort, and the session's paper:
a hospital-variation project scaffolded by `clinpaper new` in a temporary folder outside the
repository (its own git repository), run and built there with the commands' defaults."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEMPLATES = ROOT / "clinpaper" / "templates"
# the demo's study as the package ships it (for tests that only read a study)
STUDY = TEMPLATES / "hospital-variation" / "study.yaml"
GIT_USER = ["-c", "user.name=clinpaper tests", "-c", "user.email=tests@clinpaper.invalid"]


def clinpaper(*args, check=True, timeout=1800, cwd=ROOT, env=None, bin_dir=BIN):
    "Run the clinpaper console script (from `cwd`); return the CompletedProcess."
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    result = subprocess.run([str(Path(bin_dir) / "clinpaper"), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"clinpaper {' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def new_project(folder, template="hospital-variation", *options, bin_dir=BIN) -> Path:
    "`clinpaper new FOLDER --template TEMPLATE [options]`, run from the folder's parent."
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clinpaper("new", folder.name, "--template", template, *options, cwd=folder.parent,
              bin_dir=bin_dir)
    return folder


def git(folder, *args) -> str:
    return subprocess.run(["git", *GIT_USER, *args], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    "A small synthetic OMOP cohort (DuckDB) shared by the tests of a session."
    path = tmp_path_factory.mktemp("cohorts") / "small.duckdb"
    clinpaper("synth", "--out", path, "--patients", 1500, "--sites", 8, "--seed", 11)
    return path


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """The demo paper as a user makes it: `clinpaper new icu_paper --template hospital-variation
    --git` in a temporary folder outside the repository, with everything committed once."""
    folder = new_project(tmp_path_factory.mktemp("projects") / "icu_paper", "hospital-variation",
                         "--git")
    assert not Path(folder).resolve().is_relative_to(ROOT)
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "The paper as scaffolded")
    return folder


@pytest.fixture(scope="session")
def paper(project, small_cohort):
    """The session's paper run ("first") and built once on the small cohort, from inside the
    project with the defaults (runs in _runs/, builds in _build/), for the end-to-end, reader,
    compare and new-project tests."""
    clinpaper("run", "--cohort", small_cohort, "--name", "first", cwd=project)
    runs, builds = project / "_runs", project / "_build"
    first_digest = tree_digest(runs / "first")
    result = clinpaper("build", "first", cwd=project / "checklists")   # any folder of the project
    return {"project": project, "runs": runs, "builds": builds, "build_stdout": result.stdout,
            "build_stderr": result.stderr, "cohort": small_cohort, "base": project.parent,
            "first_digest": first_digest}


@pytest.fixture(scope="session")
def external_run(paper):
    """A second run, "external", beside "first": another health system's cohort, another seed,
    and an external validation of the first run's model (-p validate_against=first)."""
    cohort = paper["base"] / "external.duckdb"
    clinpaper("synth", "--out", cohort, "--patients", 1000, "--sites", 6, "--seed", 5,
              "--shift", "external")
    clinpaper("run", "--cohort", cohort, "--name", "external", "-p", "seed=7",
              "-p", "validate_against=first", cwd=paper["project"])
    return paper["runs"] / "external"


@pytest.fixture
def scratch_project(tmp_path):
    "A fresh hospital-variation project for one test (written in-process: milliseconds)."
    from clinpaper.new import new_project as write_project
    return write_project(tmp_path / "paper", template="hospital-variation", log=lambda m: None)


def tree_digest(folder: Path) -> dict:
    "SHA-256 of every file below `folder`, by relative path."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
