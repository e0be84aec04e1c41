"""Centered, non-centered or partially non-centered: what each costs on the same data (issue 9, item 1).

For each data set it fits HierarchicalLogistic three times, on the same data with the same seed and
sampler settings, with parameterization="centered", "non-centered" and "auto" (partial non-centering
per group, the weights chosen from the data by `choose_centering`), and prints for each fit the
smallest bulk ESS (and of which parameter), the divergent transitions and the sampling time.

Data sets (all simulated; the truth is known):

  STAYS:HOSPITALS   benchmarks/bench_models.py's cohorts: clinpaper.synth's outcome model, between-hospital
                    SD 0.35, six predictors, hospital sizes log-normal (sdlog 0.7), event rate 13 to 14%
  slopes            the issue's case: 30 hospitals of 1,000 stays, a random slope for a standard-normal
                    predictor whose between-hospital SD is 0.05 (random intercepts SD 0.4)
  few-small         8 hospitals of 40 stays, between-hospital SD 0.05 (a funnel for the centered form)

Sampler: 2 chains of 1,000 draws after 500 tuning steps, target_accept 0.8, nutpie on clinpaper's
kernel (`--chains`, `--draws`, `--tune`, `--target-accept` change it).

    .venv/bin/python benchmarks/bench_centering.py
    .venv/bin/python benchmarks/bench_centering.py --data 20000:30,slopes --seeds 1,2
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import PREDICTORS, simulate  # noqa: E402

FORMS = ("centered", "non-centered", "auto")


def slopes_data(seed: int) -> tuple[pd.DataFrame, list, list]:
    rng = np.random.default_rng(seed)
    groups, per = 30, 1000
    hospital = np.repeat(np.arange(groups), per)
    x = rng.standard_normal(groups * per)
    logit = -1.0 + rng.normal(0, 0.4, groups)[hospital] + (0.5 + rng.normal(0, 0.05, groups)[hospital]) * x
    df = pd.DataFrame({"hospital": [f"H{h:02d}" for h in hospital], "x": x,
                       "death": (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)})
    return df, ["x"], ["x"]


def few_small_data(seed: int) -> tuple[pd.DataFrame, list, list]:
    rng = np.random.default_rng(seed)
    hospital = np.repeat(np.arange(8), 40)
    x = rng.standard_normal(len(hospital))
    logit = -1.0 + 0.5 * x + rng.normal(0, 0.05, 8)[hospital]
    df = pd.DataFrame({"hospital": [f"H{h:02d}" for h in hospital], "x": x,
                       "death": (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(int)})
    return df, ["x"], []


def data(name: str, seed: int):
    if name == "slopes":
        return slopes_data(seed)
    if name == "few-small":
        return few_small_data(seed)
    n, sites = (int(v) for v in name.split(":"))
    return simulate(n, sites, seed), PREDICTORS, []


def fit(df, predictors, slopes, form, seed, settings) -> dict:
    import arviz as az
    from clinpaper.models import HierarchicalLogistic

    model = HierarchicalLogistic("death", "hospital", predictors, random_slopes=slopes, parameterization=form)
    begin = time.perf_counter()
    model.fit(df, seed=seed, progressbar=False, **settings)
    seconds = time.perf_counter() - begin
    names = ["intercept", "beta", "sigma_group", "group_effect"] + (["sigma_slope", "group_slope"] if slopes else [])
    table = az.summary(model.idata_, var_names=names, kind="diagnostics", round_to="none")
    record = model.centering_ or {}
    weights = np.asarray(record.get("group", []), dtype=float)
    slope_weights = np.asarray(record.get("slope", []), dtype=float)
    return {"form": form, "chosen": model.parameterization_, "min_ess_bulk": float(table["ess_bulk"].min()),
            "min_ess_parameter": str(table["ess_bulk"].idxmin()),
            "ess_sigma_group": float(table.loc["sigma_group", "ess_bulk"]),
            "max_r_hat": float(table["r_hat"].max()),
            "divergences": int(model.idata_.sample_stats["diverging"].sum()), "seconds": round(seconds, 1),
            "pilot_sd": record.get("sd"), "weights": [round(float(np.min(weights)), 2), round(float(np.median(weights)), 2),
                                                      round(float(np.max(weights)), 2)] if weights.size else None,
            "slope_weights": [round(float(slope_weights.min()), 2), round(float(slope_weights.max()), 2)]
            if slope_weights.size else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="2000:40,5000:50,10000:30,20000:30,200000:100,slopes,few-small")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--target-accept", type=float, default=0.8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    import nutpie

    settings = {"chains": args.chains, "draws": args.draws, "tune": args.tune, "target_accept": args.target_accept}
    print(f"{platform.machine()}, Python {platform.python_version()}, nutpie {nutpie.__version__}; {settings}", flush=True)
    out = HERE / "_out"
    out.mkdir(exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.data.split(","):
            df, predictors, slopes = data(name, seed)
            for form in FORMS:
                result = {"data": name, "seed": seed, "stays": len(df), **fit(df, predictors, slopes, form, seed, settings)}
                with (out / "bench_centering.jsonl").open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(f"{name:>12} seed {seed} {form:>12} -> {result['chosen']:>12}: min bulk ESS "
                      f"{result['min_ess_bulk']:6.0f} ({result['min_ess_parameter']}), sigma_group "
                      f"{result['ess_sigma_group']:6.0f}, r_hat {result['max_r_hat']:.3f}, "
                      f"{result['divergences']:3d} divergences, {result['seconds']:5.1f} s"
                      + (f"; pilot SD {result['pilot_sd']:.2f}, weights min/median/max {result['weights']}"
                         if result["pilot_sd"] is not None else "")
                      + (f", slope weights {result['slope_weights']}" if result["slope_weights"] else ""), flush=True)


if __name__ == "__main__":
    main()
