"""Few groups (issue 9, item 3): which form of the group effects diverges with 3 to 5 hospitals?

The robustness sweep's cohorts with 3 to 5 hospitals whose first fit diverged, each fitted with the demo
study's predictors in four forms of the same model (PyMC models sampled by nutpie, numba backend, 4 chains
x 2,000 draws after 1,000, target_accept 0.95, seeds 1 and 2; prior Half-Normal(0.5) on the SD, clinpaper's
prior for few groups):

- iid-nc / iid-c: independent effects u_j ~ Normal(0, sigma), non-centered or centered;
- zs-nc / zs-c: the effects' deviations from their mean, which sum to zero (ZeroSumNormal), beside a free
  intercept a + ū. (For the exact reparameterization clinpaper uses, a + ū takes the prior
  Normal(mu, sqrt(s0² + sigma²/k)); here it keeps Normal(0, 2.5), which changes the model only through the
  intercept's prior: the geometry is the same.)

Prints the divergent transitions of each fit.

    .venv/bin/python benchmarks/bench_few_groups.py                  # 5 cohorts, about 10 minutes
    .venv/bin/python benchmarks/bench_few_groups.py --seeds 7301,7330
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    import nutpie
    import pymc as pm
    import pytensor.tensor as pt

    from bench_robustness import demo_study, sweep_cohorts
    from clinpaper.cohort import build_cohort
    from clinpaper.models import HierarchicalLogistic
    from clinpaper.paper import Paper
    from clinpaper.synth import synthesize

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="7301,7308,7317,7319,7330", help="sweep cohorts, comma-separated")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    study = demo_study()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("seed hospitals deaths | divergent transitions (seed 1, seed 2) per form", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for cohort in [c for c in sweep_cohorts() if c["seed"] in seeds]:
            source = tmp / f"cohort_{cohort['seed']}.duckdb"
            synthesize(source, patients=cohort["patients"], sites=cohort["sites"], seed=cohort["seed"],
                       shift=cohort["shift"], overwrite=True)
            run = tmp / f"run_{cohort['seed']}"
            run.mkdir()
            paper = Paper(study, run, glue=False)
            data = paper.model_frame(build_cohort(study, source).table)
            design = HierarchicalLogistic(paper.outcome, paper.model_group, paper.predictors)._design(data)
            x = design["x"]
            means = (x * design["trials"][:, None]).sum(0) / design["trials"].sum()
            k = len(design["levels"])
            shown = []
            for form in ("iid-nc", "iid-c", "zs-nc", "zs-c"):
                with pm.Model(coords={"g": list(range(k)), "p": list(range(x.shape[1]))}) as model:
                    intercept = pm.Normal("a", 0, 2.5)
                    beta = pm.Normal("b", 0, 2.5, dims="p")
                    sigma = pm.HalfNormal("s", 0.5)
                    if form == "iid-nc":
                        u = sigma * pm.Normal("z", 0, 1, dims="g")
                    elif form == "iid-c":
                        u = pm.Normal("u", 0, sigma, dims="g")
                    elif form == "zs-nc":
                        u = sigma * pm.ZeroSumNormal("z", 1, dims="g")
                    else:
                        u = pm.ZeroSumNormal("u", sigma, dims="g")
                    eta = intercept + pt.dot(x - means, beta) + u[design["group_idx"]]
                    pm.Binomial("y", n=design["trials"], logit_p=eta, observed=design["events"])
                compiled = nutpie.compile_pymc_model(model)
                divergent = []
                for seed in (1, 2):
                    trace = nutpie.sample(compiled, draws=2000, tune=1000, chains=4, seed=seed, target_accept=0.95,
                                          progress_bar=False)
                    divergent.append(int(trace.sample_stats["diverging"].sum()))
                shown.append(f"{form} {divergent[0]}, {divergent[1]}")
            print(f"{cohort['seed']} {k} {int(design['events'].sum())} | " + " | ".join(shown), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
