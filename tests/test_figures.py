"""clinpaper.figures at journal scale: log axes labelled beyond "1", per-group figures that stay one page
high at 300 groups with only the extreme groups named, and ranks that break ties in natural order."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from clinpaper.figures import (MAX_LABELLED_ROWS, group_height, plot_caterpillar, plot_forest, plot_observed_expected,
                               plot_posterior_predictive)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tick_labels(ax) -> list[str]:
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def named_groups(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == "group_label"] or \
        [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


def hospitals(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.5, n)
    return pd.DataFrame({"group": [f"Hospital {i}" for i in range(1, n + 1)], "mean": effect,
                         "low": effect - 0.4, "high": effect + 0.4})


@pytest.mark.parametrize("n_groups", [100, 300])
def test_caterpillar_of_many_groups_has_bounded_height_and_few_labels(n_groups):
    data = hospitals(n_groups)
    ax = plot_caterpillar(data, groups="hospitals")
    assert ax.figure.get_size_inches()[1] <= group_height(MAX_LABELLED_ROWS) < 7
    names = named_groups(ax)
    assert len(names) == 10 and not [t for t in ax.get_yticklabels() if t.get_text()]
    ranked = data.sort_values("mean")["group"].tolist()
    assert set(names) == set(ranked[:5] + ranked[-5:])   # the extreme groups, and only those
    assert ax.get_ylabel() == f"{n_groups} hospitals, ranked"


def test_few_groups_are_all_labelled():
    ax = plot_caterpillar(hospitals(12))
    assert len(named_groups(ax)) == 12


def test_log_axes_label_more_than_one():
    ax = plot_caterpillar(hospitals(300))
    assert {"0.25", "0.5", "1", "2", "4"} <= set(tick_labels(ax))
    odds = pd.DataFrame({"label": ["Age", "Sepsis"], "odds_ratio": [0.6, 2.2], "low": [0.45, 1.8],
                         "high": [0.8, 2.7]})
    labels = tick_labels(plot_forest(odds))
    assert len(labels) >= 3 and "1" in labels and set(labels) - {"1"}
    ratios = pd.DataFrame({"group": list("ABC"), "oe": [0.7, 1.0, 1.5], "oe_low": [0.5, 0.8, 1.1],
                           "oe_high": [0.95, 1.25, 2.1]})
    assert len(tick_labels(plot_observed_expected(ratios, kind="caterpillar"))) >= 3


def test_other_per_group_figures_stay_bounded():
    n = 300
    rate = np.linspace(0.05, 0.4, n)
    check = pd.DataFrame({"group": [f"H{i}" for i in range(n)], "n": 100, "observed": (rate * 100).round(),
                          "low": rate * 100 - 8, "high": rate * 100 + 8, "observed_rate": rate,
                          "rate_low": rate - 0.08, "rate_high": rate + 0.08})
    ax = plot_posterior_predictive(check, groups="hospitals")
    assert ax.figure.get_size_inches()[1] <= group_height(MAX_LABELLED_ROWS) and len(named_groups(ax)) == 10
    ratios = pd.DataFrame({"group": check["group"], "oe": np.exp(np.linspace(-1, 1, n)),
                           "oe_low": np.exp(np.linspace(-1, 1, n) - 0.3), "oe_high": np.exp(np.linspace(-1, 1, n) + 0.3)})
    ax = plot_observed_expected(ratios, kind="caterpillar")
    assert ax.figure.get_size_inches()[1] <= group_height(MAX_LABELLED_ROWS) and len(named_groups(ax)) == 10


def test_ties_rank_in_natural_order():
    ties = pd.DataFrame({"group": ["Hospital 10", "Hospital 2", "Hospital 1", "Hospital 100"], "mean": 0.0,
                         "low": -0.2, "high": 0.2})
    assert named_groups(plot_caterpillar(ties)) == ["Hospital 1", "Hospital 2", "Hospital 10", "Hospital 100"]


def test_check_and_performance_notebooks_type_no_threshold_hdi_or_tool_instruction():
    "The notebooks that make these figures and tables: no typed '<11', no HDI, no command-line instruction."
    import json
    from pathlib import Path
    templates = Path(__file__).resolve().parents[1] / "clinpaper" / "templates"
    for path in [templates / "hospital-variation" / "03a_model_checks.ipynb",
                 templates / "hospital-variation" / "04_performance.ipynb",
                 templates / "prediction" / "04_performance.ipynb"]:
        source = "".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])
        for typed in ("<11", "HDI", "hdi_", "-p validate_against", "rerun with", "r_hat\"", "ess_bulk"):
            assert typed not in source, (path.name, typed)
