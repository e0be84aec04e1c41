"""Benchmark: large-scale propensity scores (clinpaper.propensity) on 100,000 exposed patients.

    .venv/bin/python benchmarks/bench_large_ps.py [--patients 100000] [--covariates 3000] [--seed 1] [--n-jobs 2]

Two parts, each in its own subprocess so that its time and peak memory are its own:

(a) simulated: a sparse binary matrix of `--covariates` covariates (prevalence log-uniform from 0.2% to
    20%, about 127 per patient) on `--patients` patients, 20 of which move a treatment whose true
    propensity score is known. Timed: the L1-regularized propensity model with 10-fold cross-validation
    (large_scale_propensity, `--n-jobs` folds at a time); then, for the record, 1:1 matching
    (match_on_ps) and the balance of every covariate after it (covariate_balance).
(b) OMOP: a synthetic OMOP CDM database of `--patients` new users of celecoxib or diclofenac
    (clinpaper synth --scenario comparative, cached as benchmarks/_out/nsaid_<patients>.duckdb,
    git-ignored; not timed), the comparative template's study_synth.yaml cohort (build_cohort, timed
    apart), then the covariate build from the database (omop_covariates, the compared drugs excluded)
    and the same cross-validated L1 fit.

The target: covariate build and cross-validated fit under 2 minutes on 2 cores. Peak memory is sampled
every 0.1 s as the resident set of the process plus its worker processes (psutil; shared memory-mapped
data is counted once per process, so the figure is an upper bound), and the process's own high-water
mark (VmHWM) is given beside it. Prints the figures, the machine's load (uptime) before and after, and
the command. Not a test: it takes a few minutes.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "_out"
STUDY = ROOT / "clinpaper" / "templates" / "comparative" / "study_synth.yaml"


def own_peak_gib() -> float:
    "High-water mark of this process's resident set (VmHWM), GiB."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


class TreeMemory:
    "Samples the resident set of this process and its children (loky workers) every 0.1 s: the peak, GiB."

    def __init__(self):
        import psutil
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil
        while not self._stop.is_set():
            total = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self):
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2 ** 30


def simulate(patients: int, covariates: int, seed: int):
    "A sparse binary covariate matrix (CSR), a treatment and its true propensity score."
    import numpy as np
    import scipy.sparse as sp
    from scipy.special import expit

    rng = np.random.default_rng(seed)
    prevalence = np.exp(rng.uniform(np.log(0.002), np.log(0.2), covariates))
    counts = rng.binomial(patients, prevalence)
    columns = np.repeat(np.arange(covariates), counts)
    rows = np.concatenate([rng.choice(patients, k, replace=False) for k in counts])
    x = sp.csc_matrix((np.ones(len(rows)), (rows, columns)), shape=(patients, covariates)).tocsr()
    beta = np.zeros(covariates)
    relevant = rng.choice(covariates, 20, replace=False)
    beta[relevant] = rng.choice([-1, 1], 20) * rng.uniform(0.3, 1.0, 20)
    truth = expit(-0.3 + x @ beta)
    return x, rng.binomial(1, truth), truth, beta


def part_simulated(args) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from clinpaper.propensity import covariate_balance, large_scale_propensity, match_on_ps

    result = {}
    with TreeMemory() as memory:
        started = time.perf_counter()
        x, treated, truth, beta = simulate(args.patients, args.covariates, args.seed)
        result["simulate_s"] = time.perf_counter() - started
    result.update(simulate_peak_gib=memory.gib, patients=x.shape[0], covariates=x.shape[1], nonzeros=int(x.nnz))
    with TreeMemory() as memory:
        started = time.perf_counter()
        score = large_scale_propensity(x, treated, seed=args.seed, n_jobs=args.n_jobs)
        result["fit_s"] = time.perf_counter() - started
    chosen = {int(name.split()[1]) for name in score.attrs["coefficients"]}
    relevant = set(np.flatnonzero(beta).tolist())
    result.update(fit_peak_gib=memory.gib, penalties_tried=len(score.attrs["cv"]), n_nonzero=score.attrs["n_nonzero"],
                  relevant_kept=len(chosen & relevant), irrelevant_zeroed=1 - len(chosen - relevant) / (x.shape[1] - 20),
                  correlation_true_ps=float(np.corrcoef(score, truth)[0, 1]), auc=float(roc_auc_score(treated, score)),
                  auc_true_ps=float(roc_auc_score(treated, truth)), converged=score.attrs["converged"])
    frame = pd.DataFrame({"treated": treated, "ps": score.to_numpy()})
    started = time.perf_counter()
    pairs = match_on_ps(frame, treatment="treated", score="ps", seed=args.seed)
    result["match_s"] = time.perf_counter() - started
    started = time.perf_counter()
    balance = covariate_balance(x, treated, strata=pairs["stratum"].reindex(frame.index))
    result.update(balance_s=time.perf_counter() - started, pairs=int(pairs.attrs["n_strata"]),
                  max_smd_before=balance.attrs["max_abs_smd_before"], max_smd_after=balance.attrs["max_abs_smd_after"])
    result["own_peak_gib"] = own_peak_gib()
    return result


def part_omop(args) -> dict:
    import warnings

    import numpy as np

    from clinpaper.cohort import build_cohort
    from clinpaper.config import load_study
    from clinpaper.propensity import large_scale_propensity, omop_covariates

    source = OUT / f"nsaid_{args.patients}.duckdb"
    study = load_study(STUDY)
    result = {}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = build_cohort(study, source).table
    result.update(cohort_s=time.perf_counter() - started, rows=len(cohort))
    with TreeMemory() as memory:
        started = time.perf_counter()
        covariates = omop_covariates(source, cohort, exclude_concepts=[1118084, 1124300])
        result["covariates_s"] = time.perf_counter() - started
    result.update(covariates_peak_gib=memory.gib, covariates=covariates.shape[1], nonzeros=int(covariates.matrix.nnz),
                  by_domain=covariates.covariates["domain"].value_counts().to_dict(), drug_level=covariates.drug_level)
    treated = (cohort["exposure"] == "celecoxib").astype(int)
    with TreeMemory() as memory:
        started = time.perf_counter()
        score = large_scale_propensity(covariates, treated, seed=args.seed, n_jobs=args.n_jobs)
        result["fit_s"] = time.perf_counter() - started
    result.update(fit_peak_gib=memory.gib, penalties_tried=len(score.attrs["cv"]), n_nonzero=score.attrs["n_nonzero"],
                  share_treated=float(treated.mean()), mean_ps=float(np.mean(score)), own_peak_gib=own_peak_gib())
    return result


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--covariates", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--part", choices=["simulated", "omop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        runner = part_simulated if args.part == "simulated" else part_omop
        print(json.dumps(runner(args)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    source = OUT / f"nsaid_{args.patients}.duckdb"
    if not source.exists():
        print(f"synthesizing {source} (not timed) ...", flush=True)
        subprocess.run([str(Path(sys.executable).with_name("clinpaper")), "synth", "--scenario", "comparative",
                        "--out", str(source), "--patients", str(args.patients), "--seed", "7"], check=True)
    command = (f".venv/bin/python benchmarks/bench_large_ps.py --patients {args.patients} --covariates "
               f"{args.covariates} --seed {args.seed} --n-jobs {args.n_jobs}")
    load_before = uptime()
    results = {}
    for part in ("simulated", "omop"):
        print(f"running part {part} ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--part", part, "--patients", str(args.patients),
                               "--covariates", str(args.covariates), "--seed", str(args.seed),
                               "--n-jobs", str(args.n_jobs)], capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(f"part {part} failed:\n{done.stderr}")
        results[part] = json.loads(done.stdout.strip().splitlines()[-1])
    load_after = uptime()
    import numpy, scipy, sklearn, duckdb
    print(f"\n{command}\n{date.today()} on {platform.machine()}, {os.cpu_count()} cores; Python "
          f"{platform.python_version()}, numpy {numpy.__version__}, scipy {scipy.__version__}, scikit-learn "
          f"{sklearn.__version__}, DuckDB {duckdb.__version__}\nload before: {load_before}\nload after:  {load_after}\n")
    s, o = results["simulated"], results["omop"]
    print(f"(a) simulated: {s['patients']:,} patients x {s['covariates']:,} covariates, {s['nonzeros']:,} non-zeros "
          f"({s['nonzeros'] / s['patients']:.0f} a patient)")
    print(f"    simulation (not a target)             {s['simulate_s']:7.1f} s  peak {s['simulate_peak_gib']:.2f} GiB")
    print(f"    10-fold CV L1 fit ({s['penalties_tried']} penalties)        {s['fit_s']:7.1f} s  peak "
          f"{s['fit_peak_gib']:.2f} GiB (process tree)")
    print(f"    {s['n_nonzero']} non-zero; {s['relevant_kept']} of 20 relevant kept, {s['irrelevant_zeroed']:.1%} of the "
          f"irrelevant zeroed; correlation with the true score {s['correlation_true_ps']:.3f}; AUC {s['auc']:.3f} "
          f"(true score {s['auc_true_ps']:.3f}); converged {s['converged']}")
    print(f"    1:1 matching {s['match_s']:.1f} s ({s['pairs']:,} pairs); balance of every covariate {s['balance_s']:.1f} s "
          f"(max |SMD| {s['max_smd_before']:.3f} -> {s['max_smd_after']:.3f}); process's own VmHWM {s['own_peak_gib']:.2f} GiB")
    print(f"(b) OMOP: {o['rows']:,} new users from {args.patients:,} synthetic patients (build_cohort {o['cohort_s']:.1f} s)")
    print(f"    omop_covariates                       {o['covariates_s']:7.1f} s  peak {o['covariates_peak_gib']:.2f} GiB: "
          f"{o['covariates']} covariates {o['by_domain']}, drugs by {o['drug_level']}, {o['nonzeros']:,} non-zeros")
    print(f"    10-fold CV L1 fit ({o['penalties_tried']} penalties)        {o['fit_s']:7.1f} s  peak "
          f"{o['fit_peak_gib']:.2f} GiB (process tree); {o['n_nonzero']} non-zero; mean score {o['mean_ps']:.4f}, "
          f"share treated {o['share_treated']:.4f}")
    total = o["covariates_s"] + o["fit_s"]
    print(f"\ntarget (covariate build + CV fit < 120 s on 2 cores): simulated fit {s['fit_s']:.1f} s, "
          f"OMOP build + fit {total:.1f} s")


if __name__ == "__main__":
    main()
