"""Benchmark: an author's day on the demo paper, with the run cache and the incremental build.

    .venv/bin/python benchmarks/bench_iteration.py [--patients 20000] [--sites 30] [--seed 7]

In one script run, on a project made by `clinpaper new` (the hospital-variation template) and a
synthetic cohort (made first, not timed), it times the commands as an author types them:

1. cold: `clinpaper clean`, then `clinpaper run` + `clinpaper build` (an empty run cache);
2. unchanged: `run` + `build` again, nothing changed;
3. one sentence added to the Discussion of manuscript.md: `run` + `build` (the run takes every
   step from the cache and merges the prose; the build renders HTML, DOCX and PDF);
4. one figure's code changed in a late notebook (a line added to the last code cell of
   04_performance.ipynb): `run` + `build`.

For each it prints the wall time of each command, which steps the run executed and which it
took from the cache (from the run's manifest), and the peak resident memory of the largest process
the commands started (a notebook's kernel; `ru_maxrss` of the waited-for descendants).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def clinpaper(*args, cwd=None):
    tick = time.perf_counter()
    result = subprocess.run([str(BIN / "clinpaper"), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"clinpaper {' '.join(map(str, args))} failed:\n{result.stderr}")
    return time.perf_counter() - tick


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenarios", default="cold,unchanged,discussion,figure")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clinpaper-iteration-"))
    clinpaper("new", "paper", "--template", "hospital-variation", cwd=work)
    project = work / "paper"
    cohort = project / "_data" / "demo.duckdb"
    synth = clinpaper("synth", "--out", cohort, "--patients", args.patients, "--sites", args.sites,
                      "--seed", args.seed)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; cohort "
          f"{args.patients:,} patients in {args.sites} hospitals (synth {synth:.1f} s, not counted)")

    def discussion():
        page = project / "manuscript.md"
        text = page.read_text()
        assert "\n## Discussion\n" in text
        page.write_text(text.replace("\n## Discussion\n", "\n## Discussion\n\nOne sentence added by "
                                     "the author after the run.\n", 1))

    def figure():
        page = project / "04_performance.ipynb"
        notebook = json.loads(page.read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        code[-1]["source"] = ["# the label of a figure, edited\n"] + code[-1]["source"]
        page.write_text(json.dumps(notebook, indent=1))

    edits = {"cold": lambda: clinpaper("clean", cwd=project), "unchanged": lambda: None,
             "discussion": discussion, "figure": figure}
    rows = []
    for scenario in args.scenarios.split(","):
        edits[scenario]()
        run = clinpaper("run", "--name", "demo", cwd=project)
        build = clinpaper("build", "demo", cwd=project)
        manifest = json.loads((project / "_runs" / "demo" / "manifest.json").read_text())
        built = json.loads((project / "_build" / "demo" / "build.json").read_text())
        timings = manifest["timings"]["notebooks"]
        executed = manifest["cache"]["executed"]
        rows.append((scenario, run, build, executed, len(manifest["cache"]["reused"]),
                     built.get("incremental", {})))
        print(f"\n{scenario}: run {run:.1f} s + build {build:.1f} s = {run + build:.1f} s; "
              f"peak memory so far {peak_gib():.2f} GiB")
        print(f"  executed: {', '.join(f'{s} ({timings[s]:.1f} s)' for s in executed) or 'none'}; "
              f"taken from the cache: {len(manifest['cache']['reused'])}"
              + (f"; why the first executed: {manifest['steps'][executed[0]]['why']}" if executed else ""))
        print(f"  build: web book {built.get('incremental', {}).get('web_book')}, manuscript "
              f"{built.get('incremental', {}).get('manuscript')}")
    print("\n| scenario | run (s) | build (s) | run + build (s) | steps executed |")
    print("| --- | --- | --- | --- | --- |")
    for scenario, run, build, executed, reused, _ in rows:
        print(f"| {scenario} | {run:.1f} | {build:.1f} | {run + build:.1f} | "
              f"{', '.join(executed) or 'none'} ({reused} from the cache) |")
    print(f"\npeak resident memory of one process: {peak_gib():.2f} GiB")


if __name__ == "__main__":
    main()
