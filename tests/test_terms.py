"""clinpaper.terms against independent computations: patsy's natural cubic regression splines (the same
function space, another parametrization), finite differences, Harrell's formula (RMS eq. 2.25) worked by
hand, R's type-7 quantile written out and Hmisc's small-sample rule, a logistic model fitted by statsmodels
on patsy's spline (the same fitted curve), and a JSON round trip. Also the contracts (column names, inputs
unchanged, the same data give the same terms) and the error messages."""
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.api as sm
from scipy.special import expit

from clinpaper.core import CohortError, StudyError
from clinpaper.terms import (HARRELL_QUANTILES, Terms, format_knots, harrell_knots, partial_effect,
                             plot_partial_effects, rcs_basis)

matplotlib.use("Agg")


def harrell_term(x, knots, j):
    "The j-th non-linear term (1-based) of RMS eq. 2.25, written out, divided by (t_k - t_1)^2."
    t = list(map(float, knots))
    k = len(t)
    plus = lambda u: max(u, 0.0) ** 3
    value = (plus(x - t[j - 1]) - plus(x - t[k - 2]) * (t[k - 1] - t[j - 1]) / (t[k - 1] - t[k - 2])
             + plus(x - t[k - 1]) * (t[k - 2] - t[j - 1]) / (t[k - 1] - t[k - 2]))
    return value / (t[k - 1] - t[0]) ** 2


def harrell_row(x, knots):
    return [x] + [harrell_term(x, knots, j) for j in range(1, len(knots) - 1)]


def type7(values, p):
    "R's default quantile: with h = (n - 1) p, x[floor h] + (h - floor h)(x[floor h + 1] - x[floor h])."
    values = sorted(values)
    h = (len(values) - 1) * p
    j = math.floor(h)
    return values[j] + (h - j) * (values[min(j + 1, len(values) - 1)] - values[j])


def simulate(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.normal(65, 15, n).round()
    lactate = np.exp(rng.normal(np.log(1.6), 0.55, n)).round(2)
    pressure = rng.normal(70, 12, n).round(1)
    male = rng.binomial(1, 0.5, n)
    log_odds = -2 + 0.03 * (age - 65) + 1.1 * np.log(lactate / 1.6) + 0.0015 * (pressure - 75) ** 2 + 0.2 * male
    return pd.DataFrame({"age": age, "male": male, "lactate_max": lactate, "map_min": pressure,
                         "death": rng.binomial(1, expit(log_odds))})


DECLARED = [{"column": "age", "label": "Age (per 10 years)", "center": 65, "scale": 10},
            {"column": "male", "label": "Male sex"},
            {"column": "lactate_max", "label": "Lactate (mmol/L)", "spline": 4, "unit": "mmol/L"},
            {"column": "map_min", "label": "Mean arterial pressure (mmHg)", "spline": {"knots": 5}, "unit": "mmHg"}]


@pytest.fixture(scope="module")
def cohort():
    return simulate()


@pytest.fixture(scope="module")
def terms(cohort):
    return Terms.learn(DECLARED, cohort)


# (1) the basis spans the natural cubic splines with the same knots -----------------------------------------

@pytest.mark.parametrize("knots", [[1.0, 5.0, 9.0], [0.5, 2.0, 4.5, 7.0], [0.0, 1.0, 3.0, 6.0, 10.0],
                                   [-2.0, 0.0, 1.0, 2.5, 4.0, 8.0], [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]])
def test_basis_spans_patsy_natural_cubic_spline(knots):
    rng = np.random.default_rng(len(knots))
    low, high = knots[0], knots[-1]
    width = high - low
    x = np.r_[rng.uniform(low - 0.3 * width, high + 0.3 * width, 300), knots]   # beyond the outer knots too
    y = np.sin(3 * x / width) + 0.2 * (x / width) ** 2 + rng.normal(0, 0.2, len(x))

    def fitted(design):
        coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
        return design @ coefficients

    ours = np.column_stack([np.ones(len(x)), rcs_basis(x, knots)])
    natural = np.asarray(patsy.dmatrix("cr(x, knots=inner, lower_bound=low, upper_bound=high)",
                                       {"x": x, "inner": knots[1:-1], "low": low, "high": high}))
    assert np.linalg.matrix_rank(ours) == len(knots) == np.linalg.matrix_rank(natural)
    np.testing.assert_allclose(fitted(ours), fitted(natural), rtol=0, atol=1e-8)


# (2) linear beyond the boundary knots, f' and f'' continuous at the knots ----------------------------------

def test_linear_beyond_outer_knots_and_smooth_at_knots():
    knots = np.array([1.0, 2.5, 4.0, 8.0, 12.0])
    coefficients = np.array([0.4, -1.0, 3.0, -2.5])
    curve = lambda u: rcs_basis(np.atleast_1d(u), knots) @ coefficients
    h = 1e-3
    first = lambda u: (curve(u + h) - curve(u - h)) / (2 * h)
    second = lambda u: (curve(u + h) - 2 * curve(u) + curve(u - h)) / h ** 2
    below, above = np.linspace(-20, knots[0] - 0.01, 30), np.linspace(knots[-1] + 0.01, 40, 30)
    for side in (below, above):
        assert np.abs(second(side)).max() < 1e-4
        slopes = first(side)
        np.testing.assert_allclose(slopes, slopes[0], atol=1e-6)
    assert np.allclose(rcs_basis(below, knots)[:, 1:], 0)   # below t1 the non-linear terms are 0
    for knot in knots:
        np.testing.assert_allclose(first(knot - 2 * h), first(knot + 2 * h), atol=1e-2)
        np.testing.assert_allclose(second(knot - 2 * h), second(knot + 2 * h), atol=2e-2 * max(1, abs(second(knot))))
    # the third derivative jumps at an inner knot: a cubic spline, not one cubic polynomial
    third = lambda u: (second(u + 0.05) - second(u - 0.05)) / 0.1
    assert abs(third(knots[2] + 0.2) - third(knots[2] - 0.2)) > 1e-3


def test_missing_values_give_missing_rows():
    basis = rcs_basis(pd.Series([np.nan, 2.0, np.nan]), [0.0, 1.0, 3.0, 4.0])
    assert np.isnan(basis[[0, 2]]).all() and np.isfinite(basis[1]).all()


# (3) Harrell's formula by hand ------------------------------------------------------------------------------

def test_basis_matches_harrells_formula_worked_by_hand():
    knots = [1, 2, 4, 7, 11]   # (t_k - t_1)^2 = 100
    # x = 5: (5-1)^3 = 64, (5-2)^3 = 27, (5-4)^3 = 1; the corrections are 0 below t_{k-1} = 7
    # x = 9: 8^3 - 2^3 * 10/4 = 492, 7^3 - 2^3 * 9/4 = 325, 5^3 - 2^3 * 7/4 = 111
    # x = 13: 12^3 - 6^3 * 10/4 + 2^3 * 6/4 = 1200, 11^3 - 6^3 * 9/4 + 2^3 * 5/4 = 855, 9^3 - 6^3 * 7/4 + 2^3 * 3/4 = 357
    expected = [[5, 0.64, 0.27, 0.01], [9, 4.92, 3.25, 1.11], [13, 12.0, 8.55, 3.57]]
    np.testing.assert_allclose(rcs_basis([5, 9, 13], knots), expected, rtol=1e-12)
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 15, 50)
    np.testing.assert_allclose(rcs_basis(x, knots), [harrell_row(v, knots) for v in x], rtol=1e-10, atol=1e-12)


# (4) knots: numpy's and R's quantiles, Hmisc's small-sample rule --------------------------------------------

BOOK = {3: [.10, .50, .90], 4: [.05, .35, .65, .95], 5: [.05, .275, .50, .725, .95],
        6: [.05, .23, .41, .59, .77, .95], 7: [.025, .1833, .3417, .50, .6583, .8167, .975]}


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7])
def test_knots_at_harrells_quantiles(k):
    np.testing.assert_allclose(HARRELL_QUANTILES[k], BOOK[k], atol=5e-5)
    rng = np.random.default_rng(k)
    x = np.r_[rng.lognormal(0.5, 0.6, 500), [np.nan] * 20]
    knots = harrell_knots(x, k)
    observed = x[~np.isnan(x)]
    np.testing.assert_allclose(knots, [type7(observed, p) for p in HARRELL_QUANTILES[k]], rtol=1e-12)
    np.testing.assert_allclose(knots, np.quantile(observed, BOOK[k]), rtol=2e-3 if k == 7 else 1e-12)


@pytest.mark.parametrize("n,k", [(30, 3), (60, 4), (99, 5)])
def test_small_sample_rule(n, k):
    rng = np.random.default_rng(n)
    x = pd.Series(rng.gamma(2.0, 1.5, n), name="creatinine")
    ordered = np.sort(x.to_numpy())
    expected = [ordered[4]] + [type7(ordered, p) for p in HARRELL_QUANTILES[k][1:-1]] + [ordered[n - 5]]
    np.testing.assert_allclose(harrell_knots(x, k), expected, rtol=1e-12)


def test_hundred_values_use_the_quantiles():
    x = np.random.default_rng(2).normal(size=100)
    np.testing.assert_allclose(harrell_knots(x, 4), np.quantile(x, BOOK[4]), rtol=1e-12)


# (5) partial effects --------------------------------------------------------------------------------------

def test_partial_effect_is_exp_of_the_basis_difference(terms, cohort):
    rng = np.random.default_rng(11)
    names = terms.spec("lactate_max")["columns"]
    knots = terms.spec("lactate_max")["knots"]
    beta = rng.normal(0, 0.5, (7, len(names)))
    grid, reference = [0.5, 1.0, 2.0, 6.0], 1.5
    effect = partial_effect(terms, "lactate_max", {n: beta[:, i] for i, n in enumerate(names)}, grid=grid,
                            reference=reference, prob=0.8)
    by_hand = np.array([[sum(b * (u - r) for b, u, r in zip(draw, harrell_row(g, knots), harrell_row(reference, knots)))
                         for draw in beta] for g in grid])   # grid x draws of log odds ratios
    np.testing.assert_allclose(effect["odds_ratio"], np.exp(np.median(by_hand, axis=1)), rtol=1e-10)
    np.testing.assert_allclose(effect["low"], np.exp([type7(row, 0.1) for row in by_hand]), rtol=1e-10)
    np.testing.assert_allclose(effect["high"], np.exp([type7(row, 0.9) for row in by_hand]), rtol=1e-10)
    assert effect.attrs == {"column": "lactate_max", "label": "Lactate (mmol/L)", "unit": "mmol/L",
                            "reference": 1.5, "prob": 0.8}


def test_partial_effect_of_a_linear_predictor(terms):
    draws = pd.DataFrame({"age": [0.2, 0.3, 0.5], "unrelated": [9.0, 9.0, 9.0]})
    effect = partial_effect(terms, "age", draws, grid=[45, 65, 95], reference=65)
    np.testing.assert_allclose(effect["odds_ratio"], np.exp(0.3 * np.array([-2.0, 0.0, 3.0])), rtol=1e-12)
    default = partial_effect(terms, "age", draws)
    assert len(default) == 100
    np.testing.assert_allclose(default["value"].iloc[[0, -1]], terms.spec("age")["range"], rtol=1e-12)


def test_partial_effect_equals_the_curve_of_a_model_fitted_on_patsys_spline(terms, cohort):
    "MLE is invariant to the basis: our columns and patsy's cr give the same fitted curve of lactate."
    ours = sm.add_constant(terms.transform(cohort))
    fit = sm.GLM(cohort["death"], ours, family=sm.families.Binomial()).fit(tol=1e-12)
    knots = terms.spec("lactate_max")["knots"]
    other = cohort.assign(age=(cohort["age"] - 65) / 10)
    formula = ("death ~ age + male + cr(lactate_max, knots=inner, lower_bound=low, upper_bound=high, "
               "constraints='center') + cr(map_min, knots=map_inner, lower_bound=map_low, upper_bound=map_high, "
               "constraints='center')")
    map_knots = terms.spec("map_min")["knots"]
    env = {"inner": knots[1:-1], "low": knots[0], "high": knots[-1],
           "map_inner": map_knots[1:-1], "map_low": map_knots[0], "map_high": map_knots[-1]}
    outcome, design = patsy.dmatrices(formula, other, eval_env=patsy.EvalEnvironment([env]), return_type="dataframe")
    theirs = sm.GLM(outcome, design, family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(fit.fittedvalues, theirs.fittedvalues, rtol=1e-6)
    grid = np.linspace(0.3, 8.0, 25)
    reference = terms.spec("lactate_max")["reference"]
    at_estimate = partial_effect(terms, "lactate_max", {n: [fit.params[n]] for n in terms.columns}, grid=grid)
    frame = lambda lactate: pd.DataFrame({"death": 0, "age": 0.0, "male": 0, "lactate_max": lactate,
                                          "map_min": 70.0})
    new = patsy.build_design_matrices([design.design_info], frame(np.r_[grid, reference]))[0]
    log_odds = np.asarray(new) @ theirs.params.to_numpy()
    np.testing.assert_allclose(np.log(at_estimate["odds_ratio"]), log_odds[:-1] - log_odds[-1], atol=1e-6)


# (6) saved and read back ----------------------------------------------------------------------------------

def test_round_trip_through_json_reproduces_transform(terms, cohort):
    text = json.dumps(terms.to_dict(), allow_nan=False)   # JSON-clean: no NaN, no numpy types
    again = Terms.from_dict(json.loads(text))
    assert again == terms and again.to_dict() == terms.to_dict()
    new = simulate(50, seed=9).drop(columns="death")
    new.loc[[0, 3], "lactate_max"] = np.nan
    new.loc[1, "map_min"] = 200.0   # beyond the knots
    pd.testing.assert_frame_equal(again.transform(new), terms.transform(new), check_exact=True)
    assert again.columns == terms.columns and again.splined == terms.splined
    assert again.methods_text() == terms.methods_text()


def test_contract(terms, cohort):
    copy = cohort.copy()
    frame = terms.transform(cohort)
    pd.testing.assert_frame_equal(cohort, copy)   # the input is unchanged
    assert frame.index.equals(cohort.index)
    assert terms.columns == ["age", "male", "lactate_max", "lactate_max_rcs1", "lactate_max_rcs2",
                             "map_min", "map_min_rcs1", "map_min_rcs2", "map_min_rcs3"]
    assert list(frame.columns) == terms.columns and terms.splined == ["lactate_max", "map_min"]
    assert terms.predictors == ["age", "male", "lactate_max", "map_min"]
    np.testing.assert_allclose(frame["age"], (cohort["age"] - 65) / 10)
    np.testing.assert_allclose(frame["male"], cohort["male"])
    np.testing.assert_allclose(frame["lactate_max"], cohort["lactate_max"])   # the raw value
    assert Terms.learn(DECLARED, cohort) == terms   # the same data, the same terms
    spec = terms.spec("map_min")
    assert spec["reference"] == float(np.median(cohort["map_min"])) and spec["knot_rule"] == "harrell"
    assert spec["n"] == len(cohort) and len(spec["knots"]) == 5
    spec["knots"][0] = -1.0   # a copy
    assert terms.spec("map_min")["knots"][0] != -1.0
    # a linear term keeps its column's name (the model frame's column); a spline's further terms are identifiers
    values = np.linspace(60.0, 140.0, 200)
    odd = Terms.learn([{"column": "heart rate (max)", "spline": 3}, {"column": "2nd_lactate"}, {"column": "lambda"}],
                      pd.DataFrame({"heart rate (max)": values, "2nd_lactate": values / 40, "lambda": np.arange(200) % 2}))
    assert odd.columns == ["heart rate (max)", "heart_rate__max__rcs1", "2nd_lactate", "lambda"]
    assert odd.columns[1].isidentifier()


def test_centre_and_scale_apply_to_the_whole_spline(cohort):
    declared = [{"column": "map_min", "label": "MAP", "spline": 4, "center": 70, "scale": 10}]
    frame = Terms.learn(declared, cohort).transform(cohort)
    knots = harrell_knots(cohort["map_min"], 4)
    expected = np.array([harrell_row(v, knots) for v in cohort["map_min"]])
    np.testing.assert_allclose(frame.to_numpy(), np.column_stack([(expected[:, 0] - 70) / 10, expected[:, 1:] / 10]),
                               rtol=1e-9, atol=1e-12)


# methods text ---------------------------------------------------------------------------------------------

def test_methods_text_for_several_studies(cohort, terms):
    lactate, pressure = (format_knots(terms.spec(c)["knots"]) for c in ("lactate_max", "map_min"))
    assert terms.methods_text({"lactate_max": "lactate", "map_min": "mean arterial pressure"}) == (
        "Lactate and mean arterial pressure were modelled with restricted cubic splines: lactate with 4 knots at "
        "Harrell's default quantiles (5th, 35th, 65th and 95th percentiles: "
        f"{', '.join(lactate[:3])} and {lactate[3]} mmol/L) and mean arterial pressure with 5 knots at Harrell's "
        f"default quantiles (5th, 27.5th, 50th, 72.5th and 95th percentiles: {', '.join(pressure[:4])} and "
        f"{pressure[4]} mmHg); the other continuous predictor (age) entered linearly.")
    linear = Terms.learn([{"column": "age", "label": "Age"}, {"column": "map_min", "label": "MAP"}], cohort)
    assert linear.methods_text() == "The continuous predictors (age and MAP) entered the model linearly."
    assert Terms.learn([{"column": "male", "label": "Male sex"}], cohort).methods_text() == ""
    explicit = Terms.learn([{"column": "map_min", "label": "Lowest MAP (mmHg)", "unit": "mmHg",
                             "spline": {"knots": [50, 65, 80, 95]}}, {"column": "age", "label": "Age"},
                            {"column": "male", "label": "Male"}], cohort)
    assert explicit.methods_text() == ("Lowest MAP was modelled with a restricted cubic spline with 4 knots at "
                                       "values set in advance (50, 65, 80 and 95 mmHg); the other continuous "
                                       "predictor (age) entered linearly.")
    assert explicit.spec("map_min")["knot_rule"] == "explicit"
    seven = Terms.learn([{"column": "lactate_max", "label": "Lactate", "spline": 7}], cohort).methods_text()
    assert "(2.5th, 18.3rd, 34.2nd, 50th, 65.8th, 81.7th and 97.5th percentiles: " in seven
    assert format_knots([0.87, 1.42, 2.1, 4.33]) == ["0.9", "1.4", "2.1", "4.3"]


# the figure -----------------------------------------------------------------------------------------------

def test_plot_partial_effects(terms):
    draws = {name: np.random.default_rng(1).normal(0, 0.1, 200) for name in terms.columns}
    effects = {"Lactate (mmol/L)": partial_effect(terms, "lactate_max", draws),
               "MAP (mmHg)": partial_effect(terms, "map_min", draws)}
    figure = plot_partial_effects(effects, ncols=1, sharey=False)
    assert isinstance(figure, matplotlib.figure.Figure) and len(figure.axes) == 2
    assert all(ax.get_yscale() == "log" for ax in figure.axes)
    assert figure.axes[1].get_xlabel() == "MAP (mmHg)" and figure.axes[1].get_ylabel() == "Odds ratio (95% CrI)"
    assert figure.axes[0].collections   # the band
    matplotlib.pyplot.close(figure)


# (7) errors -----------------------------------------------------------------------------------------------

BAD_DECLARATIONS = [
    ({"spline": 2}, StudyError, "must be a number of knots from 3 to 7"),
    ({"spline": True}, StudyError, "must be a number of knots from 3 to 7"),
    ({"spline": {"knots": 8}}, StudyError, "from 3 to 7"),
    ({"spline": {"knots": [1, 2, 3, 4, 5, 6, 7, 8]}}, StudyError, "3 to 7 knots"),
    ({"spline": {"knots": [1, 1, 2]}}, StudyError, "strictly increasing"),
    ({"spline": {"knots": [1, "2", 3]}}, StudyError, "`spline: {knots: [0.9, 1.4, 2.1, 4.3]}`"),
    ({"spline": {"knot": 4}}, StudyError, "must have the one key `knots`"),
    ({"spline": {"knots": [10.0, 20.0, 30.0]}}, CohortError, "collinear in the data"),
    ({"scale": -1}, StudyError, "must be greater than 0"),
    ({"center": "mean"}, StudyError, "`model.predictors[0] (lactate_max).center` must be a finite number"),
    ({"reference": float("nan")}, StudyError, "must be a finite number"),
    ({"label": 3}, StudyError, "must be texts"),
]


@pytest.mark.parametrize("extra,error,message", BAD_DECLARATIONS)
def test_bad_declarations(cohort, extra, error, message):
    with pytest.raises(error) as raised:
        Terms.learn([{"column": "lactate_max", "label": "Lactate", **extra}], cohort)
    assert message in str(raised.value)


def test_bad_data(cohort):
    with pytest.raises(CohortError, match=r"`gcs` has 3 distinct values \(2,000 values not missing\), fewer than the 4"):
        Terms.learn([{"column": "gcs", "spline": 4}], cohort.assign(gcs=np.resize([3.0, 8.0, 15.0], len(cohort))))
    with pytest.raises(CohortError, match="infinite in 1 of 2,000 values"):
        Terms.learn([{"column": "age"}], cohort.assign(age=np.r_[np.inf, cohort["age"].iloc[1:]]))
    with pytest.raises(CohortError, match="must hold numbers"):
        Terms.learn([{"column": "age"}], cohort.assign(age=cohort["age"].astype(str)))
    with pytest.raises(StudyError, match="holds only 0 and 1"):
        Terms.learn([{"column": "male", "spline": 3}], cohort)
    with pytest.raises(StudyError, match="names 'lactate', which is not a column"):
        Terms.learn([{"column": "lactate"}], cohort)
    with pytest.raises(StudyError, match="needs a `column`"):
        Terms.learn([{"label": "Age"}], cohort)
    with pytest.raises(TypeError, match="as a pandas DataFrame"):
        Terms.learn(DECLARED, cohort.to_dict())
    small = cohort.head(8)
    with pytest.raises(CohortError, match="has 8 values not missing; a spline needs at least 10"):
        Terms.learn([{"column": "lactate_max", "spline": 3}], small)


def test_bad_use(terms, cohort):
    with pytest.raises(CohortError, match=r"lack the column\(s\) 'lactate_max'"):
        terms.transform(cohort.drop(columns="lactate_max"))
    with pytest.raises(CohortError, match="must hold numbers"):
        terms.transform(cohort.assign(map_min="low"))
    with pytest.raises(ValueError, match="is not a predictor of these terms; they are age, male, lactate_max, map_min"):
        terms.spec("creatinine_max")
    draws = {name: np.zeros(10) for name in terms.columns}
    with pytest.raises(ValueError, match="lacks the draws of 'map_min_rcs3'"):
        partial_effect(terms, "map_min", {k: v for k, v in draws.items() if k != "map_min_rcs3"})
    with pytest.raises(ValueError, match="a probability such as 0.95"):
        partial_effect(terms, "map_min", draws, prob=1.0)
    with pytest.raises(ValueError, match="finite"):
        partial_effect(terms, "map_min", {**draws, "map_min": np.full(10, np.nan)})
    with pytest.raises(TypeError, match="must be a Terms"):
        partial_effect(terms.to_dict(), "map_min", draws)
    with pytest.raises(ValueError, match="Not a saved Terms"):
        Terms.from_dict({"predictors": []})
    damaged = terms.to_dict()
    damaged["predictors"][3]["knots"] = [3.0, 2.0, 1.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="predictor 3 has knots that are not increasing numbers"):
        Terms.from_dict(damaged)
    damaged = terms.to_dict()
    del damaged["predictors"][0]["scale"]
    with pytest.raises(ValueError, match="predictor 0 must have the keys"):
        Terms.from_dict(damaged)
    with pytest.raises(ValueError, match="must be finite and strictly increasing"):
        rcs_basis([1.0], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="at least 3 numbers"):
        rcs_basis([1.0], [1.0, 2.0])
