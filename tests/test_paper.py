"""The paper layer's claims, guards and summary policy, tested in both directions on constructed
estimates (milliseconds each): the words a manuscript prints follow the numbers, never the demo."""
import json

import numpy as np
import pandas as pd
import pytest

from clinpaper.config import load_study
from clinpaper.paper import Paper
from conftest import STUDY, TEMPLATES


def open_paper(tmp_path, *overrides, study=STUDY):
    return Paper(load_study(study, overrides), tmp_path, glue=False)


def recorded(tmp_path) -> dict:
    return {k: v["text"] for k, v in json.loads((tmp_path / "results.json").read_text()).items()}


def sigma_summary(median, low, high):
    return pd.DataFrame({"parameter": ["sigma_group"], "median": [median], "low": [low], "high": [high]})


@pytest.mark.parametrize("mor, verdict, words, absent", [
    ({"median": 1.45, "low": 1.30, "high": 1.62}, "differ", "hospitals differed in the odds", "cannot tell"),
    ({"median": 1.03, "low": 1.01, "high": 1.07}, "similar", "differed little, if at all", "hospitals differed in"),
    ({"median": 1.12, "low": 1.00, "high": 1.41}, "uncertain", "cannot tell whether hospitals differ", "differed"),
])
def test_variation_claim_follows_the_interval(tmp_path, mor, verdict, words, absent):
    paper = open_paper(tmp_path)
    claim = paper.between_groups(sigma_summary(0.3, 0.01, 0.6), mor)
    assert words in claim and absent not in claim
    shown = recorded(tmp_path)
    assert shown["variation_verdict"] == verdict and shown["variation_claim"] == claim
    assert shown["sigma_group"] == "0.30 (95% CrI 0.01 to 0.60)"   # the median, with its equal-tailed CrI
    assert "HDI" not in " ".join(shown.values())


def test_variation_claim_uses_the_studys_words_and_threshold(tmp_path):
    study = load_study(TEMPLATES / "hospital-variation" / "study.yaml")
    study["group"] = {**study["group"], "label": "Institution", "plural": "institutions"}
    study["outcome"] = {**study["outcome"], "label": "Death during follow-up"}
    study["model"] = {**study["model"], "relevant_median_odds_ratio": 1.5}
    paper = Paper(study, tmp_path, glue=False)
    claim = paper.between_groups(sigma_summary(0.3, 0.1, 0.6), {"median": 1.45, "low": 1.30, "high": 1.62})
    assert claim.startswith("These data cannot tell whether institutions differ") and "1.5" in claim
    assert "odds of death during follow-up" in claim and "hospital" not in claim
    assert "exceeds 1.5" in recorded(tmp_path)["methods_variation"]


def test_threshold_of_the_study_everywhere(tmp_path):
    paper = open_paper(tmp_path, "small_count_threshold=5")
    assert paper.threshold_text == "<5"
    assert [paper.mask(n) for n in (0, 3, 4, 5, 11)] == ["0", "<5", "<5", "5", "11"]


def test_separation_withholds_the_odds_ratio_with_a_reason(tmp_path):
    paper = open_paper(tmp_path)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"sepsis": rng.integers(0, 2, 400), "age": rng.normal(0, 1, 400)})
    data["death_in_hospital"] = np.where(data["sepsis"] == 1, 0, rng.integers(0, 2, 400))   # no death with sepsis
    ratios = pd.DataFrame({"predictor": ["sepsis", "age"], "odds_ratio": [0.01, 1.3],
                           "low": [0.001, 1.1], "high": [0.2, 1.5]})
    reasons = paper.ratio_guards(data, ratios)
    assert reasons["age"] is None
    assert "no patients with sepsis at admission had in-hospital death" in reasons["sepsis"]
    wide = ratios.assign(low=[0.001, 0.01], high=[0.2, 50.0])
    assert "50-fold" in paper.ratio_guards(data.assign(death_in_hospital=rng.integers(0, 2, 400)), wide)["age"]


def test_tables_name_parameters_in_words(tmp_path):
    paper = open_paper(tmp_path)
    summary = pd.DataFrame({"parameter": ["intercept", "beta[age]", "beta[sepsis]", "sigma_group"],
                            "mean": 0.1, "sd": 0.2, "median": 0.1, "low": -0.3, "high": 0.5,
                            "r_hat": 1.001, "ess_bulk": 1500.0, "ess_tail": 1400.0})
    shown = paper.posterior_table(summary)
    assert list(shown.columns) == ["Parameter", "Median", "95% CrI", "SD", "R-hat", "Bulk ESS", "Tail ESS"]
    assert shown["Parameter"].tolist() == ["Intercept", "Coefficient of Age (per 10 years)",
                                           "Coefficient of Sepsis at admission",
                                           "Between-hospital SD of the intercepts"]
    gate = summary[["parameter", "r_hat", "ess_bulk", "ess_tail"]].assign(passed=[True, True, False, True])
    text = paper.convergence_table(gate).to_string()
    for raw in ("r_hat", "ess_bulk", "beta[", "True", "False", "sigma_group"):
        assert raw not in text, raw


def test_intervals_never_nest():
    paper = Paper(load_study(STUDY), ".", glue=False)
    assert paper.interval(2.214, 2.01, 2.42) == "2.21 (95% CrI 2.01 to 2.42)"
    assert paper.interval(2.214, 2.01, 2.42, inside=True) == "2.21, 95% CrI 2.01 to 2.42"


@pytest.mark.parametrize("prevalence, report_at, high", [(0.65, 0.65, 0.95), (0.08, 0.08, 0.5), (0.3, 0.3, 0.6)])
def test_decision_curve_is_read_where_the_outcome_is(tmp_path, prevalence, report_at, high):
    "A study that fixes no threshold is discussed at its prevalence, on a curve that reaches past it."
    study = load_study(STUDY)
    study["evaluation"] = {"decision_curve": {"low": 0.01, "step": 0.01}}
    (tmp_path / "data").mkdir()
    n = 1000
    pd.DataFrame({"death_in_hospital": (np.arange(n) < prevalence * n).astype(int)}).to_parquet(
        tmp_path / "data" / "analysis.parquet")
    thresholds, at = Paper(study, tmp_path, glue=False).decision_thresholds()
    assert at == pytest.approx(report_at) and thresholds[-1] == pytest.approx(high)
    study["evaluation"]["decision_curve"].update(report_at=0.2, high=0.4)   # the study's own choice wins
    thresholds, at = Paper(study, tmp_path, glue=False).decision_thresholds()
    assert at == pytest.approx(0.2) and thresholds[-1] == pytest.approx(0.4)


def test_no_template_types_the_threshold_an_hdi_or_a_tool_instruction():
    "Every notebook and manuscript of every template: the threshold glued, one interval kind, no command."
    files = [*TEMPLATES.glob("*/*.ipynb"), *TEMPLATES.glob("*/manuscript.md")]
    assert len(files) >= 12
    for path in files:
        text = path.read_text()
        for typed in ("<11", "HDI", "hdi_", "-p validate_against", "rerun with", "Multi-centre cohort study"):
            assert typed not in text, (path.relative_to(TEMPLATES), typed)
