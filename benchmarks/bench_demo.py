"""Benchmark: the demo paper (20,000 patients, 30 hospitals) from `clinpaper run` to all three
outputs (HTML web book, DOCX, PDF).

    .venv/bin/python benchmarks/bench_demo.py [--patients 20000] [--sites 30] [--seed 7]

Synthesizes the cohort first (not timed as part of the paper), then times `clinpaper run` and
`clinpaper build` as a user would type them, and prints what it measured: wall time of each
step, the notebooks' own timings from the manifest, the machine's cores, and the size of the
cohort.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(*args, cwd=None):
    tick = time.perf_counter()
    subprocess.run([str(BIN / "clinpaper"), *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, cwd=cwd)
    return time.perf_counter() - tick


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clinpaper-bench-"))
    timed("new", "paper", "--template", "hospital-variation", cwd=work)   # the demo, as a user makes it
    project = work / "paper"
    cohort = work / "demo.duckdb"
    synth = timed("synth", "--out", cohort, "--patients", args.patients, "--sites", args.sites,
                  "--seed", args.seed)
    truth = json.loads(cohort.with_suffix(".truth.json").read_text())
    run = timed("run", "--cohort", cohort, "--name", "bench", "--out", work / "runs", cwd=project)
    build = timed("build", "bench", "--runs", work / "runs", "--out", work / "builds", cwd=project)
    manifest = json.loads((work / "runs" / "bench" / "manifest.json").read_text())
    results = json.loads((work / "runs" / "bench" / "results.json").read_text())
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"cohort: {truth['n_persons']:,} patients, {truth['n_stays']:,} ICU stays, "
          f"{truth['sites']} hospitals; analysis cohort {results['n_patients']['text']} patients")
    print(f"synth (not part of the paper): {synth:.1f} s")
    for notebook, seconds in manifest["timings"]["notebooks"].items():
        print(f"  {notebook}: {seconds:.1f} s")
    print(f"clinpaper run:   {run:.1f} s")
    print(f"clinpaper build: {build:.1f} s")
    print(f"run + build (the paper, from `clinpaper run` to HTML, DOCX and PDF): {run + build:.1f} s")


if __name__ == "__main__":
    main()
