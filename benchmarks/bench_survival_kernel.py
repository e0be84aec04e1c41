"""The hierarchical Weibull model (clinpaper.survival.HierarchicalSurvival) sampled by nutpie on
clinpaper's compiled log-density (backend 'kernel') and on the PyMC model compiled with JAX (backend
'jax'): the same simulated cohort, seed and settings (03a_model_checks' own: 2 chains of 2,000 draws
after 500 tuning steps, target acceptance 0.95). Prints, per backend, the seconds spent compiling and
sampling, the smallest bulk ESS, and the hazard ratios against the simulation's truth.

    .venv/bin/python benchmarks/bench_survival_kernel.py --patients 20000 --sites 30
"""
import argparse
import time
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

TRUE_LOG_HR = {"age_10": 0.3, "male": 0.1, "sepsis": 0.7, "chf": 0.2, "ckd": 0.3, "cancer": 0.4}


def simulate(patients: int, sites: int, seed: int) -> pd.DataFrame:
    "Weibull times (shape 1.2) with a log-normal hospital frailty (SD 0.3), censored by discharge."
    rng = np.random.default_rng(seed)
    frailty = rng.normal(0, 0.3, sites)
    group = rng.integers(0, sites, patients)
    df = pd.DataFrame({"age_10": rng.normal(0, 1.5, patients),
                       **{name: rng.binomial(1, 0.3, patients) for name in list(TRUE_LOG_HR)[1:]}})
    eta = -4.5 + df.to_numpy() @ np.array(list(TRUE_LOG_HR.values())) + frailty[group]
    death = (-np.log(rng.uniform(size=patients)) / np.exp(eta)) ** (1 / 1.2)
    discharge = rng.uniform(1, 30, patients)
    df["hospital"], df["days"] = group, np.minimum(death, discharge) + 0.01
    df["died"] = (death <= discharge).astype(int)
    return df


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backends", default="kernel,jax")
    args = parser.parse_args()
    from clinpaper.survival import HierarchicalSurvival

    df = simulate(args.patients, args.sites, args.seed)
    print(f"{args.patients:,} patients, {args.sites} hospitals, {int(df['died'].sum()):,} deaths")
    for backend in args.backends.split(","):
        model = HierarchicalSurvival("days", "died", "hospital", list(TRUE_LOG_HR))
        started = time.perf_counter()
        model.fit(df, draws=2000, tune=500, chains=2, seed=args.seed, target_accept=0.95, backend=backend,
                  progressbar=False)
        total = time.perf_counter() - started
        summary = model.summary()
        ratios = model.hazard_ratios().set_index("predictor")["hazard_ratio"]
        worst = max(abs(np.log(ratios[name]) - true) for name, true in TRUE_LOG_HR.items())
        print(f"{backend:>6}: fit {total:.1f} s (compile {model.timings_['compile_seconds']:.1f} s, sample "
              f"{model.timings_['sample_seconds']:.1f} s); smallest bulk ESS {summary['ess_bulk'].min():,.0f}; "
              f"largest |log HR - truth| {worst:.3f}; frailty SD {float(summary.set_index('parameter').loc['sigma_group', 'median']):.3f} (truth 0.3)")


if __name__ == "__main__":
    main()
