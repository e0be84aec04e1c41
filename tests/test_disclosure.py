"""Disclosure control that survives arithmetic: no masked count of Table 1 or of the cohort flow can be
worked out from what the same table shows, checked by an independent solver (integer programming on
the shown cells and the sums a reader knows) on randomized small tables."""
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import LinearConstraint, milp

from clinpaper.comparative import mask_table_one
from clinpaper.describe import flow_table, format_table_one, table_one

HIDDEN = "–"
NUMBER = re.compile(r"^([\d,]+)(?: \((\d+\.\d)%\))?$")
MASKED = re.compile(r"^<(\d+)(?: \(<(\d+\.\d)%\))?$")


class Reader:
    "What a reader of a table knows: exact shown counts, masked ones between 1 and threshold - 1, the rest unknown."

    def __init__(self, threshold):
        self.threshold, self.cells, self.equations = threshold, {}, []

    def cell(self, key, text):
        text = str(text)
        if text == HIDDEN or text is None:
            self.cells[key] = ("unknown", None)
        elif MASKED.match(text):
            assert MASKED.match(text).group(1) == str(self.threshold), text
            self.cells[key] = ("masked", None)
        else:
            found = NUMBER.match(text)
            assert found, f"not a count: {text!r}"
            self.cells[key] = ("shown", int(found.group(1).replace(",", "")))

    def unknown(self, key):
        self.cells[key] = ("unknown", None)

    def derivable(self) -> dict:
        "Masked cells whose every value consistent with the table is the same whole number, with that number."
        unknowns = [k for k, (kind, _) in self.cells.items() if kind != "shown"]
        column = {k: j for j, k in enumerate(unknowns)}
        rows, rhs = [], []
        for equation in self.equations:
            row, total = np.zeros(len(unknowns)), 0.0
            for key, coefficient in equation.items():
                kind, value = self.cells[key]
                if kind == "shown":
                    total -= coefficient * value
                else:
                    row[column[key]] += coefficient
            if row.any():
                rows.append(row)
                rhs.append(total)
            else:
                assert abs(total) < 1e-9, f"the shown counts do not add up: {equation}"
        if not unknowns:
            return {}
        lower = [1 if self.cells[k][0] == "masked" else 0 for k in unknowns]
        upper = [self.threshold - 1 if self.cells[k][0] == "masked" else np.inf for k in unknowns]
        constraints = [LinearConstraint(np.array(rows), rhs, rhs)] if rows else []
        found = {}
        for key in unknowns:
            if self.cells[key][0] != "masked":
                continue
            ends = []
            for sign in (1, -1):
                objective = np.zeros(len(unknowns))
                objective[column[key]] = sign
                result = milp(objective, constraints=constraints, integrality=np.ones(len(unknowns)),
                              bounds=(lower, upper))
                assert result.status == 0, "the reader's system has no solution: the parse is wrong"
                ends.append(round(sign * result.fun))
            if ends[0] == ends[1]:
                found[key] = ends[0]
        return found


def read_table_one(shown: pd.DataFrame, threshold: int, groups: list) -> Reader:
    """The sums a reader knows in a Table 1: the group sizes add up to the Overall size; within a column,
    a variable's levels and missing values add up to the size (a binary variable's level 0 is not shown);
    each level's Overall is the sum of the groups. Percentages are checked to add nothing: each is the
    shown count over the shown size, and a masked one is a bound that excludes no count below the threshold."""
    reader = Reader(threshold)
    labels = list(shown.index)
    text = lambda i, g: str(shown.iloc[i][g])
    sizes = {}
    for g in groups:
        reader.cell((0, g), text(0, g))
        kind, value = reader.cells[(0, g)]
        sizes[g] = value if kind == "shown" else None
    reader.equations.append({(0, "Overall"): 1, **{(0, g): -1 for g in groups[1:]}})
    blocks, i = [], 1
    while i < len(labels):   # (kind, rows with counts)
        label = labels[i]
        if label.endswith(", n (%)") and all(text(i, g) == "" for g in groups):   # a categorical header
            i += 1
            rows = []
            while i < len(labels) and labels[i].startswith("    "):
                rows.append(i)
                i += 1
            blocks.append(("categorical", rows))
            continue
        kind = "binary" if label.endswith(", n (%)") else "continuous"
        rows = [i] if kind == "binary" else []
        i += 1
        if i < len(labels) and labels[i] == "    Missing, n (%)":
            rows.append(i)
            i += 1
        blocks.append((kind, rows))
    for number, (kind, rows) in enumerate(blocks):
        for row in rows:
            for g in groups:
                reader.cell((row, g), text(row, g))
                _check_percent(text(row, g), sizes[g], threshold)
        if kind == "binary":   # level 0 is a cell all the same
            rows = rows + [("level 0", number)]
            for g in groups:
                reader.unknown((("level 0", number), g))
        if kind != "continuous":
            for g in groups:
                reader.equations.append({**{(row, g): 1 for row in rows}, (0, g): -1})
        if len(groups) > 1:
            for row in rows:
                reader.equations.append({(row, "Overall"): 1, **{(row, g): -1 for g in groups[1:]}})
    return reader


def _check_percent(text, size, threshold):
    text = str(text)
    shown, masked = NUMBER.match(text), MASKED.match(text)
    if shown and shown.group(2) is not None:
        assert size is not None, f"a percentage beside a count of a column whose size is not shown: {text}"
        assert shown.group(2) == f"{100 * int(shown.group(1).replace(',', '')) / size:.1f}", text
    if masked and masked.group(2) is not None:
        assert size is not None, text
        bound = float(masked.group(2))
        assert bound * size / 100 >= threshold - 1 - 1e-9, f"{text}: the bound excludes counts below {threshold}"


def _cohort(seed: int) -> tuple[pd.DataFrame, list]:
    "A small synthetic cohort with rare levels, rare conditions and a few missing values."
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 700))
    outcome_levels = ["Survived", "Died"] if seed % 3 else ["Home", "Rehabilitation", "Died"]
    p = rng.dirichlet(np.ones(len(outcome_levels)) * 3)
    data = pd.DataFrame({"outcome": rng.choice(outcome_levels, n, p=p)})
    for name, k in (("region", int(rng.integers(3, 6))), ("ward", int(rng.integers(2, 5)))):
        weights = rng.dirichlet(np.ones(k) * 0.6)
        data[name] = rng.choice([f"{name} {j}" for j in range(k)], n, p=weights)
        if rng.random() < 0.6:
            data.loc[rng.choice(n, int(rng.integers(1, 15)), replace=False), name] = np.nan
    for name in ("sepsis", "cancer"):
        data[name] = rng.binomial(1, rng.uniform(0.005, 0.1), n)
        if rng.random() < 0.4:
            data[name] = data[name].astype(float)
            data.loc[rng.choice(n, int(rng.integers(1, 8)), replace=False), name] = np.nan
    data["age"] = rng.normal(60, 12, n).round()
    data.loc[rng.choice(n, int(rng.integers(0, 12)), replace=False), "age"] = np.nan
    data["outcome"] = pd.Categorical(data.outcome, categories=outcome_levels)
    return data, ["age", "region", "ward", "sepsis", "cancer"]


@pytest.mark.parametrize("threshold", [5, 11])
@pytest.mark.parametrize("seed", range(8))
def test_no_masked_count_of_table_one_can_be_worked_out(seed, threshold):
    data, columns = _cohort(seed)
    t1 = table_one(data, columns=columns, group="outcome", categorical=["region", "ward"])
    shown = format_table_one(t1, threshold=threshold)
    groups = ["Overall", *data.outcome.cat.categories]
    text = " ".join(shown.drop(columns="SMD", errors="ignore").to_numpy().ravel())
    assert f"<{threshold}" in text or not t1.n.between(1, threshold - 1).any()
    assert all(f"<{t} " not in text for t in (5, 11) if t != threshold)   # the threshold is the argument's
    reader = read_table_one(shown.drop(columns="SMD", errors="ignore"), threshold, groups)
    assert reader.derivable() == {}
    # nothing hidden needlessly: a variable without a masked count shows every count
    for variable in ("region", "ward"):
        counts = pd.crosstab(data[variable].fillna("missing"), data.outcome)
        if not ((counts > 0) & (counts < threshold)).to_numpy().any() and (data[variable].isna().sum() == 0
                                                                         or data[variable].isna().sum() >= threshold):
            levels = [f"    {level}" for level in sorted(data[variable].dropna().unique())]
            assert HIDDEN not in shown.loc[levels].to_numpy(), variable


def test_the_leaks_of_the_issue_are_closed():
    # "west <11" with north, south and the size shown; "17 | 14 | <11" with Overall the sum of the groups
    data = pd.DataFrame({"death": [0] * 600 + [1] * 100,
                         "region": ["north"] * 300 + ["south"] * 294 + ["west"] * 6 + ["north"] * 60 + ["south"] * 40,
                         "sepsis": [1] * 14 + [0] * 586 + [1] * 3 + [0] * 97})
    t1 = table_one(data, columns=["region", "sepsis"], group="death", categorical=["region"])
    shown = format_table_one(t1, threshold=11)
    assert shown.loc["    west", "0"] == "<11 (<1.9%)" and shown.loc["    west", "Overall"].startswith("<11")
    assert shown.loc["    south", "0"] == HIDDEN     # the next smallest count of the column
    row = shown.loc["sepsis, n (%)"]
    assert row["1"] == "<11 (<11.0%)" and HIDDEN in (row["0"], row["Overall"])
    assert (row.drop("SMD") == HIDDEN).sum() == 1    # one cell more, not the row
    assert row["SMD"] == HIDDEN                      # with the sizes, the SMD would give the 3 back
    assert read_table_one(shown.drop(columns="SMD"), 11, ["Overall", "0", "1"]).derivable() == {}
    # the unprotected table of the issue lets the reader subtract
    leaky = shown.copy()
    leaky.loc["sepsis, n (%)", "0"], leaky.loc["sepsis, n (%)", "Overall"] = "14 (2.3%)", "17 (2.4%)"
    row = list(shown.index).index("sepsis, n (%)")
    assert read_table_one(leaky.drop(columns="SMD"), 11, ["Overall", "0", "1"]).derivable() == {(row, "1"): 3}
    # threshold 5: the 6 patients of the west are shown, and nothing says "<11"
    five = format_table_one(t1, threshold=5)
    assert five.loc["    west", "0"] == "6 (1.0%)" and "<11" not in " ".join(five.to_numpy().ravel())


def test_a_group_too_small_to_show():
    rng = np.random.default_rng(5)
    data = pd.DataFrame({"arm": ["a"] * 300 + ["b"] * 4, "sex": rng.choice(["F", "M"], 304),
                         "sepsis": rng.binomial(1, 0.3, 304)})
    shown = format_table_one(table_one(data, columns=["sex", "sepsis"], group="arm"), threshold=11)
    assert shown.loc["n", "b"] == "<11"
    assert read_table_one(shown.drop(columns="SMD", errors="ignore"), 11, ["Overall", "a", "b"]).derivable() == {}
    assert not any("%" in str(value) for value in shown["b"])   # a percentage would give the size away


@pytest.mark.parametrize("seed", range(4))
def test_weighted_table_one_hides_what_would_give_a_masked_count_away(seed):
    rng = np.random.default_rng(seed)
    data, columns = _cohort(seed + 20)
    data["arm"] = rng.choice(["Ibuprofen", "Naproxen"], len(data))
    data["w"] = rng.uniform(1.5, 4.0, len(data))
    before = table_one(data, columns=columns, group="arm", categorical=["region", "ward"])
    after = table_one(data, columns=columns, group="arm", categorical=["region", "ward"], weights="w")
    tables = [mask_table_one(format_table_one(table, threshold=5), table, unweighted=before, threshold=5)
              for table in (before, after)]
    tables.append(format_table_one(after, threshold=5, unweighted=before))   # as the comparative template does
    for shown in tables:
        # every cell small before weighting is masked after it too
        for variable in ("region", "ward"):
            counts = pd.crosstab(data[variable], data.arm)
            for level in counts.index:
                for arm in counts.columns:
                    if 0 < counts.loc[level, arm] < 5:
                        assert shown.loc[f"    {level}", arm].startswith("<5"), (level, arm)
        # the sums hold for weighted counts too (up to rounding): the rank of the reader's system says
        # whether a masked cell follows exactly from the shown ones
        reader = read_weighted(shown.drop(columns="SMD", errors="ignore"), ["Overall", "Ibuprofen", "Naproxen"])
        assert reader == set()


def read_weighted(shown, groups) -> set:
    """Masked cells of a weighted Table 1 that its sums determine exactly (weighted counts add up as
    counts do, up to rounding), by the rank of the reader's system: a categorical variable's levels
    down each column with the group's size (when none is missing: the weight of the missing values is
    not shown), and each level, or the unweighted count of missing values, across the groups."""
    labels = list(shown.index)
    text = lambda i, g: str(shown.iloc[i][g])
    blocks, i = [], 1
    while i < len(labels):
        if labels[i].endswith(", n (%)") and all(text(i, g) == "" for g in groups):
            rows, i = [], i + 1
            while i < len(labels) and labels[i].startswith("    ") and labels[i] != "    Missing, n (%)":
                rows.append(i)
                i += 1
            missing = i < len(labels) and labels[i] == "    Missing, n (%)"
            blocks.append((rows, missing))
            if missing:
                blocks.append(([i], True))
                i += 1
        else:
            if labels[i] == "    Missing, n (%)":
                blocks.append(([i], True))   # the unweighted count of missing values of any variable
            i += 1
    found = set()
    for rows, missing in blocks:
        unknown = [(row, g) for row in rows for g in groups if text(row, g).startswith(("<", HIDDEN))]
        if not unknown:
            continue
        equations = [] if missing else [[1.0 if c[1] == g else 0.0 for c in unknown] for g in groups]
        equations += [[1.0 if c == (row, "Overall") else -1.0 if c[0] == row else 0.0 for c in unknown]
                      for row in rows]
        matrix = np.array(equations)
        full = np.linalg.matrix_rank(matrix)
        for j, c in enumerate(unknown):
            if text(*c).startswith("<") and np.linalg.matrix_rank(np.delete(matrix, j, axis=1)) < full:
                found.add(c)
    return found


def _flow(seed: int, threshold: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    remaining = int(rng.integers(30, 5000))
    rows = [{"step": "source", "label": "Stays in the source", "n_remaining": remaining, "n_removed": 0,
             "reason": ""}]
    for k in range(int(rng.integers(1, 6))):
        kind = rng.choice(["small", "zero", "large"], p=[0.5, 0.15, 0.35])
        removed = {"small": int(rng.integers(1, threshold)), "zero": 0,
                   "large": int(rng.integers(threshold, max(threshold + 1, remaining // 2 + 1)))}[kind]
        removed = min(removed, remaining)
        remaining -= removed
        rows.append({"step": f"rule_{k}", "label": f"Rule {k} met", "n_remaining": remaining,
                     "n_removed": removed, "reason": f"Rule {k} not met"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("threshold", [5, 11])
@pytest.mark.parametrize("seed", range(15))
def test_no_masked_exclusion_of_the_flow_can_be_worked_out(seed, threshold):
    flow = _flow(seed, threshold)
    shown = flow_table(flow, threshold=threshold)
    reader = Reader(threshold)
    for i, row in shown.iterrows():
        reader.cell(("remaining", i), row.Stays)
        if i:
            reader.cell(("removed", i), row.Removed)
            reader.equations.append({("remaining", i - 1): 1, ("removed", i): -1, ("remaining", i): -1})
    assert reader.derivable() == {}
    # the analysed cohort's count is always shown (Table 1 shows it anyway)
    final = int(flow.n_remaining.iloc[-1])
    assert shown.Stays.iloc[-1] == (f"<{threshold}" if 0 < final < threshold else f"{final:,}")
    # every step is in one box, in order; a shown count is the flow's own
    steps = [step for box in shown.attrs["steps"] for step in box]
    assert steps == flow.step.tolist()
    for i, box in enumerate(shown.attrs["steps"]):
        last = flow.set_index("step").loc[box[-1]]
        if NUMBER.match(shown.Stays[i]):
            assert shown.Stays[i] == f"{last.n_remaining:,}"
        if i and NUMBER.match(shown.Removed[i]):
            assert shown.Removed[i] == f"{flow.set_index('step').loc[box, 'n_removed'].sum():,}"
    # merged only when needed: no box splits into two parts that each remove no one or at least the threshold
    for box in shown.attrs["steps"][1:]:
        removed = flow.set_index("step").loc[box, "n_removed"].tolist()
        for cut in range(1, len(box)):
            assert 0 < sum(removed[:cut]) < threshold or 0 < sum(removed[cut:]) < threshold, (box, removed)


def test_flow_of_the_issue():
    flow = pd.DataFrame({"step": ["source", "adult", "stay"], "label": ["Stays", "Adults", "Stays of 4 hours or longer"],
                         "n_remaining": [700, 696, 682], "n_removed": [0, 4, 14],
                         "reason": ["", "Younger than 18 years", "Stay shorter than 4 hours"]})
    shown = flow_table(flow, threshold=11)
    assert shown.Stays.tolist() == ["700", "682"] and shown.Removed.tolist() == ["", "18"]
    assert shown.Reason[1] == "Younger than 18 years or stay shorter than 4 hours"
    # one step alone, fewer than the threshold: the source is not shown, the analysed cohort is
    alone = flow_table(flow.iloc[:2], threshold=11)
    assert alone.Stays.tolist() == [HIDDEN, "696"] and alone.Removed.tolist() == ["", "<11"]
    assert flow_table(flow.iloc[:2], threshold=4).Removed.tolist() == ["", "4"]
