"""Speed benchmark of the hierarchical logistic model (issue 4).

For each size (20,000 stays in 30 hospitals; 200,000 stays in 100 hospitals; 6 predictors:
age per 10 years, male, sepsis, chf, ckd, cancer, generated with clinpaper.synth's outcome model)
it measures, on the same data and in the same run, the wall time until EVERY parameter (intercept,
the six coefficients, the between-hospital SD and every hospital's effect) has bulk ESS >= 1,000 and
r_hat <= 1.01, for

  clinpaper        HierarchicalLogistic.fit with its defaults (4 chains of 1,000 draws after 1,000 tuning
                   steps, target_accept 0.9): nutpie evaluating clinpaper's compiled log-density
                   (clinpaper.kernel), rows with equal hospital and predictors collapsed exactly into
                   binomial counts, the parameterization chosen from the data
  clinpaper-lean   the same with 2 chains (one per core) and 500 tuning steps, target_accept 0.8
  clinpaper-jax    clinpaper-lean with backend="jax": nutpie evaluating the PyMC model compiled with
                   JAX instead of clinpaper's kernel (what the kernel buys)
  bambi      bambi's default: bmb.Model("death ~ age_10 + ... + (1|hospital)", family="bernoulli").fit()
  pymc       plain pm.sample() (PyMC's NUTS, its defaults) on the same PyMC model, one row per stay

and two more designs (issue 9), each against PyMC's default sampler on the same data and model:

  clinpaper-slopes / pymc-slopes       random intercepts and a random slope of sepsis by hospital
                                       (every parameter, the 30 x 2 group values included)
  clinpaper-survival / pymc-survival   the hierarchical Weibull model of time to death with a
                                       hospital frailty (HierarchicalSurvival with its defaults; data of
                                       benchmarks/bench_survival_kernel.py: Weibull shape 1.2, frailty SD
                                       0.3, discharge censoring)

Method: a sampler starts with its default number of draws (1,000). If the
criterion fails, the draws needed are extrapolated from the smallest bulk ESS
(draws * 1.25 * 1000 / min ESS, rounded up to 500) and the sampler is rerun from scratch with that
many draws, at most `--max-attempts` times and never beyond `--max-draws`. The time reported is the
wall time of the first run that meets the criterion, everything included (building the model,
compiling, tuning, sampling) except importing the packages, which happens once before the clock
starts (its time is reported apart); failed attempts are listed but not counted. A sampler that never
meets it is reported as "not reached" with its last attempt's time (a lower bound).

    .venv/bin/python benchmarks/bench_models.py                 # both sizes, all three samplers
    .venv/bin/python benchmarks/bench_models.py --sizes 20000:30 --samplers clinpaper
    .venv/bin/python benchmarks/bench_models.py --sizes 20000:30 \
        --samplers clinpaper-slopes,pymc-slopes,clinpaper-survival,pymc-survival

Each (size, sampler) runs in its own subprocess (a clean interpreter: compile caches are not shared
between samplers); results are appended to benchmarks/_out/bench_models.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE / "_out"
PREDICTORS = ["age_10", "male", "sepsis", "chf", "ckd", "cancer"]
ESS_MIN, R_HAT_MAX = 1000, 1.01


def simulate(n: int, sites: int, seed: int) -> pd.DataFrame:
    """Stays with the study's predictors, outcome from clinpaper.synth.OUTCOME_MODEL.
    Age is in completed years (as the cohort computes it), so age_10 = (age - 65) / 10 takes
    few distinct values and rows with equal predictors in a hospital can be collapsed exactly."""
    from clinpaper.synth import COMORBIDITIES, OUTCOME_MODEL

    rng = np.random.default_rng(seed)
    size = rng.lognormal(0.0, 0.7, sites)
    effect = rng.normal(0.0, OUTCOME_MODEL["sigma_hospital"], sites)
    hospital = rng.choice(sites, size=n, p=size / size.sum())
    age = np.floor(18 + 77 * rng.beta(4.0, 1.9, n))
    age_10 = (age - 65) / 10
    df = pd.DataFrame({"hospital": [f"H{h:03d}" for h in hospital], "age_10": age_10,
                       "male": (rng.random(n) < 0.57).astype(int),
                       "sepsis": (rng.random(n) < 0.24).astype(int)})
    for name in ("chf", "ckd", "cancer"):
        _, logit65, per_10 = COMORBIDITIES[name]
        df[name] = (rng.random(n) < 1 / (1 + np.exp(-(logit65 + per_10 * age_10)))).astype(int)
    beta = OUTCOME_MODEL["beta"]
    logit = OUTCOME_MODEL["intercept"] + effect[hospital] + sum(beta[p] * df[p].to_numpy() for p in PREDICTORS)
    df["death"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def diagnostics(idata, var_names) -> dict:
    import arviz as az

    table = az.summary(idata, var_names=var_names, kind="diagnostics", round_to="none")
    worst_ess = table["ess_bulk"].idxmin()
    return {"n_parameters": len(table), "min_ess_bulk": float(table["ess_bulk"].min()),
            "min_ess_parameter": str(worst_ess), "max_r_hat": float(table["r_hat"].max()),
            "divergences": int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else None}


# clinpaper-lean: one chain per core and a shorter warm-up (fit's defaults are 4 chains, 1,000 tuning steps,
# target_accept 0.9: sturdier, and about 2.5 times the work)
LEAN_FIT = {"chains": 2, "tune": 500, "target_accept": 0.8}
FIRST_DRAWS = 1000
IMPORTS = {"clinpaper": ["clinpaper.models", "clinpaper.kernel", "nutpie", "pymc", "arviz"],
           "clinpaper-lean": ["clinpaper.models", "clinpaper.kernel", "nutpie", "pymc", "arviz"],
           "clinpaper-jax": ["clinpaper.models", "nutpie", "pymc", "arviz", "jax"],
           "bambi": ["bambi", "pymc", "arviz"], "pymc": ["clinpaper.models", "pymc", "arviz"],
           "clinpaper-slopes": ["clinpaper.models", "clinpaper.kernel", "nutpie", "pymc", "arviz"],
           "pymc-slopes": ["clinpaper.models", "pymc", "arviz"],
           "clinpaper-survival": ["clinpaper.survival", "clinpaper.kernel", "nutpie", "pymc", "arviz"],
           "pymc-survival": ["clinpaper.survival", "pymc", "arviz"]}


def run_clinpaper(df, draws, seed, settings=None):
    from clinpaper.models import HierarchicalLogistic

    model = HierarchicalLogistic("death", "hospital", PREDICTORS)
    model.fit(df, draws=draws, seed=seed, progressbar=False, **(settings or {}))
    info = {"rows_in_model": model.n_rows_model_, "chains": model.sampling_["chains"],
            "tune": model.sampling_["tune"], "target_accept": model.sampling_["target_accept"],
            "backend": model.sampling_["backend"], "parameterization": model.parameterization_,
            **model.timings_}
    return model.idata_, ["intercept", "beta", "sigma_group", "group_effect"], info


def run_clinpaper_lean(df, draws, seed):
    return run_clinpaper(df, draws, seed, LEAN_FIT)


def run_clinpaper_jax(df, draws, seed):
    return run_clinpaper(df, draws, seed, {**LEAN_FIT, "backend": "jax"})


def run_bambi(df, draws, seed):
    import bambi as bmb

    formula = "death ~ " + " + ".join(PREDICTORS) + " + (1|hospital)"
    model = bmb.Model(formula, df, family="bernoulli")
    idata = model.fit(draws=draws, random_seed=seed, progressbar=False)
    names = [name for name in idata.posterior.data_vars]
    return idata, names, {"rows_in_model": len(df), "chains": int(idata.posterior.sizes["chain"]),
                          "formula": formula}


def run_pymc(df, draws, seed):
    import pymc as pm
    from clinpaper.models import HierarchicalLogistic

    spec = HierarchicalLogistic("death", "hospital", PREDICTORS)
    design = spec._design(df, collapse=False)
    model = spec.build_model(design)
    with model:
        idata = pm.sample(draws=draws, random_seed=seed, progressbar=False, compute_convergence_checks=False)
    return idata, ["intercept", "beta", "sigma_group", "group_effect"], {
        "rows_in_model": len(df), "chains": int(idata.posterior.sizes["chain"])}


SLOPES = ["sepsis"]


def run_clinpaper_slopes(df, draws, seed):
    from clinpaper.models import HierarchicalLogistic

    model = HierarchicalLogistic("death", "hospital", PREDICTORS, random_slopes=SLOPES)
    model.fit(df, draws=draws, seed=seed, progressbar=False)
    return model.idata_, ["intercept", "beta", "sigma_group", "sigma_slope", "group_effect", "group_slope"], {
        "rows_in_model": model.n_rows_model_, "chains": model.sampling_["chains"], "backend": model.sampling_["backend"],
        "parameterization": model.parameterization_, **model.timings_}


def run_pymc_slopes(df, draws, seed):
    import pymc as pm
    from clinpaper.models import HierarchicalLogistic

    spec = HierarchicalLogistic("death", "hospital", PREDICTORS, random_slopes=SLOPES)
    model = spec.build_model(spec._design(df, collapse=False))   # the form clinpaper chooses, one row per stay
    with model:
        idata = pm.sample(draws=draws, random_seed=seed, progressbar=False, compute_convergence_checks=False)
    return idata, ["intercept", "beta", "sigma_group", "sigma_slope", "group_effect", "group_slope"], {
        "rows_in_model": len(df), "chains": int(idata.posterior.sizes["chain"])}


def survival_data(df):
    "The survival rows of the size: bench_survival_kernel's simulation with the same patients and hospitals."
    from bench_survival_kernel import simulate as simulate_survival

    return simulate_survival(len(df), df["hospital"].nunique(), 7)


SURVIVAL_PREDICTORS = ["age_10", "male", "sepsis", "chf", "ckd", "cancer"]
SURVIVAL_NAMES = ["intercept", "shape", "beta", "sigma_group", "group_effect"]


def run_clinpaper_survival(df, draws, seed):
    from clinpaper.survival import HierarchicalSurvival

    data = survival_data(df)
    model = HierarchicalSurvival("days", "died", "hospital", SURVIVAL_PREDICTORS)
    model.fit(data, draws=draws, seed=seed, progressbar=False)
    return model.idata_, SURVIVAL_NAMES, {"rows_in_model": len(data), "chains": model.sampling_["chains"],
                                          "backend": model.sampling_["backend"], **model.timings_}


def run_pymc_survival(df, draws, seed):
    import pymc as pm
    from clinpaper.survival import HierarchicalSurvival

    data = survival_data(df)
    spec = HierarchicalSurvival("days", "died", "hospital", SURVIVAL_PREDICTORS)
    model = spec.build_model(spec._design(data), predictor_means=data[SURVIVAL_PREDICTORS].to_numpy(dtype=float).mean(axis=0))
    with model:
        idata = pm.sample(draws=draws, random_seed=seed, progressbar=False, compute_convergence_checks=False)
    return idata, SURVIVAL_NAMES, {"rows_in_model": len(data), "chains": int(idata.posterior.sizes["chain"])}


RUNNERS = {"clinpaper": run_clinpaper, "clinpaper-lean": run_clinpaper_lean, "clinpaper-jax": run_clinpaper_jax,
           "bambi": run_bambi, "pymc": run_pymc, "clinpaper-slopes": run_clinpaper_slopes,
           "pymc-slopes": run_pymc_slopes, "clinpaper-survival": run_clinpaper_survival,
           "pymc-survival": run_pymc_survival}


def child(args) -> None:
    "One (size, sampler): attempts until the criterion holds; prints one JSON line."
    import logging

    warnings.filterwarnings("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    logging.getLogger("bambi").setLevel(logging.ERROR)
    import importlib

    n, sites = (int(v) for v in args.size.split(":"))
    df = simulate(n, sites, args.seed)
    begin = time.perf_counter()
    for name in IMPORTS[args.sampler]:
        importlib.import_module(name)
    import_seconds = round(time.perf_counter() - begin, 1)
    draws, attempts, started = FIRST_DRAWS, [], time.perf_counter()
    for _ in range(args.max_attempts):
        begin = time.perf_counter()
        idata, names, info = RUNNERS[args.sampler](df, draws, args.seed)
        seconds = time.perf_counter() - begin
        check = diagnostics(idata, names)
        passed = check["min_ess_bulk"] >= ESS_MIN and check["max_r_hat"] <= R_HAT_MAX
        attempts.append({"draws": draws, "seconds": round(seconds, 1), "passed": passed, **check, **info})
        print(json.dumps(attempts[-1]), file=sys.stderr, flush=True)
        if passed or draws >= args.max_draws or time.perf_counter() - started > args.max_seconds:
            break
        needed = draws * 1.25 * ESS_MIN / max(check["min_ess_bulk"], 1.0)
        draws = int(min(args.max_draws, max(draws * 1.5, math.ceil(needed / 500) * 500)))
    final = attempts[-1]
    result = {"size": args.size, "stays": n, "hospitals": sites, "events": int(df["death"].sum()),
              "sampler": args.sampler, "reached": final["passed"], "seconds": final["seconds"],
              "import_seconds": import_seconds, "attempts": attempts}
    print(json.dumps(result))


def machine() -> str:
    import nutpie
    import pymc

    try:
        import bambi
        bambi_version = bambi.__version__
    except ImportError:
        bambi_version = "not installed"
    return (f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
            f"PyMC {pymc.__version__}, nutpie {nutpie.__version__}, bambi {bambi_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000:30,200000:100", help="STAYS:HOSPITALS, comma-separated")
    parser.add_argument("--samplers", default="clinpaper,clinpaper-lean,clinpaper-jax,bambi,pymc")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--max-draws", type=int, default=8000)
    parser.add_argument("--max-seconds", type=float, default=1800,
                        help="no new attempt starts after this many seconds for one (size, sampler)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--sampler", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    OUT.mkdir(exist_ok=True)
    log = OUT / "bench_models.jsonl"
    print(machine(), flush=True)
    results = []
    for size in args.sizes.split(","):
        for sampler in args.samplers.split(","):
            command = [sys.executable, __file__, "--child", "--size", size, "--sampler", sampler,
                       "--seed", str(args.seed), "--max-attempts", str(args.max_attempts),
                       "--max-draws", str(args.max_draws), "--max-seconds", str(args.max_seconds)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{size} {sampler}: failed\n{done.stderr[-3000:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["machine"] = machine()
            with log.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            results.append(result)
            last = result["attempts"][-1]
            print(f"{size:>12} {sampler:>14}: {'reached' if result['reached'] else 'NOT reached'} in "
                  f"{result['seconds']:.1f} s (draws {last['draws']} x {last['chains']} chains, min ESS "
                  f"{last['min_ess_bulk']:.0f} [{last['min_ess_parameter']}], max r_hat {last['max_r_hat']:.3f}, "
                  f"{last['divergences']} divergences; {len(result['attempts'])} attempt(s); imports "
                  f"{result['import_seconds']:.1f} s, not counted)", flush=True)
    for size in args.sizes.split(","):
        by = {r["sampler"]: r for r in results if r["size"] == size}
        for ours, other in (("clinpaper-slopes", "pymc-slopes"), ("clinpaper-survival", "pymc-survival")):
            if ours in by and other in by:
                bound = "" if by[other]["reached"] else ">= "
                print(f"{size}: {other} / {ours} = {bound}{by[other]['seconds'] / by[ours]['seconds']:.1f}x")
        for ours in ("clinpaper", "clinpaper-lean", "clinpaper-jax"):
            for other in ("bambi", "pymc"):
                if ours in by and other in by:
                    bound = "" if by[other]["reached"] else ">= "
                    print(f"{size}: {other} / {ours} = {bound}{by[other]['seconds'] / by[ours]['seconds']:.1f}x")


if __name__ == "__main__":
    main()
