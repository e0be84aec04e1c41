"""Shared fixtures: the repository's paths and a small synthetic OMOP cohort."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDY = ROOT / "book" / "study.yaml"


def clinpaper(*args, check=True, timeout=1800):
    "Run the clinpaper console script; return the CompletedProcess."
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([str(BIN / "clinpaper"), *map(str, args)], capture_output=True,
                            text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"clinpaper {' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    "A small synthetic OMOP cohort (DuckDB) shared by the tests of a session."
    path = tmp_path_factory.mktemp("cohorts") / "small.duckdb"
    clinpaper("synth", "--out", path, "--patients", 1500, "--sites", 8, "--seed", 11)
    return path


@pytest.fixture(scope="session")
def paper(tmp_path_factory, small_cohort):
    "The demo paper run and built once on the small cohort, for the end-to-end and reader tests."
    base = tmp_path_factory.mktemp("paper")
    runs, builds = base / "runs", base / "builds"
    clinpaper("run", "--cohort", small_cohort, "--name", "first", "--out", runs)
    first_digest = tree_digest(runs / "first")
    result = clinpaper("build", "first", "--runs", runs, "--out", builds)
    return {"runs": runs, "builds": builds, "build_stdout": result.stdout,
            "cohort": small_cohort, "base": base, "first_digest": first_digest}


@pytest.fixture(scope="session")
def external_run(paper):
    """A second run, "external", beside "first": another health system's cohort, another seed,
    and an external validation of the first run's model (-p validate_against=first)."""
    cohort = paper["base"] / "external.duckdb"
    clinpaper("synth", "--out", cohort, "--patients", 1000, "--sites", 6, "--seed", 5,
              "--shift", "external")
    clinpaper("run", "--cohort", cohort, "--name", "external", "--out", paper["runs"],
              "-p", "seed=7", "-p", "validate_against=first")
    return paper["runs"] / "external"


def tree_digest(folder: Path) -> dict:
    "SHA-256 of every file below `folder`, by relative path."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
