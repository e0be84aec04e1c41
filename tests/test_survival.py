"""Contracts of clinpaper.survival.HierarchicalSurvival: API shape, inputs never mutated, seeded
reproducibility, save/load, bad input, and (slow) agreement with lifelines and the piecewise model."""
import logging

import numpy as np
import pandas as pd
import pytest

from clinpaper.core import CohortError
from clinpaper.models import NotFittedError
from clinpaper.survival import HierarchicalSurvival

logging.getLogger("pymc").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def simulate(n=800, n_groups=6, *, shape=1.3, log_hr=0.7, sigma=0.3, seed=5):
    rng = np.random.default_rng(seed)
    frailty = rng.normal(0, sigma, n_groups)
    df = pd.DataFrame({"site": rng.integers(0, n_groups, n), "sepsis": rng.binomial(1, 0.4, n)})
    eta = -2.0 + log_hr * df["sepsis"] + frailty[df["site"]]
    death = 5 * (-np.log(rng.uniform(size=n)) / np.exp(eta)) ** (1 / shape)
    discharge = rng.uniform(0.5, 20, n)
    df["days"] = np.minimum(death, discharge)
    df["died"] = (death <= discharge).astype(int)
    df["site"] = "S" + df["site"].astype(str)
    return df


@pytest.fixture(scope="module")
def data():
    return simulate()


@pytest.fixture(scope="module")
def fitted(data):
    return HierarchicalSurvival("days", "died", "site", ["sepsis"]).fit(data, draws=300, tune=300, chains=2, seed=3)


def test_fit_returns_self_keeps_input_and_is_seeded(data, fitted):
    before = data.copy()
    again = HierarchicalSurvival("days", "died", "site", ["sepsis"])
    assert again.fit(data, draws=300, tune=300, chains=2, seed=3) is again
    pd.testing.assert_frame_equal(data, before)
    np.testing.assert_array_equal(again.idata_.posterior["beta"].values, fitted.idata_.posterior["beta"].values)


def test_tables_have_the_house_shape(fitted):
    assert list(fitted.summary().columns) == ["parameter", "mean", "sd", "median", "low", "high", "hdi_low",
                                              "hdi_high", "r_hat", "ess_bulk", "ess_tail"]
    ratios = fitted.hazard_ratios()
    assert list(ratios.columns) == ["predictor", "hazard_ratio", "low", "high"]
    # the true HR exp(0.7) = 2.01 is inside a 95% interval computed from 800 patients
    assert ratios.loc[0, "low"] < np.exp(0.7) < ratios.loc[0, "high"]
    assert list(fitted.group_effects()["group"]) == [f"S{k}" for k in range(6)]


def test_predict_survival_decreases_and_new_groups_are_wider(fitted):
    rows = pd.DataFrame({"site": ["S1", "NEW"], "sepsis": [1, 1]}, index=["a", "b"])
    curve = fitted.predict(rows, times=[1, 5, 10])
    assert list(curve.columns) == ["time", "mean", "low", "high"] and len(curve) == 6
    for label in ("a", "b"):
        assert curve.loc[label, "mean"].is_monotonic_decreasing
    assert ((curve["low"] <= curve["mean"]) & (curve["mean"] <= curve["high"])).all()
    width = curve["high"] - curve["low"]
    assert (width.loc["b"].to_numpy() > width.loc["a"].to_numpy()).all()
    assert np.isfinite(fitted.predict(rows)["median"]).all()


def test_save_and_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "surv")
    loaded = HierarchicalSurvival.load(tmp_path / "surv")
    rows = pd.DataFrame({"site": ["S2"], "sepsis": [0]})
    pd.testing.assert_frame_equal(loaded.predict(rows, times=[3.0]), fitted.predict(rows, times=[3.0]))
    with pytest.raises(FileNotFoundError, match="not a saved HierarchicalSurvival"):
        HierarchicalSurvival.load(tmp_path)


def test_bad_input(data):
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        model.predict(data)
    with pytest.raises(CohortError, match="positive, finite times; 3 rows"):
        model.fit(data.assign(days=data["days"].where(data.index >= 3, -1.0)))
    with pytest.raises(CohortError, match=r"1 \(event\) or 0 \(censored\); 2 rows"):
        model.fit(data.assign(died=data["died"].where(data.index >= 2)))
    with pytest.raises(ValueError, match="'weibull' or 'piecewise'"):
        HierarchicalSurvival("days", "died", "site", ["sepsis"], baseline="exponential")


@pytest.mark.slow
def test_piecewise_agrees_with_weibull_and_cox(data, fitted):
    from lifelines import CoxPHFitter
    piecewise = HierarchicalSurvival("days", "died", "site", ["sepsis"], baseline="piecewise").fit(
        data, draws=500, tune=500, chains=2, seed=4)
    cox = CoxPHFitter().fit(data.join(pd.get_dummies(data["site"], drop_first=True, dtype=float))
                            .drop(columns="site"), "days", "died")
    log_hr = {"weibull": fitted.idata_.posterior["beta"].values.mean(),
              "piecewise": piecewise.idata_.posterior["beta"].values.mean()}
    # both within one Cox SE (hospital-adjusted Cox, a semi-parametric fit) of the Cox estimate
    for value in log_hr.values():
        assert abs(value - cox.params_["sepsis"]) < cox.standard_errors_["sepsis"]


def test_weibull_likelihood_is_the_row_by_row_likelihood():
    """The Weibull model's log-likelihood equals the row-by-row likelihood of the Weibull proportional-hazards
    model with a group frailty, computed here with numpy."""
    df = simulate(n=600, n_groups=5, seed=8)
    df["age"] = np.random.default_rng(2).normal(60, 12, len(df))
    model = HierarchicalSurvival("days", "died", "site", ["sepsis", "age"])
    model._validate(df)
    design = model._design(df)
    means = df[["sepsis", "age"]].to_numpy(float).mean(axis=0)
    built = model.build_model(design, predictor_means=means)
    # the Potential, as a function of the value variables (not of random draws of the variables)
    loglik = built.compile_fn(built.logp(vars=[built["loglik"]]), inputs=built.value_vars, on_unused_input="ignore")
    rng = np.random.default_rng(4)
    for _ in range(3):
        point = {"beta": rng.normal(0, 0.3, 2), "sigma_group_log__": rng.normal(-1, 0.3),
                 "z_group": rng.normal(0, 1, 5), "intercept": rng.normal(-1, 0.5), "log_shape": rng.normal(0.2, 0.1)}
        point = {v.name: point[v.name] for v in built.value_vars}
        shape, sigma = np.exp(point["log_shape"]), np.exp(point["sigma_group_log__"])
        effect = sigma * point["z_group"]
        eta = point["intercept"] + (design["x"] - means) @ point["beta"] + effect[design["group_idx"]]
        t, d = design["duration"], design["event"]
        rows = d * (np.log(shape) + (shape - 1) * np.log(t) + eta) - t ** shape * np.exp(eta)
        assert float(loglik(point)) == pytest.approx(rows.sum(), rel=1e-10)


def test_refits_within_a_budget_reach_the_ess_the_gate_asks():
    "The survival model goes through the same escalation: 2 x 100 draws miss an ESS of 200, a longer refit has it."
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"]).fit_adaptive(
        simulate(n=2000, n_groups=20, seed=8), draws=100, tune=300, chains=2, seed=3, ess_min=200, r_hat_max=1.05, attempts=3, max_draws=2000)
    first, *later = model.attempts_
    assert not first["passed"] and "effective sample size" in first["failed"] and first["parameterization"] is None
    assert later and later[-1]["passed"] and later[-1]["draws"] > 100
    assert model.sampling_["draws"] == later[-1]["draws"]
    model.check_convergence(ess_min=200, r_hat_max=1.05)
    assert "The first fit (target acceptance rate 0.9) failed the convergence gate with" in model.methods_text()


def test_the_frailty_sd_takes_every_prior_family_of_the_logistic_model():
    "Uniform and Inverse-Gamma on the variance, as published models give them (BUGS' dunif, dgamma on the precision)."
    import pytest
    from clinpaper.models import SCALE_PRIORS
    from clinpaper.survival import resolve_survival_priors
    for dist, arguments in SCALE_PRIORS.items():
        prior = {"dist": dist, **{key: (0 if key == "lower" else 5 if key == "upper" else 1.5) for key in arguments}}
        assert resolve_survival_priors({"sigma_group": prior})["sigma_group"] == prior
    with pytest.raises(ValueError, match="needs 0 <= lower < upper"):
        resolve_survival_priors({"sigma_group": {"dist": "Uniform", "lower": 2, "upper": 1}})
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"],
                                 priors={"sigma_group": {"dist": "InverseGammaVariance", "alpha": 1, "beta": 0.1}})
    model.fit(simulate(n=1000, n_groups=10, seed=9), draws=300, tune=300, chains=2, seed=4)
    assert model.sampling_["backend"] == "kernel" and model.idata_.posterior["sigma_group"].min() > 0
    assert "Inverse-Gamma(1, 0.1) on the variance" in model.methods_text()


def test_a_prior_on_the_shape_itself_is_sampled_named_and_kept(tmp_path):
    "BUGS' dgamma(1, 0.001) on the Weibull shape r (its Kidney example): the kernel samples it, the words name it."
    from clinpaper.survival import resolve_survival_priors
    bugs = {"dist": "Gamma", "alpha": 1, "beta": 0.001}
    with pytest.raises(ValueError, match="gives both `log_shape` and `shape`"):
        resolve_survival_priors({"shape": bugs, "log_shape": {"sigma": 2}})
    with pytest.raises(ValueError, match="The prior of shape must be one of"):
        HierarchicalSurvival("days", "died", "site", ["sepsis"],
                             priors={"shape": {"dist": "InverseGammaVariance", "alpha": 1, "beta": 1}})
    data = simulate(n=1000, n_groups=10, seed=9)
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"], priors={"shape": bugs})
    model.fit(data, draws=300, tune=300, chains=2, seed=4)
    assert model.sampling_["backend"] == "kernel"
    assert "log_shape" not in model.idata_.posterior and "shape" in model.summary()["parameter"].to_list()
    # the simulated shape 1.3 inside a 99% interval
    low, high = np.quantile(model.idata_.posterior["shape"].values, [0.005, 0.995])
    assert low < 1.3 < high
    assert "Gamma(1, 0.001) for the Weibull shape (vague)" in model.methods_text()
    assert model.describe_priors().set_index("parameter").loc["shape", "distribution"] == "Gamma(1, 0.001)"
    loaded = HierarchicalSurvival.load(model.save(tmp_path / "gamma"))
    assert loaded.priors_["shape"] == bugs and "Gamma(1, 0.001)" in loaded.methods_text()
    rows = pd.DataFrame({"site": ["S2"], "sepsis": [1]})
    pd.testing.assert_frame_equal(loaded.predict(rows, times=[3.0]), model.predict(rows, times=[3.0]))


def test_fixed_baselines_fit_predict_refuse_and_round_trip(tmp_path):
    "group_intercepts='fixed': each site its own baseline; what needs a between-group SD or a new site is refused."
    data = simulate(n=900, n_groups=8, sigma=1.0, seed=12)
    before = data.copy()
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"], group_intercepts="fixed")
    assert model.fit(data, draws=400, tune=400, chains=2, seed=2) is model
    pd.testing.assert_frame_equal(data, before)
    assert model.sampling_["backend"] in ("jax", "numba")
    assert "sigma_group" not in model.idata_.posterior and "intercept" not in model.idata_.posterior
    assert model.summary()["parameter"].to_list() == ["shape", "beta[sepsis]"]
    assert len(model.summary(include_groups=True)) == 2 + 8
    gate = model.check_convergence(ess_min=200)
    assert sum(name.startswith("group_intercept[") for name in gate["parameter"]) == 8
    ratios = model.hazard_ratios()
    assert ratios.loc[0, "low"] < np.exp(0.7) < ratios.loc[0, "high"]
    with pytest.raises(ValueError, match="no median hazard ratio"):
        model.median_hazard_ratio()
    with pytest.raises(ValueError, match="no between-group SD"):
        model.group_effects()
    rows = pd.DataFrame({"site": ["S1", "S5"], "sepsis": [1, 1]}, index=["a", "b"])
    curve = model.predict(rows, times=[1, 5])
    assert len(curve) == 4 and curve.loc["a", "mean"].is_monotonic_decreasing
    with pytest.raises(CohortError, match="cannot predict a `site` not in the fit: 1 row of 1 group the fit did not see"):
        model.predict(rows.assign(site=["S1", "NEW"]))
    loaded = HierarchicalSurvival.load(model.save(tmp_path / "fixed"))
    assert loaded.group_intercepts == "fixed" and "sigma_group" not in loaded.priors_
    pd.testing.assert_frame_equal(loaded.predict(rows, times=[1, 5]), curve)
    assert "group_intercepts='fixed'" in repr(loaded)
    text = model.methods_text(names={"site": "hospital"})
    assert "a separate baseline hazard for each hospital, not pooled (fixed stratum effects)" in text
    assert "frailty" not in text


def test_fixed_baselines_refuse_a_predictor_constant_within_every_group():
    data = simulate(n=400, n_groups=6, seed=13)
    data["teaching"] = data["site"].isin(["S0", "S1", "S2"]).astype(int)   # a site-level characteristic
    model = HierarchicalSurvival("days", "died", "site", ["sepsis", "teaching"], group_intercepts="fixed")
    with pytest.raises(CohortError, match="predictor `teaching` does not vary within any `site`") as error:
        model.fit(data)
    assert "S0" not in str(error.value)   # names the column and the rule, never values
    with pytest.raises(ValueError, match="needs the Weibull baseline"):
        HierarchicalSurvival("days", "died", "site", ["sepsis"], baseline="piecewise", group_intercepts="fixed")
    with pytest.raises(ValueError, match="must be 'random'"):
        HierarchicalSurvival("days", "died", "site", ["sepsis"], group_intercepts="unpooled")


def test_few_groups_take_the_tighter_frailty_prior(tmp_path):
    "With 5 groups or fewer the frailty SD's default prior is Half-Normal(0.5), said in the Methods; a study's own stays."
    few = simulate(n=600, n_groups=3, seed=8)
    model = HierarchicalSurvival("days", "died", "site", ["sepsis"]).fit(few, draws=200, tune=200, chains=2, seed=1)
    assert model.priors_["sigma_group"] == {"dist": "HalfNormal", "sigma": 0.5} and model.few_groups_ == 3
    text = model.methods_text()
    assert "With 3 sites the data barely identify the between-site standard deviation" in text, text
    # independently: 1.96 x 0.5 on the log-hazard scale, a median hazard ratio of exp(0.954 x 0.98)
    assert "below 0.98 on the log-hazard scale, a median hazard ratio of 2.55" in text, text
    assert "With 3 centres the data" in model.methods_text(names={"site": "centre"}, group_plural="centres")
    again = HierarchicalSurvival.load(model.save(tmp_path / "few"))
    assert again.priors_ == model.priors_ and again.few_groups_ == 3
    own = HierarchicalSurvival("days", "died", "site", ["sepsis"], priors={"sigma_group": {"sigma": 1.0}})
    assert own.fit(few, draws=100, tune=100, chains=1).priors_["sigma_group"]["sigma"] == 1.0
    assert not getattr(own, "few_groups_", None)
    # six groups: the default
    assert HierarchicalSurvival("days", "died", "site", ["sepsis"]).fit(
        simulate(n=600, n_groups=6), draws=100, tune=100, chains=1).priors_["sigma_group"]["sigma"] == 1.0


def test_a_constant_predictor_is_refused(data):
    with pytest.raises(CohortError, match=r"predictor `sepsis` takes one value in all 800 rows"):
        HierarchicalSurvival("days", "died", "site", ["sepsis"]).fit(data.assign(sepsis=1), draws=10, tune=10)
