"""The demo paper from a flat analysis table: `clinpaper run --study book/studies/icu_flat.yaml`
on the CSV of the OMOP run's own analysis table gives the same cohort and, within Monte Carlo
error, the same estimates as the OMOP run."""
import json

import pandas as pd
import pytest

from conftest import ROOT, clinpaper

pytestmark = pytest.mark.xdist_group("paper")   # reuses the paper built by the session fixture


def test_flat_table_gives_the_omop_paper(paper, tmp_path):
    table = pd.read_parquet(paper["runs"] / "first" / "data" / "analysis.parquet")
    flat = tmp_path / "icu_flat.csv"
    table.to_csv(flat, index=False)
    runs = tmp_path / "runs"
    clinpaper("run", "--study", ROOT / "book" / "studies" / "icu_flat.yaml", "--cohort", flat,
              "--name", "flat", "--out", runs)
    omop = json.loads((paper["runs"] / "first" / "results.json").read_text())
    from_flat = json.loads((runs / "flat" / "results.json").read_text())
    for name in ("n_patients", "n_deaths", "n_hospitals", "mortality_percent"):
        assert from_flat[name]["text"] == omop[name]["text"], name
    assert from_flat["n_patients"]["value"] == len(table)
    # the same data and seed: the estimates agree within Monte Carlo error (the hospital codes
    # are categories in the flat table, so the sampler sees the groups in another order)
    for name in ("or_sepsis", "or_age", "or_chf", "median_odds_ratio", "apparent_auroc"):
        assert from_flat[name]["value"] == pytest.approx(omop[name]["value"], rel=0.03), name
    assert "flat analysis table" in from_flat["methods_cohort"]["text"]


def test_flat_study_refuses_a_missing_table(tmp_path):
    result = clinpaper("run", "--study", ROOT / "book" / "studies" / "icu_flat.yaml", "--cohort",
                       tmp_path / "none.csv", "--out", tmp_path / "runs", check=False)
    assert result.returncode == 2 and "flat analysis table does not exist" in result.stderr
