"""Empirical calibration against the truth (issue 14), end to end on the synthetic comparative scenario:
new users of celecoxib or diclofenac (clinpaper.synth, scenario 'comparative') confounded by indication
through measured confounders and an unmeasured one, GI bleeding with a known hazard ratio and twenty
negative control outcomes of hazard ratio 1 that share the unmeasured confounding. Each database is read
by the cohort builder with the template's study (study_synth.yaml), weighted by overlap weights from a
propensity score on the measured confounders, and every outcome is estimated by the same outcome model
(adjusted_cox, weighted Cox with a robust variance), as a study does. What the synthesis knows and the
study does not (the true hazard ratio, in truth.json) is what the checks compare against:

1. the negative controls' uncalibrated p-values are far from uniform (the unmeasured confounder biases
   every control), their leave-one-out calibrated p-values are close to uniform;
2. the uncalibrated 95% interval of the main estimate misses the true hazard ratio (the estimate is biased
   upwards, as designed), the calibrated interval (a systematic error model fitted to the negative controls
   and to positive controls injected into them at hazard ratios 1.5, 2 and 4) covers it, at a true hazard
   ratio of 1 and of 2.

Every figure is pooled over five seeds, so that the assertions are about rates, not one lucky database;
the thresholds are set from a sweep of seeds 1 to 40 at a true hazard ratio of 1 (800 negative controls:
57% of the uncalibrated p-values below 0.05, 6.2% of the calibrated ones, KS p = 0.67; empirical null
mean 0.36 (0.27 to 0.48 by seed), sd 0 to 0.14; the main estimate's bias 0.35 (sd 0.10, SE 0.09), its
distance from the null's mean -0.01; coverage of its 95% interval 2.5% uncalibrated, 92.5% calibrated)."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from clinpaper.calibration import calibrate_ci, calibrate_p, fit_null, fit_systematic_error_model, inject_signals
from clinpaper.cohort import build_cohort
from clinpaper.comparative import adjusted_cox, balancing_weights, propensity_scores, treatment_indicator
from clinpaper.config import load_study
from clinpaper.synth import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("calibration_truth")]

STUDY = Path(__file__).resolve().parents[1] / "clinpaper" / "templates" / "comparative" / "study_synth.yaml"
PATIENTS = 10_000          # about 8,400 new users: negative control SEs 0.1 to 0.2, the main estimate's 0.09
SEEDS = (1, 2, 3, 4, 5)    # the sweep: 100 negative control estimates, 10 main estimates
TRUE_HRS = (1.0, 2.0)      # the main outcome's true hazard ratio: null, and doubled risk
EFFECTS = (1.5, 2.0, 4.0)  # the positive controls' true hazard ratios (EmpiricalCalibration's)
INJECTED = 3               # positive controls are injected into the negative controls with most treated events
ALPHA = 0.05


def _estimate(df: pd.DataFrame, *, duration: str, event: str) -> dict:
    "log HR, its SE, the 95% interval and the Wald p-value of the outcome model every outcome shares."
    row = adjusted_cox(df, treatment="treated", duration=duration, event=event, adjustment="overlap").iloc[0]
    return {"log_rr": row.log_hazard_ratio, "se": row.se, "log_low": math.log(row.low),
            "log_high": math.log(row.high), "p_value": row.p_value, "n_events": row.n_events}


def _controls(df: pd.DataFrame, study: dict, seed: int) -> pd.DataFrame:
    """The negative controls' estimates (each among the patients without an earlier record of it) and the
    positive controls made from the INJECTED ones with most events among the treated: one row each, with
    its true log hazard ratio."""
    covariates = study["analysis"]["covariates"]
    rows, treated_events = [], {}
    for control in (nc["id"] for nc in study["negative_controls"]):
        at_risk = df[df[f"prior_{control}"] == 0]
        treated_events[control] = int(at_risk.loc[at_risk.treated == 1, control].sum())
        rows.append({"control": control, "true_log_rr": 0.0,
                     **_estimate(at_risk, duration=f"time_to_{control}", event=control)})
    for number, control in enumerate(sorted(treated_events, key=lambda c: (-treated_events[c], c))[:INJECTED]):
        at_risk = df[df[f"prior_{control}"] == 0]
        for k, effect in enumerate(EFFECTS):
            positive = inject_signals(at_risk, treatment="treated", duration=f"time_to_{control}", event=control,
                                      effect=effect, seed=seed * 1000 + 10 * number + k, covariates=covariates)
            rows.append({"control": f"{control}_x{effect:g}", "true_log_rr": math.log(effect),
                         **_estimate(positive, duration=f"time_to_{control}", event=control)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """For each seed and true hazard ratio: the synthetic database (into a temporary folder), its cohort
    built with the template's study, overlap weights, the main estimate and the controls' estimates. The
    scenario draws the same patients and controls from a seed whatever the main outcome's true hazard ratio
    (checked here); their estimates are then computed once per seed."""
    template = yaml.safe_load(STUDY.read_text())
    base = tmp_path_factory.mktemp("calibration_truth")
    main, controls = [], []
    for seed in SEEDS:
        earlier = None
        for true_hr in TRUE_HRS:
            database = base / f"nsaid_s{seed}_hr{true_hr:g}.duckdb"
            truth = synthesize(database, scenario="comparative", patients=PATIENTS, seed=seed, true_hr=true_hr)
            path = base / f"study_s{seed}_hr{true_hr:g}.yaml"
            path.write_text(yaml.safe_dump({**template, "source": {**template["source"], "path": str(database)}}))
            study = load_study(path)
            cohort = build_cohort(study, database)
            outcome = next(c for c, e in cohort.codebook.items() if e.get("role") == "outcome")
            duration = next(c for c, e in cohort.codebook.items() if e.get("role") == "time")
            df = cohort.table.assign(treated=treatment_indicator(cohort.table, exposure=study["analysis"]["exposure"],
                                                                 treated=study["analysis"]["treated"]))
            df["propensity_score"] = propensity_scores(df, treatment="treated",
                                                       covariates=study["analysis"]["covariates"])
            df["weight"] = balancing_weights(df, treatment="treated", score="propensity_score", method="overlap")
            assert truth["outcome"]["id"] == outcome and truth["true_hr"] == true_hr
            main.append({"seed": seed, "true_hr": true_hr, "true_log_rr": truth["outcome"]["true_log_hr"],
                         **_estimate(df, duration=duration, event=outcome)})
            rest = df.drop(columns=[outcome, duration])
            if earlier is not None and rest.equals(earlier):
                continue   # the same controls as the seed's first database: the same estimates
            earlier = rest
            controls.append(_controls(df, study, seed).assign(seed=seed, true_hr=true_hr))
    return {"main": pd.DataFrame(main), "controls": pd.concat(controls, ignore_index=True)}


def _controls_of(sweep, seed, true_hr):
    "The controls estimated on the database of (seed, true_hr), or on the seed's first (the same controls)."
    controls = sweep["controls"][sweep["controls"].seed == seed]
    own = controls[controls.true_hr == true_hr]
    return own if len(own) else controls[controls.true_hr == controls.true_hr.min()]


def test_calibrated_p_values_of_negative_controls_are_uniform(sweep):
    """Under the null (every negative control's true hazard ratio is 1), p-values should be uniform. The
    unmeasured confounder biases the controls' estimates, so the uncalibrated p-values pile up below 0.05;
    calibrated against the empirical null fitted to the other controls (leave one out, so that no control
    calibrates itself), they are uniform: about 5% below 0.05 and a Kolmogorov-Smirnov test that does not
    reject. Pooled over the seeds (the negative controls of each seed's first database)."""
    negative = sweep["controls"][sweep["controls"].true_log_rr == 0]
    negative = negative[negative.true_hr == negative.groupby("seed").true_hr.transform("min")]
    uncalibrated, calibrated, nulls = [], [], []
    for seed, controls in negative.groupby("seed"):
        log_rr, se = controls.log_rr.to_numpy(), controls.se.to_numpy()
        null = fit_null(log_rr, se)
        nulls.append({"seed": seed, "mean": null.mean, "sd": null.sd})
        uncalibrated += list(controls.p_value)
        for i in range(len(controls)):
            others = np.arange(len(controls)) != i
            calibrated.append(calibrate_p(fit_null(log_rr[others], se[others]), log_rr[i], se[i]))
    uncalibrated, calibrated, nulls = np.array(uncalibrated), np.array(calibrated), pd.DataFrame(nulls)
    n = len(calibrated)
    assert n == 20 * len(SEEDS)
    summary = (f"{n} negative controls over {len(SEEDS)} seeds: uncalibrated {np.mean(uncalibrated < ALPHA):.1%} "
               f"below {ALPHA} (KS p = {stats.kstest(uncalibrated, 'uniform').pvalue:.2g}), calibrated "
               f"{np.mean(calibrated < ALPHA):.1%} (KS p = {stats.kstest(calibrated, 'uniform').pvalue:.2g}); "
               f"empirical nulls (mean, sd) by seed:\n{nulls.round(3).to_string(index=False)}")

    # the systematic error the calibration removes: a positive mean shared by the controls, in every seed
    assert (nulls["mean"] > 0.15).all(), summary
    # uncalibrated: far more than alpha below alpha, not uniform
    assert stats.binomtest(int(np.sum(uncalibrated < ALPHA)), n, ALPHA, alternative="greater").pvalue < 1e-6, summary
    assert np.mean(uncalibrated < ALPHA) > 0.25, summary
    assert stats.kstest(uncalibrated, "uniform").pvalue < 1e-6, summary
    # calibrated: alpha within the binomial tolerance (99%), and uniform
    assert stats.binomtest(int(np.sum(calibrated < ALPHA)), n, ALPHA).pvalue > 0.01, summary
    assert stats.kstest(calibrated, "uniform").pvalue > 0.01, summary


def test_calibrated_interval_covers_the_true_effect(sweep):
    """The main estimate's uncalibrated 95% interval misses the true hazard ratio (truth.json) in most
    databases: the estimate is biased upwards by the unmeasured confounder, as designed. The interval
    calibrated by the systematic error model of the seed's negative and positive controls covers it.
    The two databases of a seed share their patients, so the 10 intervals are about 5 independent
    draws: at 93% coverage (seeds 1 to 40), 5 or more misses (3 seeds) has probability 0.004, and a mean
    squared standardized error above 2^2 (chi-square with 5 degrees of freedom over 5) 0.001; without
    calibration the coverage is 2.5% and the standardized error about 4."""
    rows = []
    for estimate in sweep["main"].itertuples():
        controls = _controls_of(sweep, estimate.seed, estimate.true_hr)
        model = fit_systematic_error_model(controls.log_rr, controls.se, controls.true_log_rr)
        interval = calibrate_ci(model, [estimate.log_rr], [estimate.se]).iloc[0]
        truth = estimate.true_log_rr
        rows.append({"seed": estimate.seed, "true_hr": estimate.true_hr, "bias": estimate.log_rr - truth,
                     "se": estimate.se, "z": (estimate.log_rr - truth) / estimate.se,
                     "covered": estimate.log_low <= truth <= estimate.log_high,
                     "calibrated_bias": interval.log_rr - truth,
                     "calibrated_z": (interval.log_rr - truth) / interval.se_log_rr,
                     "calibrated_covered": interval.log_low <= truth <= interval.log_high,
                     "mean_intercept": model.mean_intercept, "mean_slope": model.mean_slope,
                     "sd_intercept": model.sd_intercept, "sd_slope": model.sd_slope})
    coverage = pd.DataFrame(rows)
    summary = coverage.round(3).to_string(index=False)
    assert len(coverage) == len(SEEDS) * len(TRUE_HRS)

    # uncalibrated: biased upwards as designed, the interval misses the truth
    assert (coverage.bias > 0).all(), summary
    assert coverage.bias.mean() > 0.2, summary
    assert coverage.covered.mean() <= 0.2, summary
    # calibrated: the bias is gone (on average; the uncalibrated one is about 0.35), the interval covers the
    # truth, and the standardized errors are those of a standard normal at each true hazard ratio
    assert abs(coverage.calibrated_bias.mean()) < 0.15, summary
    assert coverage.calibrated_covered.mean() >= 0.6, summary
    assert (coverage.groupby("true_hr").calibrated_z.apply(lambda z: np.sqrt(np.mean(z ** 2))) < 2).all(), summary
