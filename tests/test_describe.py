"""clinpaper.describe on a real dataset (the Rossi recidivism data that ships with lifelines),
checked against numpy/pandas computations and against the `tableone` package; masking; the flow."""
import copy
import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clinpaper.describe import flow_table, format_table_one, table_one  # noqa: E402
from clinpaper.figures import plot_flow  # noqa: E402


@pytest.fixture(scope="module")
def rossi():
    lifelines = pytest.importorskip("lifelines")
    data = lifelines.datasets.load_rossi()
    data["age_band"] = pd.cut(data.age, [0, 19, 22, 26, 100], labels=["17-19", "20-22", "23-26", "27+"]).astype(str)
    data["prio_group"] = pd.cut(data.prio, [-1, 1, 3, 100], labels=["0-1", "2-3", "4+"]).astype(str)
    return data


COLUMNS = ["week", "age", "prio", "arrest", "race", "age_band"]


def tidy(t1):
    return t1.set_index(["variable", "level", "group"])


def test_against_pandas(rossi):
    t1 = tidy(table_one(rossi, columns=COLUMNS, group="fin", nonnormal=["prio"]))
    for fin in (0, 1):
        part = rossi[rossi.fin == fin]
        assert t1.loc[("n", "", str(fin)), "n"] == len(part)
        assert t1.loc[("age", "", str(fin)), "mean"] == pytest.approx(part.age.mean())
        assert t1.loc[("age", "", str(fin)), "sd"] == pytest.approx(part.age.std(ddof=1))
        assert t1.loc[("prio", "", str(fin)), "median"] == pytest.approx(part.prio.median())
        assert t1.loc[("prio", "", str(fin)), "q1"] == pytest.approx(part.prio.quantile(0.25))
        assert t1.loc[("arrest", 1, str(fin)), "percent"] == pytest.approx(100 * part.arrest.mean())
        assert t1.loc[("age_band", "27+", str(fin)), "n"] == (part.age_band == "27+").sum()
    # SMD by the textbook formulas, with numpy
    g0, g1 = rossi[rossi.fin == 0], rossi[rossi.fin == 1]
    smd_age = abs(g0.age.mean() - g1.age.mean()) / math.sqrt((g0.age.var() + g1.age.var()) / 2)
    assert t1.loc[("age", "", "Overall"), "smd"] == pytest.approx(smd_age)
    p0, p1 = g0.arrest.mean(), g1.arrest.mean()
    smd_arrest = abs(p0 - p1) / math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / 2)
    assert t1.loc[("arrest", 1, "Overall"), "smd"] == pytest.approx(smd_arrest)
    levels = ["17-19", "20-22", "23-26", "27+"]
    q0 = g0.age_band.value_counts(normalize=True)[levels].to_numpy()[1:]
    q1 = g1.age_band.value_counts(normalize=True)[levels].to_numpy()[1:]
    covariance = (np.diag(q0) - np.outer(q0, q0) + np.diag(q1) - np.outer(q1, q1)) / 2
    smd_band = math.sqrt((q0 - q1) @ np.linalg.solve(covariance, q0 - q1))
    assert t1.loc[("age_band", "17-19", "Overall"), "smd"] == pytest.approx(smd_band)
    assert t1.loc[("prio", "", "Overall"), "display"] == "median_iqr"
    assert t1.loc[("age", "", "Overall"), "display"] == "mean_sd"


def test_against_tableone_two_groups(rossi):
    tableone = pytest.importorskip("tableone")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = tableone.TableOne(rossi, columns=COLUMNS, categorical=["arrest", "race", "age_band"], groupby="fin",
                                      nonnormal=["prio"], pval=True, smd=True, ttest_equal_var=True)
    ours = table_one(rossi, columns=COLUMNS, group="fin", nonnormal=["prio"], p_values=True)
    by_variable = ours.groupby("variable").first()
    smd = reference.smd_table.iloc[:, 0].astype(float).abs()
    p_values = reference.htest_table["P-Value"].astype(float)
    for column in COLUMNS:
        assert by_variable.loc[column, "smd"] == pytest.approx(smd[column], rel=1e-9), column
        # for two groups one-way ANOVA equals the pooled t-test that tableone runs
        assert by_variable.loc[column, "p_value"] == pytest.approx(p_values[column], rel=1e-9), column


def test_against_tableone_three_groups(rossi):
    tableone = pytest.importorskip("tableone")
    columns = ["age", "week", "race", "age_band", "mar"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = tableone.TableOne(rossi, columns=columns, categorical=["race", "age_band", "mar"],
                                      groupby="prio_group", pval=True, smd=True)
    ours = table_one(rossi, columns=columns, group="prio_group", p_values=True).groupby("variable").first()
    largest = reference.smd_table.astype(float).abs().max(axis=1)
    p_values = reference.htest_table["P-Value"].astype(float)
    for column in columns:
        assert ours.loc[column, "smd"] == pytest.approx(largest[column], rel=1e-9), column
        assert ours.loc[column, "p_value"] == pytest.approx(p_values[column], rel=1e-9), column


def test_fisher_for_small_two_by_two():
    from scipy import stats
    data = pd.DataFrame({"ward": ["a"] * 12 + ["b"] * 12, "event": [1] * 1 + [0] * 11 + [1] * 6 + [0] * 6})
    t1 = table_one(data, columns=["event"], group="ward", p_values=True)
    # 7 events in 24 rows: the expected count of events per ward is 3.5 < 5
    expected = stats.fisher_exact([[11, 1], [6, 6]]).pvalue
    assert expected != pytest.approx(stats.chi2_contingency([[11, 1], [6, 6]]).pvalue)
    assert t1.p_value.iloc[-1] == pytest.approx(expected)
    assert t1.test.iloc[-1] == "Fisher's exact"


def test_weighted_equals_replicated(rossi):
    rng = np.random.default_rng(3)
    data = rossi.assign(w=rng.integers(1, 4, size=len(rossi)).astype(float))
    replicated = data.loc[data.index.repeat(data.w.astype(int))].reset_index(drop=True)
    weighted = tidy(table_one(data, columns=COLUMNS, group="fin", weights="w"))
    plain = tidy(table_one(replicated, columns=COLUMNS, group="fin"))
    for key in [("age", "", "1"), ("week", "", "Overall"), ("arrest", 1, "0"), ("age_band", "20-22", "1")]:
        for stat in ("mean", "percent", "median"):
            a, b = weighted.loc[key, stat], plain.loc[key, stat]
            if not (isinstance(a, float) and math.isnan(a)):
                assert a == pytest.approx(b), (key, stat)
    # weighted means and SMD are those of the replicated rows; the weighted variance uses the
    # reliability-weight formula, so it is close to (not equal to) the replicated one
    assert weighted.loc[("arrest", 1, "Overall"), "smd"] == pytest.approx(plain.loc[("arrest", 1, "Overall"), "smd"])
    assert weighted.loc[("age", "", "Overall"), "smd"] == pytest.approx(plain.loc[("age", "", "Overall"), "smd"], rel=0.01)


def test_inputs_unchanged_and_errors(rossi):
    before = rossi.copy()
    table_one(rossi, columns=COLUMNS, group="fin", categorical=["race"], nonnormal=["prio"])
    pd.testing.assert_frame_equal(rossi, before)
    with pytest.raises(ValueError, match="Unknown column"):
        table_one(rossi, columns=["age", "salary"])
    with pytest.raises(ValueError, match="also in `columns`"):
        table_one(rossi, columns=["age", "fin"], group="fin")


def test_format_masks_small_counts(rossi):
    small = rossi[(rossi.fin == 1) | (rossi.index < 25)]  # fin 0 keeps a handful of rows
    codebook = {"age": {"label": "Age", "unit": "years"}, "arrest": {"label": "Arrested"},
                "prio": {"label": "Prior convictions"}}
    t1 = table_one(small, columns=["age", "arrest", "prio", "age_band"], group="fin", nonnormal=["prio"])
    table = format_table_one(t1, codebook=codebook)
    assert list(table.columns) == ["Overall", "0", "1", "SMD"]
    n0 = int((small.fin == 0).sum())
    assert table.loc["n", "0"] == ("<11" if n0 < 11 else f"{n0:,}")
    arrests = int(small[small.fin == 0].arrest.sum())
    assert 0 < arrests < 11
    assert table.loc["Arrested, n (%)", "0"].startswith("<11 (<")
    assert table.loc["Age, years, mean (SD)", "Overall"] == f"{small.age.mean():.1f} ({small.age.std():.1f})"
    assert table.loc["Prior convictions, median [Q1, Q3]", "1"].startswith(f"{small[small.fin == 1].prio.median():.2f} [")
    # no count from 1 to 10 anywhere in the count cells
    for value in table.drop(columns="SMD").to_numpy().ravel():
        head = value.split(" ")[0]
        if head.replace(",", "").isdigit() and "(" in value:
            assert not 1 <= int(head.replace(",", "")) <= 10, value


FLOW = pd.DataFrame({"step": ["source", "first_stay", "adult"], "label": ["ICU stays in the source", "First ICU stay",
                     "Adults"], "n_remaining": [1200, 1000, 995], "n_removed": [0, 200, 5],
                     "reason": ["", "Repeat stays", "Younger than 18 years"]})


def test_flow_table_and_plot():
    shown = flow_table(FLOW)
    # the 5 adults removed are merged with the step before, so that 1,000 - 995 cannot give them away
    assert shown.Removed.tolist() == ["", "205"] and shown.Stays.tolist() == ["1,200", "995"]
    assert shown.Reason.tolist()[1] == "Repeat stays or younger than 18 years"
    assert flow_table(FLOW, threshold=5).Removed.tolist() == ["", "200", "5"]
    fig, ax = plt.subplots()
    before = copy.deepcopy(FLOW)
    assert plot_flow(FLOW, ax=ax) is ax
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "n = 995 stays" in texts and "Excluded: 205" in texts and "1,000" not in texts
    assert "Excluded: 5" not in texts and "<11" not in texts
    pd.testing.assert_frame_equal(FLOW, before)
    plt.close(fig)
