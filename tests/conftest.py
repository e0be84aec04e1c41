"""Shared fixtures: the repository's paths and a small synthetic OMOP cohort."""
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
    result = clinpaper("build", "first", "--runs", runs, "--out", builds)
    return {"runs": runs, "builds": builds, "build_stdout": result.stdout,
            "cohort": small_cohort, "base": base}
