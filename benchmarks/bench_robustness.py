"""Robustness sweep (issue 9): does a rerun on a new cohort publish, or fail by chance?

The demo study's model (the hospital-variation template's study.yaml: its predictors, priors, sampler
settings and convergence gate) is fitted on many synthetic cohorts exactly as the paper's 03_model
notebook fits it: the cohort built from the OMOP file by `build_cohort`, the predictors transformed
by `Paper.model_frame`, the model fitted by `Paper.fit` (the study's settings and its refits' budget)
and judged by `Paper.gate`. The cohorts vary in size (500 to 20,000 patients), in the number of
hospitals (3 to 50) and in the health system (`clinpaper synth --shift`: development, external,
refresh), with seeds 7301 and up, which no other test uses.

For each cohort it prints whether the model passed the gate, after how many fits, what the first
fit failed on, and the seconds spent fitting; for a cohort that does not publish, the reason in the
data's words (hospitals, deaths, the smallest hospital) and the gate's last failure.

    .venv/bin/python benchmarks/bench_robustness.py                    # 36 cohorts, about 15 minutes
    .venv/bin/python benchmarks/bench_robustness.py --quick            # the slow test's 8 cohorts
    .venv/bin/python benchmarks/bench_robustness.py -p adapt=false     # the same without refits
    .venv/bin/python benchmarks/bench_robustness.py --few -p adapt=false   # the sweep's 3 to 5 hospitals

Results are appended to benchmarks/_out/bench_robustness.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "_out"
SIZES = (500, 800, 1500, 3000, 6000, 12000, 20000)
HOSPITALS = (3, 5, 8, 12, 20, 30, 50)
SYSTEMS = (None, "external", "refresh")


def sweep_cohorts(n: int = 36) -> list[dict]:
    """`n` cohorts that cross the sizes, the hospital counts and the health systems (each size meets
    every hospital count over the sweep); seeds 7301, 7302, ..."""
    cohorts = []
    for i in range(n):
        sites = HOSPITALS[(i * 3 + i // 7) % len(HOSPITALS)]
        cohorts.append({"patients": SIZES[i % len(SIZES)], "sites": sites, "shift": SYSTEMS[i % len(SYSTEMS)],
                        "seed": 7301 + i})
    return cohorts


# the cohort (`clinpaper synth --patients 1500 --sites 8 --seed 6 --shift external` stopped with 27
# divergent transitions) and seven of the sweep's, small to mid-sized, few to many hospitals, all three systems
QUICK = [{"patients": 1500, "sites": 8, "shift": "external", "seed": 6}] + [
    cohort for cohort in sweep_cohorts() if cohort["seed"] in (7301, 7302, 7303, 7304, 7309, 7310, 7313)]


def demo_study(overrides=()) -> dict:
    "The demo study as `clinpaper new --template hospital-variation` writes it, with `-p` overrides."
    import clinpaper
    from clinpaper.config import load_study

    return load_study(Path(clinpaper.__file__).parent / "templates" / "hospital-variation" / "study.yaml", overrides)


def fit_cohort(study: dict, cohort: dict, folder: Path) -> dict:
    "Synthesize one cohort, fit the study's model as 03_model does, and say whether it published and why not."
    from clinpaper.cohort import build_cohort
    from clinpaper.core import ConvergenceError
    from clinpaper.models import HierarchicalLogistic
    from clinpaper.paper import Paper
    from clinpaper.synth import synthesize

    source = folder / f"cohort_{cohort['seed']}.duckdb"
    synthesize(source, patients=cohort["patients"], sites=cohort["sites"], seed=cohort["seed"],
               shift=cohort["shift"], overwrite=True)
    run = folder / f"run_{cohort['seed']}"
    run.mkdir(exist_ok=True)
    paper = Paper(study, run, glue=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = build_cohort(study, source).table
    # the complete cases (the sampler's robustness is the question here, not the missing values), in the model's columns
    data = paper.model_frame(table).dropna(subset=paper.model_columns)
    model = HierarchicalLogistic(outcome=paper.outcome, group=paper.model_group, predictors=paper.model_columns)
    started = time.perf_counter()
    paper.fit(model, data, "model")
    seconds = time.perf_counter() - started
    try:
        paper.gate(model, "model", label="The hierarchical model")
        passed, error = True, None
    except ConvergenceError as failure:
        passed, error = False, str(failure)
    sizes = data.groupby(paper.model_group)[paper.outcome].agg(["size", "sum"])
    attempts = model.attempts_
    result = {**cohort, "n": len(data), "hospitals": len(sizes), "deaths": int(data[paper.outcome].sum()),
              "smallest": int(sizes["size"].min()), "passed": passed, "fits": len(attempts),
              "first_failure": attempts[0]["failed"], "changes": [a["change"] for a in attempts if a["change"]],
              "parameterizations": [a["parameterization"] for a in attempts], "seconds": round(seconds, 1)}
    if not passed:
        result["reason"] = (f"{len(sizes)} hospitals and {result['deaths']:,} deaths among {len(data):,} patients "
                            f"(the smallest hospital {result['smallest']:,} patients); the last fit failed with "
                            f"{attempts[-1]['failed']}")
        result["error"] = error
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the slow test's 8 cohorts")
    parser.add_argument("--cohorts", type=int, default=36, help="how many cohorts of the sweep (default 36)")
    parser.add_argument("--few", action="store_true", help="only the sweep's cohorts with 3 to 5 hospitals")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="a study parameter, key=value")
    args = parser.parse_args(argv)
    study = demo_study(args.overrides)
    cohorts = QUICK if args.quick else sweep_cohorts(args.cohorts)
    if args.few:
        cohorts = [cohort for cohort in cohorts if cohort["sites"] <= 5]
    print(f"{len(cohorts)} cohorts; the demo study's sampler: {study['parameters']['chains']} chains x "
          f"{study['parameters']['draws']} draws after {study['parameters']['tune']}, target_accept "
          f"{study['parameters']['target_accept']}; overrides {args.overrides or 'none'}", flush=True)
    header = f"{'patients':>8} {'hosp':>4} {'system':>11} {'seed':>5} {'deaths':>6} {'fits':>4} {'gate':>6} {'s':>6}  first fit failed with"
    print(header, flush=True)
    results, started = [], time.perf_counter()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cohort in cohorts:
            result = fit_cohort(study, cohort, Path(tmp))
            results.append(result)
            print(f"{result['patients']:>8,} {result['hospitals']:>4} {str(result['shift'] or 'development'):>11} "
                  f"{result['seed']:>5} {result['deaths']:>6,} {result['fits']:>4} "
                  f"{'passed' if result['passed'] else 'FAILED':>6} {result['seconds']:>6.1f}  "
                  f"{result['first_failure'] or '-'}" + (f"; then {'; '.join(result['changes'])}" if result["changes"] else ""),
                  flush=True)
    passed = sum(r["passed"] for r in results)
    refitted = sum(r["fits"] > 1 for r in results)
    print(f"\n{passed} of {len(results)} published ({100 * passed / len(results):.0f}%); {refitted} needed a refit; "
          f"fitting {sum(r['seconds'] for r in results):.0f} s, the whole sweep {time.perf_counter() - started:.0f} s")
    for result in results:
        if not result["passed"]:
            print(f"not published, seed {result['seed']}: {result['reason']}")
    with open(OUT / "bench_robustness.jsonl", "a") as out:
        out.write(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
                              "overrides": args.overrides, "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
