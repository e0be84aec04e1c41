"""clinpaper.sample_size against numbers that do not come from it: the published binary examples of R's
pmsampsize (Ensor; version 1.1.3, tests/testthat/test_bin.R and its help example, the Chagas disease
model of Riley et al. 2019, Stat Med 38:1276, part II), each criterion solved again by root-finding on
its definition (the shrinkage by iterating van Houwelingen's equation, the Nagelkerke difference,
statsmodels' interval for a proportion, van Smeden's MAPE equation), the C-statistic conversion by
scipy's quadrature, and the Methods sentence on a sweep of studies. The notebook
nbs/04h_sample_size.ipynb holds the other checks."""
import json
import math
import re

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from statsmodels.stats.proportion import proportion_confint

from clinpaper.core import CohortError, StudyError
from clinpaper.sample_size import (RESULT_KEYS, cox_snell_r2_from_c, expected_shrinkage, max_cox_snell_r2,
                                   riley_binary, sample_size_check, sample_size_sentence)

# pmsampsize 1.1.3, tests/testthat/test_bin.R: (R²_CS, parameters, prevalence) -> the sample size of criteria
# 1, 2, 3 and the final one, and their events per parameter. Test 4.1 is the help example and the Chagas
# example of Riley et al. 2019 (part II), whose abstract gives its EPP of 4.8.
PMSAMPSIZE_BINARY = [
    ("4.1", 0.288, 24, 0.174, (623, 662, 221, 662), (4.52, 4.8, 1.6, 4.8)),
    ("4.2", 0.55, 24, 0.174, (255, 532, 221, 532), (1.85, 3.86, 1.6, 3.86)),
    ("4.3", 0.288, 36, 0.174, (934, 992, 221, 992), (4.51, 4.79, 1.07, 4.79)),
    ("4.4", 0.288, 24, 0.25, (623, 590, 289, 623), (6.49, 6.15, 3.01, 6.49)),
]


@pytest.mark.parametrize("case, r2, parameters, prevalence, sizes, epp", PMSAMPSIZE_BINARY,
                         ids=[case[0] for case in PMSAMPSIZE_BINARY])
def test_pmsampsize_published(case, r2, parameters, prevalence, sizes, epp):
    result = riley_binary(prevalence, parameters, r2_cs=r2, mape_margin=None)   # pmsampsize's three criteria
    criteria = result["n_by_criterion"]
    assert (criteria["shrinkage"], criteria["optimism"], criteria["overall_risk"], result["n"]) == sizes
    by = result["epp_by_criterion"]
    assert [round(v, 2) for v in (by["shrinkage"], by["optimism"], by["overall_risk"], result["epp"])] == list(epp)


def test_chagas_published_epp_and_the_fourth_criterion():
    three = riley_binary(0.174, 24, r2_cs=0.288, mape_margin=None)
    assert round(three["epp"], 1) == 4.8                     # Riley et al. 2019, part II, abstract
    assert round(three["max_r2_cs"], 3) == 0.603             # pmsampsize's Max_Rsq
    assert round(three["r2_nagelkerke"], 3) == 0.477         # pmsampsize's Nag_Rsq (0.288 / 0.603)
    four = riley_binary(0.174, 24, r2_cs=0.288)
    mape_n = math.exp((-0.508 + 0.259 * math.log(0.174) + 0.504 * math.log(24) - math.log(0.05)) / 0.544)
    assert four["n_by_criterion"]["mape"] == math.ceil(mape_n) == 801
    assert (four["n"], four["deciding"], four["events"]) == (801, "mape", 140)


def shrinkage_by_iteration(n, parameters, r2):
    "van Houwelingen's S = 1 - P / LR with LR = -n ln(1 - R²/S), iterated to its fixed point."
    shrinkage = 1.0
    for _ in range(500):
        shrinkage = 1 + parameters / (n * np.log(1 - r2 / shrinkage))
    return shrinkage


def smallest_n(margin, high=1e9):
    "The smallest whole n with margin(n) >= 0 (margin grows with n): halve down from `high`, then brentq."
    low = high
    while margin(low) >= 0:
        low /= 2
    return int(np.ceil(optimize.brentq(margin, low, 2 * low, xtol=1e-10) - 1e-7))


def independent(prevalence, parameters, r2, target=0.9, delta=0.05, margin=0.05, mape=0.05):
    largest = 1 - np.exp(2 * (prevalence * np.log(prevalence) + (1 - prevalence) * np.log(1 - prevalence)))
    alpha = 2 * stats.norm.sf(1.96)

    def half_width(n):
        interval = proportion_confint(prevalence * n, n, alpha=alpha, method="normal")
        return np.max(np.abs(np.subtract(interval, prevalence)))   # statsmodels clips to [0, 1]

    def log_mape(n):
        return -0.508 + 0.259 * np.log(prevalence) + 0.504 * np.log(parameters) - 0.544 * np.log(n)

    return {"shrinkage": smallest_n(lambda n: shrinkage_by_iteration(n, parameters, r2) - target),
            "optimism": smallest_n(lambda n: delta - (r2 / shrinkage_by_iteration(n, parameters, r2) - r2) / largest),
            "overall_risk": smallest_n(lambda n: margin - half_width(n)),
            "mape": smallest_n(lambda n: np.log(mape) - log_mape(n))}


@pytest.mark.parametrize("prevalence, parameters, r2", [
    (0.174, 24, 0.288), (0.01, 8, 0.02), (0.05, 40, None), (0.3, 12, 0.15), (0.5, 3, 0.6), (0.8, 20, 0.25),
    (0.002, 60, None)])
def test_every_criterion_independently(prevalence, parameters, r2):
    result = riley_binary(prevalence, parameters, r2_cs=r2)
    anticipated = result["r2_cs"]
    assert result["n_by_criterion"] == independent(prevalence, parameters, anticipated)
    assert result["n"] == max(result["n_by_criterion"].values())
    assert result["events"] == math.ceil(result["n"] * prevalence - 1e-9)
    assert result["shrinkage_at_n"] == pytest.approx(shrinkage_by_iteration(result["n"], parameters, anticipated),
                                                     abs=1e-9)
    assert result["shrinkage_at_n"] >= 0.9
    assert json.loads(json.dumps(result)) == result and set(result) == set(RESULT_KEYS)


def test_anticipated_r2_sources():
    assert riley_binary(0.2, 10)["r2_cs"] == pytest.approx(0.15 * max_cox_snell_r2(0.2), rel=1e-12)
    assert riley_binary(0.2, 10, default_nagelkerke=0.3)["r2_nagelkerke"] == pytest.approx(0.3)
    assert riley_binary(0.2, 10, r2_nagelkerke=0.25)["r2_cs"] == pytest.approx(0.25 * max_cox_snell_r2(0.2))
    from_c = riley_binary(0.2, 10, c_statistic=0.75)
    assert (from_c["r2_source"], from_c["c_statistic"]) == ("c_statistic", 0.75)
    assert [riley_binary(0.2, 10, **kw)["r2_source"] for kw in ({}, {"r2_cs": 0.1}, {"r2_nagelkerke": 0.2})] == \
        ["default", "cox_snell", "nagelkerke"]


def quadrature_r2(c, phi):
    mu = np.sqrt(2) * stats.norm.ppf(c)
    a = np.log(phi / (1 - phi)) - mu ** 2 / 2
    event = integrate.quad(lambda x: stats.norm.pdf(x - mu) * -np.logaddexp(0, -(a + mu * x)), -np.inf, np.inf)[0]
    non_event = integrate.quad(lambda x: stats.norm.pdf(x) * -np.logaddexp(0, a + mu * x), -np.inf, np.inf)[0]
    return 1 - np.exp(-2 * (phi * event + (1 - phi) * non_event - (phi * np.log(phi) + (1 - phi) * np.log(1 - phi))))


@pytest.mark.parametrize("c", [0.55, 0.7, 0.81, 0.9, 0.97])
@pytest.mark.parametrize("phi", [0.01, 0.174, 0.5, 0.77])
def test_r2_from_c_statistic(c, phi):
    assert cox_snell_r2_from_c(c, phi) == pytest.approx(quadrature_r2(c, phi), abs=1e-7)
    assert cox_snell_r2_from_c(c, phi) < max_cox_snell_r2(phi)


def test_expected_shrinkage():
    for n in (100, 623, 5000):
        assert expected_shrinkage(n, parameters=24, r2_cs=0.288) == pytest.approx(
            shrinkage_by_iteration(n, 24, 0.288), abs=1e-10)
    with pytest.raises(StudyError, match="needs more patients than parameters"):
        expected_shrinkage(10, parameters=24, r2_cs=0.288)


@pytest.mark.parametrize("call, message", [
    (lambda: riley_binary(1.2, 10), "`prevalence` of riley_binary must lie strictly between 0 and 1"),
    (lambda: riley_binary(-0.1, 10), "got -0.1"),
    (lambda: riley_binary(0.2, 0), "`parameters` of riley_binary must be a whole number of at least 1"),
    (lambda: riley_binary(0.2, 10, r2_cs=0.65), "no model can reach a Cox-Snell R² of 0.632 or more"),
    (lambda: riley_binary(0.2, 10, r2_cs=0.1, r2_nagelkerke=0.2), "`r2_cs` and `r2_nagelkerke`"),
    (lambda: riley_binary(0.2, 10, c_statistic=0.5), "`c_statistic` of cox_snell_r2_from_c"),
    (lambda: riley_binary(0.2, 10, shrinkage=1.5), "`shrinkage` of riley_binary"),
    (lambda: riley_binary(0.2, 10, r2_cs=0.3, shrinkage=0.3), "not above the anticipated Cox-Snell R²"),
    (lambda: riley_binary(0.2, 10, prevalence_margin=0), "`prevalence_margin` of riley_binary"),
    (lambda: sample_size_check(50, 60, riley_binary(0.2, 10)), "`events` must be a count from 0 to n (50)"),
    (lambda: sample_size_check(0, 0, riley_binary(0.2, 10)), "the cohort is empty"),
])
def test_errors(call, message):
    with pytest.raises((StudyError, CohortError), match=re.escape(message)):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="must be a number, got str"):
        riley_binary("0.2", 10)
    with pytest.raises(TypeError, match="must be the dict that riley_binary returns"):
        sample_size_check(100, 10, {"n": 50})


def test_check():
    result = riley_binary(0.174, 24, r2_cs=0.288)
    assert sample_size_check(801, 140, result)["adequate"]
    assert not sample_size_check(800, 140, result)["adequate"]
    low = sample_size_check(2000, 139, result)     # patients enough, events too few
    assert (low["adequate"], low["n_shortfall"], low["events_shortfall"]) == (False, 0, 1)
    assert low["epp"] == pytest.approx(139 / 24) and low["prevalence"] == pytest.approx(139 / 2000)


STUDIES = [  # (prevalence, parameters, anticipated performance, unit, events word)
    (0.174, 24, {"r2_cs": 0.288}, "participants", "events"),
    (0.001, 150, {}, "ICU stays", "deaths"),
    (0.002, 120, {"c_statistic": 0.8}, "patients", "readmissions"),
    (0.45, 2, {"r2_nagelkerke": 0.3}, "women", "diagnoses"),
    (0.6, 300, {"r2_cs": 0.2, "mape_margin": None}, "admissions", "events"),
    (0.5, 1, {"r2_cs": 0.05}, "children", "cases"),
]


@pytest.mark.parametrize("prevalence, parameters, performance, unit, event_plural", STUDIES)
@pytest.mark.parametrize("scale", [0.0005, 0.3, 0.98, 1.0, 3.0])
def test_sentence_sweep(prevalence, parameters, performance, unit, event_plural, scale):
    "The Methods text for many studies and cohorts: every number it must give, and no masked count."
    result = riley_binary(prevalence, parameters, **performance)
    n = max(int(round(scale * result["n"])), 1)
    events = min(n, int(round(n * prevalence)))
    text = sample_size_sentence(result, n=n, events=events, unit=unit, event_plural=event_plural)
    check = sample_size_check(n, events, result)
    assert f"{parameters:,} candidate predictor parameter" in text
    for needed in result["n_by_criterion"].values():
        assert f"{needed:,}" in text
    assert f"therefore {result['n']:,} {unit} with {result['events']:,} {event_plural}" in text
    assert ("smaller than the minimum sample size" in text) == (not check["adequate"])
    assert ("met this requirement" in text) == check["adequate"]
    assert f"{len(result['n_by_criterion']) == 4 and 'four' or 'three'} criteria" in text
    assert not re.search(r"(?<![\d.])(0\.0|100\.0)%", text)    # a proportion inside (0, 1) never reads 0% or 100%
    assert "nan" not in text and "  " not in text
    assert text.endswith(".") and ".." not in text
    if 0 < events < 11:
        assert f"<11 {event_plural}" in text and f" {events} {event_plural}" not in text
        assert "per candidate predictor parameter), fewer" not in text
    if 0 < n < 11:
        assert f"<11 {unit}" in text and "expected at its size" not in text


def test_sentence_words():
    result = riley_binary(0.174, 24)
    text = sample_size_sentence(result, n=300, events=52, parameters_words="age, sex and lactate as a spline")
    assert "24 candidate predictor parameters (age, sex and lactate as a spline)" in text
    assert "set conservatively to 0.090, 15% of the largest value possible" in text
    shrinkage = shrinkage_by_iteration(300, 24, result["r2_cs"])
    assert f"a global shrinkage factor of {shrinkage:.2f} is expected at its size, against the target of 0.9" in text


@pytest.mark.parametrize("n, events", [(500, 1), (5000, 7), (90, 10), (9, 9), (10, 0), (2000, 11)])
def test_sentence_masks_small_counts(n, events):
    "Counts of 1 to 10 show as <11, and neither the EPP, the proportion nor the shrinkage gives them away."
    result = riley_binary(0.2, 12, r2_cs=0.1)
    text = sample_size_sentence(result, n=n, events=events, unit="stays", event_plural="deaths")
    cohort = text.split("The development cohort")[1]
    if 0 < events < 11:
        assert "<11 deaths" in cohort and f" {events} deaths" not in cohort
        assert "per candidate predictor parameter" not in cohort
        assert set(re.findall(r"[\d.]+%", cohort)) <= {"20.0%"}    # the anticipated proportion, not the cohort's
    else:
        assert f" {events:,} deaths" in cohort
    if 0 < n < 11:
        assert "<11 stays" in cohort and "expected at its size" not in cohort
    else:
        assert f"{n:,} stays" in cohort
