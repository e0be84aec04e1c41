"""clinpaper.flat across modules: a synthesized OMOP cohort's analysis table, flattened to CSV and
Parquet with a codebook and with mistakes planted in it, read back with load_flat; every count is
checked against a plain-pandas count of what was planted; bad input; the Cohort works where the
paper's notebooks use it."""
import copy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clinpaper.cohort import Cohort, build_cohort
from clinpaper.core import CohortError, SourceError, StudyError
from clinpaper.describe import flow_table, table_one
from clinpaper.flat import codebook_schema, load_codebook, load_flat

STUDY_FILE = Path(__file__).resolve().parents[1] / "clinpaper" / "templates" / "hospital-variation" / "study.yaml"


@pytest.fixture(scope="module")
def study():
    return yaml.safe_load(STUDY_FILE.read_text())


@pytest.fixture(scope="module")
def analysis(study, tmp_path_factory):
    "The demo study's analysis table of a small synthetic OMOP cohort."
    synth = pytest.importorskip("clinpaper.synth")
    path = tmp_path_factory.mktemp("omop") / "synth.duckdb"
    synth.synthesize(path, patients=1500, sites=8, seed=11)
    return build_cohort(study, path).table


def flat_codebook(study) -> dict:
    "A codebook (YAML shape) for the demo study's analysis table, written by hand from the study."
    variables = {
        "person_id": {"label": "Person", "type": "id"},
        "visit_occurrence_id": {"label": "Stay", "type": "id", "role": "other"},
        "index_datetime": {"label": "Admission time", "type": "datetime", "role": "index"},
        "hospital": {"label": "Hospital", "type": "categorical", "role": "group"},
        "age": {"label": "Age", "type": "continuous", "unit": "years", "valid": [18, 120]},
        "sex": {"label": "Sex", "type": "categorical", "levels": ["Female", "Male", "Other/unknown"]},
        "male": {"label": "Male sex", "type": "binary"},
        "los_days": {"label": "Length of stay", "type": "continuous", "unit": "days", "nonnormal": True},
    }
    for feature in study["features"]["measurements"]:
        for aggregate in feature["aggregate"]:
            variables[f"{feature['id']}_{aggregate}"] = {
                "label": f"{feature['label']}, {aggregate}", "type": "continuous", "unit": feature["unit"],
                "valid": list(feature["valid"])}
    for condition in study["features"]["conditions"]:
        variables[condition["id"]] = {"label": condition["label"], "type": "binary", "role": "predictor"}
    variables["death_in_hospital"] = {"label": "In-hospital death", "type": "binary", "role": "outcome"}
    return {"title": "The demo study, flat", "variables": variables}


@pytest.fixture(scope="module")
def planted(analysis, study, tmp_path_factory):
    "The flat table with mistakes planted at random rows, written as CSV and Parquet, and the plan."
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("flat")
    frame = analysis.copy()
    n = len(frame)
    plan = {}
    rows = rng.choice(np.flatnonzero(frame.heart_rate_max.notna().to_numpy()), size=7, replace=False)
    frame.loc[rows[:5], "heart_rate_max"] = 600.0          # above the valid range
    frame.loc[rows[5:], "heart_rate_max"] = 5.0             # below it
    plan["heart_rate_max"] = set(rows)
    plan["sex"] = set(rng.choice(n, size=4, replace=False))
    frame["sex"] = frame.sex.astype(object)
    frame.loc[list(plan["sex"]), "sex"] = "unknown-code"   # not a level
    plan["outcome_blank"] = set(rng.choice(n, size=6, replace=False))
    plan["outcome_two"] = set(rng.choice(sorted(set(range(n)) - plan["outcome_blank"]), size=2, replace=False))
    frame["death_in_hospital"] = frame.death_in_hospital.astype(object)
    frame.loc[list(plan["outcome_blank"]), "death_in_hospital"] = None
    frame.loc[list(plan["outcome_two"]), "death_in_hospital"] = 2
    frame.columns = [c.upper() if i % 2 else c for i, c in enumerate(frame.columns)]  # mixed case
    frame["extra_notes"] = "x"
    csv_frame = frame.copy()
    age = [c for c in frame.columns if c.lower() == "age"][0]
    csv_frame[age] = csv_frame[age].astype(object)
    plan["age"] = set(rng.choice(n, size=3, replace=False))
    csv_frame.loc[list(plan["age"]), age] = "not-a-number"  # unreadable in the CSV only
    csv_frame.to_csv(folder / "flat.csv", index=False)
    parquet_frame = frame.copy()
    outcome_column = [c for c in frame.columns if c.lower() == "death_in_hospital"][0]
    parquet_frame[outcome_column] = pd.to_numeric(parquet_frame[outcome_column])  # typed, as Parquet is
    parquet_frame.to_parquet(folder / "flat.parquet", index=False)
    codebook_path = folder / "codebook.yaml"
    codebook_path.write_text(yaml.safe_dump(flat_codebook(study), allow_unicode=True, sort_keys=False))
    return {"folder": folder, "codebook": codebook_path, "plan": plan, "n": n}


@pytest.fixture(scope="module")
def from_csv(planted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_flat(planted["folder"] / "flat.csv", planted["codebook"], id_column="person_id")


def test_returns_a_cohort_in_the_shape_of_build_cohort(from_csv, analysis):
    assert isinstance(from_csv, Cohort)
    assert list(from_csv.flow.columns) == ["step", "label", "n_remaining", "n_removed", "n_persons", "reason"]
    assert list(from_csv.table.columns) == list(analysis.columns)  # codebook order, the outcome last
    for column in ("n_out_of_range", "n_wrong_unit"):             # what the paper's cohort notebook sums
        assert column in from_csv.cleaning.columns
    assert from_csv.codebook["death_in_hospital"]["role"] == "outcome"
    assert from_csv.codebook["hospital"]["role"] == "group"
    assert from_csv.source["format"] == "csv"


def test_flow_counts_the_rows_without_outcome(from_csv, planted):
    plan, n = planted["plan"], planted["n"]
    removed = len(plan["outcome_blank"] | plan["outcome_two"])
    flow = from_csv.flow.set_index("step")
    assert flow.loc["source", "n_remaining"] == n
    assert flow.loc["outcome_recorded", "n_removed"] == removed
    assert flow.loc["outcome_recorded", "n_remaining"] == n - removed
    assert "group_recorded" not in flow.index                    # every row has a hospital
    assert len(from_csv.table) == n - removed


def test_cleaning_counts_match_what_was_planted(from_csv, planted, analysis):
    plan, n = planted["plan"], planted["n"]
    cleaning = from_csv.cleaning.set_index("variable")
    assert cleaning.loc["heart_rate_max", "n_out_of_range"] == len(plan["heart_rate_max"])
    assert cleaning.loc["heart_rate_max", "n_no_value"] == int(analysis.heart_rate_max.isna().sum())
    assert cleaning.loc["sex", "n_wrong_level"] == len(plan["sex"])
    assert cleaning.loc["age", "n_wrong_type"] == len(plan["age"])
    assert cleaning.loc["death_in_hospital", "n_no_value"] == len(plan["outcome_blank"])
    assert cleaning.loc["death_in_hospital", "n_wrong_level"] == len(plan["outcome_two"])
    # measurements that were missing in the OMOP cohort stay missing, and nothing else is touched
    for column in ("map_min", "lactate_max", "platelets_min"):
        assert cleaning.loc[column, ["n_out_of_range", "n_wrong_type"]].tolist() == [0, 0]
        assert cleaning.loc[column, "n_missing"] == int(analysis[column].isna().sum())
    assert (cleaning.n_rows == n).all()
    assert (cleaning.n_missing + cleaning.n_valid == n).all()
    summed = cleaning.n_no_value + cleaning.n_wrong_type + cleaning.n_out_of_range + cleaning.n_wrong_level
    assert (summed == cleaning.n_missing).all()


def test_values_survive_the_round_trip(from_csv, planted, analysis):
    "Every cell that was not planted equals the OMOP cohort's, to 1e-9; planted cells are missing."
    plan = planted["plan"]
    kept = sorted(set(range(planted["n"])) - plan["outcome_blank"] - plan["outcome_two"])
    expected = analysis.iloc[kept].reset_index(drop=True)
    got = from_csv.table
    position = {row: i for i, row in enumerate(kept)}
    for column, rows in (("heart_rate_max", plan["heart_rate_max"]), ("sex", plan["sex"]), ("age", plan["age"])):
        inside = [position[r] for r in rows if r in position]
        assert got.loc[inside, column].isna().all()
        expected.loc[inside, column] = np.nan if column != "sex" else None
    assert got.person_id.tolist() == expected.person_id.tolist()
    for column in expected.columns:
        if pd.api.types.is_numeric_dtype(expected[column]):
            np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float),
                                       rtol=0, atol=1e-9, equal_nan=True, err_msg=column)
        elif column == "index_datetime":
            assert (pd.to_datetime(got[column]) == pd.to_datetime(expected[column])).all()
        else:
            assert got[column].astype(str).tolist() == expected[column].astype(str).tolist(), column
    assert str(got.death_in_hospital.dtype) == "int64"
    assert str(got.sepsis.dtype) == "int64"


def test_parquet_gives_the_same_cohort_except_the_csv_only_mistake(planted, from_csv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cohort = load_flat(planted["folder"] / "flat.parquet", planted["codebook"], id_column="PERSON_ID")
    assert cohort.source["format"] == "parquet"
    pd.testing.assert_frame_equal(cohort.table.drop(columns="age"), from_csv.table.drop(columns="age"),
                                  check_dtype=False)
    cleaning = cohort.cleaning.set_index("variable")
    assert cleaning.loc["age", "n_wrong_type"] == 0
    assert cleaning.loc["heart_rate_max", "n_out_of_range"] == len(planted["plan"]["heart_rate_max"])


def test_extra_columns_are_named_in_a_warning(planted):
    with pytest.warns(UserWarning, match="1 columns that the codebook does not describe.*extra_notes"):
        load_flat(planted["folder"] / "flat.parquet", planted["codebook"], id_column="person_id")


def test_the_paper_modules_take_the_flat_cohort(from_csv):
    shown = flow_table(from_csv.flow)
    assert sum(len(box) for box in shown.attrs["steps"]) == len(from_csv.flow)
    t1 = table_one(from_csv.table, columns=["age", "sex", "heart_rate_max", "sepsis"], group="death_in_hospital",
                   codebook=from_csv.codebook)
    overall_n = t1[(t1.variable == "n") & (t1.group == "Overall")].n.iloc[0]
    assert overall_n == len(from_csv.table)


def test_inputs_are_not_mutated(planted):
    codebook = load_codebook(planted["codebook"])
    before = copy.deepcopy(codebook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        load_flat(planted["folder"] / "flat.parquet", codebook, id_column="person_id")
    assert codebook == before


def test_schema_rejects_what_load_flat_cleans(from_csv):
    schema = codebook_schema(from_csv.codebook)
    schema.validate(from_csv.table)                  # the cleaned table passes
    broken = from_csv.table.copy()
    broken.loc[0, "heart_rate_max"] = 600.0
    with pytest.raises(Exception, match="in_range"):
        schema.validate(broken)


# ---------------------------------------------------------------------------------------------
# bad input: the file, the column, the rule and the number of rows; never a patient's value

@pytest.fixture()
def small(analysis, study, tmp_path):
    frame = analysis.head(50).copy()
    codebook = tmp_path / "codebook.yaml"
    codebook.write_text(yaml.safe_dump(flat_codebook(study), allow_unicode=True, sort_keys=False))
    return frame, codebook, tmp_path


def load(frame, codebook, folder, name="t.csv"):
    path = folder / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path, index=False)
    return load_flat(path, codebook, id_column="person_id")


def test_duplicate_ids(small):
    frame, codebook, folder = small
    frame = frame.assign(person_id=frame.person_id + 7_340_000)  # ids that cannot hide in a count
    frame = pd.concat([frame, frame.iloc[[3, 3, 7]]], ignore_index=True)
    with pytest.raises(CohortError, match=r"t\.csv: column 'person_id' must be unique .* 5 rows share 2 ids") as info:
        load(frame, codebook, folder)
    assert str(frame.person_id.iloc[3]) not in str(info.value)


def test_missing_outcome_column(small):
    frame, codebook, folder = small
    with pytest.raises(CohortError, match=r"t\.csv has no outcome column 'death_in_hospital'"):
        load(frame.drop(columns="death_in_hospital"), codebook, folder)


def test_empty_table(small):
    frame, codebook, folder = small
    with pytest.raises(CohortError, match=r"t\.parquet is empty"):
        load(frame.iloc[:0], codebook, folder, "t.parquet")


def test_outcome_without_events(small):
    frame, codebook, folder = small
    with pytest.raises(CohortError, match=r"outcome 'death_in_hospital' has no events .* among the 50 rows"):
        load(frame.assign(death_in_hospital=0), codebook, folder)


def test_every_outcome_missing(small):
    frame, codebook, folder = small
    with pytest.raises(CohortError, match=r"step 'outcome_recorded' .* removed all 50"):
        load(frame.assign(death_in_hospital=7), codebook, folder)


def test_missing_group_is_a_flow_step(small):
    frame, codebook, folder = small
    frame = frame.assign(death_in_hospital=np.arange(len(frame)) % 2)
    frame["hospital"] = frame.hospital.astype("Int64")
    frame.loc[[1, 2, 3], "hospital"] = pd.NA
    cohort = load(frame, codebook, folder)
    flow = cohort.flow.set_index("step")
    assert flow.loc["group_recorded", "n_removed"] == 3
    assert str(cohort.table.hospital.dtype) == "int64"


def test_bad_codebook_names_file_and_variable(small):
    frame, codebook, folder = small
    data = yaml.safe_load(codebook.read_text())
    data["variables"]["lactate_max"]["type"] = "number"
    bad = folder / "bad_codebook.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(StudyError, match=r"bad_codebook\.yaml: variable 'lactate_max' has type 'number'"):
        load_flat(folder / "t.csv", bad)


def test_missing_codebook_column_is_a_source_error(small):
    frame, codebook, folder = small
    with pytest.raises(SourceError, match=r"lacks 1 columns that the codebook describes: lactate_max"):
        load(frame.drop(columns="lactate_max"), codebook, folder)
