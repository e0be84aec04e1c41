"""Contracts of clinpaper.models.HierarchicalLogistic: shape of the API, inputs never mutated,
seeded reproducibility with both samplers, the nutpie -> PyMC fallback, bad input, and the
single-level model (group=None)."""
import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from clinpaper.core import ClinpaperError, CohortError, ConvergenceError
from clinpaper.models import HierarchicalLogistic, NotFittedError, check_convergence, choose_centering

logging.getLogger("pymc").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PREDICTORS = ["male", "age_band"]


@pytest.fixture(scope="module")
def cohort():
    "1,500 stays in 5 hospitals; discrete predictors, so rows collapse to at most 30 counts."
    rng = np.random.default_rng(42)
    n = 1500
    df = pd.DataFrame({"hospital": rng.choice(["A", "B", "C", "D", "E"], n),
                       "male": rng.integers(0, 2, n), "age_band": rng.integers(0, 3, n)})
    effect = df["hospital"].map({"A": -0.4, "B": 0.0, "C": 0.3, "D": 0.5, "E": -0.2})
    logit = -1.0 + 0.4 * df["male"] + 0.5 * df["age_band"] + effect
    df["death"] = rng.binomial(1, 1 / (1 + np.exp(-logit)))
    return df


@pytest.fixture(scope="module")
def fitted(cohort):
    return HierarchicalLogistic("death", "hospital", PREDICTORS).fit(
        cohort, draws=300, tune=300, chains=2, seed=11)


def test_fit_returns_self_and_keeps_input(cohort):
    before = cohort.copy()
    model = HierarchicalLogistic("death", "hospital", PREDICTORS)
    assert model.fit(cohort, draws=50, tune=50, chains=1, seed=0) is model
    pd.testing.assert_frame_equal(cohort, before)
    assert model.sampler_ == "nutpie"
    assert model.groups_ == ["A", "B", "C", "D", "E"]
    assert model.n_obs_ == len(cohort) and model.n_events_ == cohort["death"].sum()


def test_model_names_dims_and_data(cohort, fitted):
    "Centered, the sampler sees group_effect; non-centered or partial, z_group; every form names the same quantities."
    assert fitted.sampling_["backend"] == "kernel"
    # 5 hospitals are few: non-centered deviations that sum to zero, whatever the pilot weights say (`FEW_GROUPS`)
    assert (fitted.parameterization_, fitted.centering_["zero_sum"]) == ("non-centered", True)
    assert "group_effect" in fitted.idata_.posterior and "intercept" in fitted.idata_.posterior
    assert {"intercept_mean", "z_free", "group_deviation"} <= set(fitted.idata_.posterior)
    more = pd.concat([cohort, cohort.assign(hospital=cohort["hospital"] + "2")], ignore_index=True)   # 10 hospitals
    many = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(more, draws=50, tune=50, chains=1)
    assert many.parameterization_ == choose_centering(many._design(more), means=many.predictor_means_.to_numpy())["form"]
    assert not many.centering_["zero_sum"]
    spec = HierarchicalLogistic("death", "hospital", PREDICTORS, parameterization="centered")
    model = spec.build_model(spec._design(cohort))
    free = {var.name for var in model.free_RVs}
    assert free == {"intercept_centered", "beta", "sigma_group", "group_effect"}
    assert {var.name for var in model.deterministics} == {"intercept"}
    spec = HierarchicalLogistic("death", "hospital", PREDICTORS, parameterization="non-centered")
    model = spec.build_model(spec._design(cohort))
    assert {var.name for var in model.free_RVs} == {"intercept_centered", "beta", "sigma_group", "z_group"}
    assert {var.name for var in model.deterministics} == {"intercept", "group_effect"}
    assert model.named_vars_to_dims["beta"] == ("predictor",)
    assert model.named_vars_to_dims["z_group"] == ("group",)
    assert model.named_vars_to_dims["group_effect"] == ("group",)
    assert {"x_centered", "group_idx"} <= {data.name for data in model.data_vars}
    assert list(model.coords["predictor"]) == PREDICTORS


def test_refit_is_idempotent(cohort, fitted):
    again = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(
        cohort, draws=300, tune=300, chains=2, seed=11)
    np.testing.assert_array_equal(again.idata_.posterior["beta"].values, fitted.idata_.posterior["beta"].values)
    other = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(
        cohort, draws=300, tune=300, chains=2, seed=12)
    assert not np.array_equal(other.idata_.posterior["beta"].values, fitted.idata_.posterior["beta"].values)


def test_pymc_sampler_is_seeded(cohort):
    fits = [HierarchicalLogistic("death", "hospital", PREDICTORS).fit(
        cohort, draws=60, tune=60, chains=2, seed=4, sampler="pymc") for _ in range(2)]
    assert fits[0].sampler_ == "pymc"
    np.testing.assert_array_equal(fits[0].idata_.posterior["beta"].values, fits[1].idata_.posterior["beta"].values)
    assert "PyMC's No-U-Turn sampler" in fits[0].methods_text()


def test_falls_back_to_pymc_when_nutpie_fails(cohort, monkeypatch):
    import nutpie

    def broken(*args, **kwargs):
        raise RuntimeError("numba could not compile")

    monkeypatch.setattr(nutpie, "compile_pymc_model", broken)
    model = HierarchicalLogistic("death", "hospital", PREDICTORS)
    with pytest.warns(RuntimeWarning, match="sampling with PyMC's NUTS instead"):
        model.fit(cohort, draws=40, tune=40, chains=1, seed=0, backend="jax")
    assert model.sampler_ == "pymc"
    assert model.idata_.posterior["beta"].shape == (1, 40, 2)


def test_kernel_failure_falls_back_to_the_pymc_model(cohort, monkeypatch):
    import clinpaper.kernel

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(clinpaper.kernel, "nutpie_model", broken)
    model = HierarchicalLogistic("death", "hospital", PREDICTORS)
    with pytest.warns(RuntimeWarning, match="compiled kernel failed"):
        model.fit(cohort, draws=40, tune=40, chains=1, seed=0)
    assert model.sampler_ == "nutpie" and model.sampling_["backend"] in ("jax", "numba")


def test_random_slopes_run_on_the_kernel(cohort):
    model = HierarchicalLogistic("death", "hospital", PREDICTORS, random_slopes=["male"])
    model.fit(cohort, draws=40, tune=40, chains=1, seed=0)
    assert model.sampling_["backend"] == "kernel"
    assert model.idata_.posterior["group_slope"].shape == (1, 40, 5, 1)
    model.fit(cohort, draws=40, tune=40, chains=1, seed=0, backend="jax")   # the PyMC model still runs
    assert model.sampling_["backend"] == "jax" and "group_slope" in model.idata_.posterior


def test_predict_contract(cohort, fitted):
    new = cohort.iloc[[5, 3, 8]].copy()
    new.index = ["p", "q", "r"]
    new.loc["r", "hospital"] = "never seen"
    before = new.copy()
    prediction = fitted.predict(new)
    pd.testing.assert_frame_equal(new, before)
    assert list(prediction.index) == ["p", "q", "r"]
    assert list(prediction.columns) == ["mean", "low", "high"]
    assert prediction.to_numpy().min() > 0 and prediction.to_numpy().max() < 1
    assert (prediction["low"] <= prediction["mean"]).all() and (prediction["mean"] <= prediction["high"]).all()
    # predict is seeded: a new hospital gets the same predictions twice
    pd.testing.assert_frame_equal(prediction, fitted.predict(new))
    # without the outcome column: predict needs only group and predictors
    assert len(fitted.predict(new.drop(columns=["death"]))) == 3


def test_observed_rate_is_recovered(cohort, fitted):
    "Independent check: the mean predicted risk of the cohort is close to its observed death rate."
    prediction = fitted.predict(cohort)
    assert abs(prediction["mean"].mean() - cohort["death"].mean()) < 0.01


def test_tables(fitted):
    summary = fitted.summary()
    assert list(summary["parameter"]) == ["intercept", "beta[male]", "beta[age_band]", "sigma_group"]
    odds = fitted.odds_ratios()
    assert list(odds.columns) == ["predictor", "odds_ratio", "low", "high"]
    assert ((odds["low"] < odds["odds_ratio"]) & (odds["odds_ratio"] < odds["high"])).all()
    assert set(fitted.median_odds_ratio()) == {"median", "low", "high"}
    assert list(fitted.group_effects()["group"]) == ["A", "B", "C", "D", "E"]
    priors = fitted.describe_priors()
    assert list(priors.columns) == ["parameter", "distribution", "text"]


def test_convergence_gate(cohort):
    # sigma_group of 5 hospitals is the hard part: 4 chains and a high target_accept pass the gate
    careful = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(
        cohort, draws=500, tune=500, chains=4, seed=11, target_accept=0.95)
    table = check_convergence(careful.idata_, ess_min=100)
    assert table["passed"].all()
    rough = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(cohort, draws=15, tune=5, chains=2, seed=1)
    with pytest.raises(ConvergenceError, match="did not pass the convergence gate"):
        rough.check_convergence()


def test_not_fitted():
    model = HierarchicalLogistic("death", "hospital", PREDICTORS)
    for method in (model.summary, model.odds_ratios, model.median_odds_ratio, model.group_effects,
                   model.check_convergence):
        with pytest.raises(NotFittedError, match="HierarchicalLogistic is not fitted yet, call fit first"):
            method()
    with pytest.raises(AttributeError):
        model.predict(pd.DataFrame())


@pytest.mark.parametrize("change, message", [
    (lambda df: df.assign(death=np.where(np.arange(len(df)) < 14, 2 + np.arange(len(df)) % 2, df["death"])),
     "must be a column of 0/1 values. Got values {2, 3} in 14 rows."),
    (lambda df: df.assign(death=np.where(np.arange(len(df)) < 30, np.arange(len(df)) * 1000 + 12345, df["death"])),
     "Got 30 distinct other values in 30 rows"),
    (lambda df: df.drop(columns=["age_band"]), "lack the column(s) 'age_band'"),
    (lambda df: df.assign(male=df["male"].where(np.arange(len(df)) >= 9)),
     "9 rows have missing or infinite predictor values"),
    (lambda df: df.iloc[:0], "empty data frame"),
    (lambda df: df.assign(hospital="A"), "at least 2 groups"),
    (lambda df: df.assign(hospital=df["hospital"].where(np.arange(len(df)) >= 3)), "3 rows have no `hospital`"),
    (lambda df: df.assign(male=df["male"].map({0: "F", 1: "M"})), "must be numeric"),
    # the data must hold something to model: events and non-events, predictors that vary, groups of more than one row
    (lambda df: df.assign(death=0), "`death` has no events in all 1,500 observations"),
    (lambda df: df.assign(death=1), "has only events in all 1,500 observations"),
    (lambda df: df.assign(male=1), "predictor `male` takes one value in all 1,500 rows"),
    (lambda df: df.assign(hospital=[f"H{i}" for i in range(len(df))]), "each of the 1,500 groups of `hospital` has one row"),
])
def test_bad_input(cohort, change, message):
    with pytest.raises(CohortError) as error:
        HierarchicalLogistic("death", "hospital", PREDICTORS).fit(change(cohort), draws=10, tune=10)
    assert message in str(error.value)
    assert isinstance(error.value, (ClinpaperError, ValueError))


def test_separation_is_warned_not_refused(cohort):
    "Complete separation by a 0/1 predictor: the prior keeps the odds ratio finite, and the warning says so, in counts."
    separated = cohort.assign(death=np.where(cohort["male"] == 1, cohort["death"], 0))
    n_women = int((cohort["male"] == 0).sum())
    with pytest.warns(RuntimeWarning, match=f"the {n_women:,} observations with `male` = 0 have no events"):
        model = HierarchicalLogistic("death", "hospital", PREDICTORS).fit(separated, draws=200, tune=200, chains=1)
    odds = model.odds_ratios().set_index("predictor").loc["male"]
    assert np.isfinite(odds["high"]) and odds["low"] > 1


def test_random_slope_of_a_group_level_predictor_is_refused(cohort):
    "A slope within a group needs the predictor to vary there; the message names the column and the groups, no rows."
    level = cohort.assign(teaching=cohort["hospital"].isin(["A", "B"]).astype(int))
    with pytest.raises(CohortError, match="random slope of `teaching`, which is constant within every one of the 5 groups"):
        HierarchicalLogistic("death", "hospital", ["teaching"], random_slopes=["teaching"]).fit(level, draws=10, tune=10)
    # as a fixed effect beside random intercepts a group-level predictor is identified: accepted
    HierarchicalLogistic("death", "hospital", ["teaching"])._validate(level)


def test_bad_counts():
    df = pd.DataFrame({"hospital": ["A", "A", "B", "B"], "x": [0.0, 1.0, 0.0, 1.0],
                       "deaths": [3, 9, 1, 2], "stays": [10, 8, 5, 0]})
    model = HierarchicalLogistic("deaths", "hospital", ["x"], trials="stays")
    with pytest.raises(CohortError, match="whole numbers of at least 1; 1 rows"):
        model.fit(df)
    with pytest.raises(CohortError, match=r"must not exceed `trials`: 1 rows"):
        model.fit(df.assign(stays=[10, 8, 5, 4]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown parameter"):
        HierarchicalLogistic("y", "g", ["x"], priors={"sigma": {"sigma": 1}})
    with pytest.raises(ValueError, match="must be among the predictors"):
        HierarchicalLogistic("y", "g", ["x"], random_slopes=["z"])
    with pytest.raises(TypeError, match="pandas DataFrame"):
        HierarchicalLogistic("y", "g", ["x"]).fit([[0, 1]])


# --- the single-level model (group=None) ---------------------------------------------------

@pytest.fixture(scope="module")
def single(cohort):
    "A single-centre analysis: the same cohort without its hospital column."
    return HierarchicalLogistic("death", None, PREDICTORS).fit(
        cohort.drop(columns="hospital"), draws=300, tune=300, chains=2, seed=11)


def test_single_level_model_has_no_group_effects(cohort, single):
    assert single.group is None and single.groups_ == [] and single.parameterization_ is None
    assert single.sampling_["backend"] == "jax" and single.sampler_ == "nutpie"
    assert {var.name for var in single.model_.free_RVs} == {"intercept_centered", "beta"}
    assert {var.name for var in single.model_.deterministics} == {"intercept"}
    assert "group" not in single.model_.coords
    assert {data.name for data in single.model_.data_vars} == {"x_centered"}
    assert set(single.idata_.posterior.data_vars) == {"intercept_centered", "beta", "intercept"}
    assert list(single.summary()["parameter"]) == ["intercept", "beta[male]", "beta[age_band]"]
    assert list(single.check_convergence(ess_min=100)["parameter"]) == ["intercept", "beta[male]", "beta[age_band]"]
    assert list(single.describe_priors()["parameter"]) == ["intercept", "beta"]
    odds = single.odds_ratios()
    assert ((odds["low"] < odds["odds_ratio"]) & (odds["odds_ratio"] < odds["high"])).all()


def test_single_level_refit_is_idempotent_and_keeps_input(cohort, single):
    data = cohort.drop(columns="hospital")
    before = data.copy()
    again = HierarchicalLogistic("death", None, PREDICTORS).fit(data, draws=300, tune=300, chains=2, seed=11)
    pd.testing.assert_frame_equal(data, before)
    np.testing.assert_array_equal(again.idata_.posterior["beta"].values, single.idata_.posterior["beta"].values)


def test_single_level_predict_save_and_load(cohort, single, tmp_path):
    new = cohort.drop(columns=["hospital", "death"]).iloc[[4, 2, 9]]
    prediction = single.predict(new)
    assert list(prediction.index) == list(new.index) and list(prediction.columns) == ["mean", "low", "high"]
    assert (prediction["low"] <= prediction["mean"]).all() and (prediction["mean"] <= prediction["high"]).all()
    assert abs(single.predict(cohort)["mean"].mean() - cohort["death"].mean()) < 0.01
    pd.testing.assert_frame_equal(single.predict(cohort.iloc[[4, 2, 9]]), prediction)  # extra columns ignored
    single.save(tmp_path / "single")
    loaded = HierarchicalLogistic.load(tmp_path / "single")
    assert loaded.group is None and repr(loaded) == repr(single)
    pd.testing.assert_frame_equal(loaded.predict(new), prediction)
    pd.testing.assert_frame_equal(loaded.summary(), single.summary())


def test_single_level_says_what_it_lacks(single):
    for method, what in ((single.median_odds_ratio, "median odds ratio"), (single.group_effects, "group effects")):
        with pytest.raises(ValueError, match=rf"has no grouping \(group=None\), so it has no {what}"):
            method()
    with pytest.raises(ValueError, match="no group effects"):
        single.summary(include_groups=True)
    text = single.methods_text()
    assert "Bayesian logistic regression of death (a binary outcome) on male, age_band" in text
    assert "a single-level model without group effects" in text
    assert "evaluating the PyMC model compiled with JAX" in text
    assert "hierarchical" not in text and "between-" not in text and "random intercepts" not in text


def test_single_level_bad_arguments(cohort):
    with pytest.raises(ValueError, match="a model with group=None has no group"):
        HierarchicalLogistic("death", None, PREDICTORS, random_slopes=["male"])
    with pytest.raises(ValueError, match="has no sigma_group"):
        HierarchicalLogistic("death", None, PREDICTORS, priors={"sigma_group": {"sigma": 0.5}})
    with pytest.raises(ValueError, match="group=None needs backend='jax'"):
        HierarchicalLogistic("death", None, PREDICTORS).fit(cohort, draws=10, tune=10, backend="kernel")
    with pytest.raises(CohortError, match="lack the column"):
        HierarchicalLogistic("death", None, PREDICTORS).fit(cohort.drop(columns="male"), draws=10, tune=10)


def test_methods_text_calls_a_prior_weakly_informative_only_when_it_is():
    "BUGS-style vague priors are named as such; the defaults are weakly informative; the scale is said."
    default = HierarchicalLogistic("death", "hospital", PREDICTORS).methods_text(group_plural="hospitals")
    assert "Priors were weakly informative: Normal(0, 2.5) for each coefficient, a log odds ratio per unit" in default
    assert "(log-odds scale)" in default
    bugs = HierarchicalLogistic("death", "hospital", PREDICTORS, priors={
        "beta": {"dist": "Normal", "mu": 0, "sigma": 1000},
        "sigma_group": {"dist": "InverseGammaVariance", "alpha": 0.001, "beta": 0.001}}).methods_text()
    assert "weakly informative:" not in bugs
    assert "Normal(0, 1000) for each coefficient, a log odds ratio per unit of its predictor as entered in " \
           "the model (vague)" in bugs
    assert "Inverse-Gamma(0.001, 0.001) on the variance for the between-hospital standard deviation" in bugs
    assert "(vague)" in bugs and "Normal(0, 2.5) for the intercept, the log odds with every predictor at " \
                                 "its mean (weakly informative)" in bugs
