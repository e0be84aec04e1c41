"""Benchmark (issue 3): cohort extraction and features for ~200,000 ICU stays (~20 million measurement
rows) with clinpaper.cohort.build_cohort on DuckDB, against a straightforward pandas implementation
of the same extraction.

    .venv/bin/python benchmarks/bench_cohort.py [--patients 180000] [--sites 30] [--seed 3]

Synthesizes the OMOP cohort once (cached as benchmarks/_out/omop_<patients>.duckdb, git-ignored),
then runs each engine in its own subprocess so that the peak memory (the child's VmHWM, the high-water
mark of its resident set, interpreter and imports included) and the wall time (of the extraction
only, from opening the source to the pandas analysis table, imports excluded) are measured per
engine. Checks that both engines give the same table (same rows and columns, values equal to 1e-9,
missing in the same cells) and prints the figures and the ratio. Not a test: it takes minutes.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "_out"
STUDY = ROOT / "clinpaper" / "templates" / "hospital-variation" / "study.yaml"


def peak_rss_bytes() -> int:
    "High-water mark of this process's resident set (VmHWM), in bytes."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# (a) clinpaper on DuckDB

def run_clinpaper(source: Path, study: dict):
    from clinpaper.cohort import build_cohort
    return build_cohort(study, source).table


# ---------------------------------------------------------------------------------------------
# (b) the same extraction, written straightforwardly in pandas

def _read(con, table: str, columns: list[str]):
    "A whole OMOP table's `columns` as a pandas DataFrame (read by DuckDB, like an analyst would)."
    return con.execute(f"SELECT {', '.join(columns)} FROM {table}").df()


def _descendants(ancestor, concepts) -> set:
    concepts = {int(c) for c in concepts}
    below = ancestor.loc[ancestor.ancestor_concept_id.isin(concepts), "descendant_concept_id"]
    return concepts | set(below.astype("int64").tolist())


def _completed_years(birth, day):
    had_birthday = (day.dt.month > birth.dt.month) | ((day.dt.month == birth.dt.month) & (day.dt.day >= birth.dt.day))
    return day.dt.year - birth.dt.year - (~had_birthday).astype("int64")


def run_pandas(source: Path, study: dict):
    import duckdb
    import numpy as np
    import pandas as pd

    con = duckdb.connect(str(source), read_only=True)
    person = _read(con, "person", ["person_id", "gender_concept_id", "year_of_birth", "month_of_birth",
                                   "day_of_birth", "birth_datetime"])
    visits = _read(con, "visit_occurrence", ["visit_occurrence_id", "person_id", "visit_concept_id",
                                             "visit_start_date", "visit_start_datetime", "visit_end_date",
                                             "visit_end_datetime", "care_site_id"])
    death = _read(con, "death", ["person_id", "death_date", "death_datetime"])
    measurement = _read(con, "measurement", ["measurement_id", "person_id", "measurement_concept_id",
                                             "measurement_date", "measurement_datetime", "value_as_number",
                                             "unit_concept_id"])
    conditions = _read(con, "condition_occurrence", ["person_id", "condition_concept_id",
                                                     "condition_start_date", "condition_start_datetime"])
    ancestor = _read(con, "concept_ancestor", ["ancestor_concept_id", "descendant_concept_id"])
    con.close()

    # index: the first ICU stay of each person
    icu = visits[visits.visit_concept_id.isin(_descendants(ancestor, study["cohort"]["index"]["concepts"]))].copy()
    icu["index_start"] = icu.visit_start_datetime.fillna(pd.to_datetime(icu.visit_start_date))
    icu["index_end"] = icu.visit_end_datetime.fillna(pd.to_datetime(icu.visit_end_date))
    icu["index_end_date"] = pd.to_datetime(icu.visit_end_date).fillna(icu.visit_end_datetime.dt.normalize())
    icu = icu.sort_values(["person_id", "index_start", "visit_occurrence_id"])
    n_all = len(icu)
    stays = icu.drop_duplicates("person_id", keep="first")

    # age in completed years at the admission day; stay length in hours
    month = person.month_of_birth.fillna(7).astype("int64")
    day = person.day_of_birth.fillna(person.month_of_birth.isna().map({True: 1, False: 15})).astype("int64")
    from_parts = pd.to_datetime(pd.DataFrame({"year": person.year_of_birth, "month": month, "day": day}))
    person = person.assign(birth_date=person.birth_datetime.dt.normalize().fillna(from_parts))
    stays = stays.merge(person[["person_id", "gender_concept_id", "birth_date"]], on="person_id", how="left")
    stays["index_date"] = stays.index_start.dt.normalize()
    stays["age"] = _completed_years(stays.birth_date, stays.index_date)
    stays["visit_hours"] = (stays.index_end - stays.index_start).dt.total_seconds() / 3600.0
    flow = [n_all, len(stays)]
    for criterion in study["cohort"]["criteria"]:
        if criterion["type"] == "age":
            stays = stays[stays.age.notna() & (stays.age >= criterion["min"])]
        elif criterion["type"] == "visit_length":
            stays = stays[stays.visit_hours.notna() & (stays.visit_hours >= criterion["min_hours"])]
        else:
            raise NotImplementedError(criterion["type"])
        flow.append(len(stays))
    stays = stays[stays.care_site_id.notna()].copy()

    group, outcome = study["group"]["id"], study["outcome"]["id"]
    table = pd.DataFrame({
        "person_id": stays.person_id.astype("int64"),
        "visit_occurrence_id": stays.visit_occurrence_id.astype("int64"),
        "index_datetime": stays.index_start,
        group: stays.care_site_id.astype("int64"),
        "age": stays.age.astype("int64"),
        "sex": stays.gender_concept_id.map({8532: "Female", 8507: "Male"}).fillna("Other/unknown"),
        "male": (stays.gender_concept_id == 8507).astype("int64"),
        "los_days": stays.visit_hours / 24.0,
    })

    # death from admission to discharge, inclusive
    death = death.assign(death_day=pd.to_datetime(death.death_date).fillna(death.death_datetime.dt.normalize()))
    hits = stays[["visit_occurrence_id", "person_id", "index_date", "index_end_date"]].merge(death, on="person_id")
    hits = hits[(hits.death_day >= hits.index_date) & (hits.death_day <= hits.index_end_date)]
    dead = set(hits.visit_occurrence_id)

    # measurements in the first hours: right unit, a value, within the valid range
    features = study["features"]
    window = pd.Timedelta(hours=float(features["measurement_window_hours"]))
    concept_rows = []
    for feature in features["measurements"]:
        for concept in _descendants(ancestor, feature["concepts"]):
            concept_rows.append({"measurement_concept_id": concept, "feature": feature["id"],
                                 "low": float(feature["valid"][0]), "high": float(feature["valid"][1])})
    concept_map = pd.DataFrame(concept_rows)
    units = pd.DataFrame([{"feature": f["id"], "unit_concept_id": int(u)} for f in features["measurements"]
                          for u in f["units"]])
    rows = measurement.merge(concept_map, on="measurement_concept_id")
    rows["time"] = rows.measurement_datetime.fillna(pd.to_datetime(rows.measurement_date))
    rows = rows.merge(stays[["visit_occurrence_id", "person_id", "index_start", "index_end"]], on="person_id")
    rows = rows[(rows.time >= rows.index_start) & (rows.time <= rows.index_start + window)
                & (rows.index_end.isna() | (rows.time <= rows.index_end))]
    rows = rows.merge(units, on=["feature", "unit_concept_id"])  # right unit only
    rows = rows[rows.value_as_number.notna() & (rows.value_as_number >= rows.low) & (rows.value_as_number <= rows.high)]
    aggregated = rows.groupby(["visit_occurrence_id", "feature"]).value_as_number.agg(["min", "max", "mean", "count"])
    for feature in features["measurements"]:
        for aggregate in feature["aggregate"]:
            if aggregate in ("first", "last"):
                raise NotImplementedError(aggregate)
            values = aggregated.xs(feature["id"], level="feature")[aggregate].astype("float64")
            column = table.visit_occurrence_id.map(values)
            table[f"{feature['id']}_{aggregate}"] = column.fillna(0.0) if aggregate == "count" else column

    # condition flags: a record from `lookback_days` before the admission day up to that day
    conditions["condition_day"] = pd.to_datetime(conditions.condition_start_date).fillna(
        conditions.condition_start_datetime.dt.normalize())
    on_stays = conditions.merge(stays[["visit_occurrence_id", "person_id", "index_date"]], on="person_id")
    days_before = (on_stays.index_date - on_stays.condition_day).dt.days
    for condition in features["conditions"]:
        lookback = condition.get("lookback_days")
        hit = on_stays.condition_concept_id.isin(_descendants(ancestor, condition["concepts"])) & (days_before >= 0)
        if lookback is not None:
            hit &= days_before <= lookback
        flagged = set(on_stays.loc[hit, "visit_occurrence_id"])
        table[condition["id"]] = table.visit_occurrence_id.isin(flagged).astype("int64")

    table[outcome] = table.visit_occurrence_id.isin(dead).astype("int64")
    table = table.sort_values(["person_id", "index_datetime", "visit_occurrence_id"]).reset_index(drop=True)
    return table


# ---------------------------------------------------------------------------------------------

def child(engine: str, source: Path, result: Path) -> None:
    "Run one engine, write its table (Parquet) and its figures (JSON); called in a subprocess."
    import yaml
    study = yaml.safe_load(STUDY.read_text())
    import duckdb, ibis, pandas  # noqa: F401  (imports are not part of the timed extraction)
    if engine == "clinpaper":
        import clinpaper.cohort  # noqa: F401
    tick = time.perf_counter()
    table = run_clinpaper(source, study) if engine == "clinpaper" else run_pandas(source, study)
    seconds = time.perf_counter() - tick
    peak = peak_rss_bytes()
    table.to_parquet(result.with_suffix(".parquet"), index=False)
    result.write_text(json.dumps({"engine": engine, "seconds": seconds, "peak_rss_bytes": peak,
                                  "rows": len(table), "columns": len(table.columns)}))


def compare(clinpaper_table, pandas_table) -> None:
    import numpy as np
    import pandas as pd
    if list(clinpaper_table.columns) != list(pandas_table.columns):
        raise AssertionError(f"columns differ:\n{list(clinpaper_table.columns)}\n{list(pandas_table.columns)}")
    left = clinpaper_table.sort_values("visit_occurrence_id").reset_index(drop=True)
    right = pandas_table.sort_values("visit_occurrence_id").reset_index(drop=True)
    if len(left) != len(right) or not (left.visit_occurrence_id.to_numpy() == right.visit_occurrence_id.to_numpy()).all():
        raise AssertionError(f"rows differ: {len(left):,} stays from clinpaper, {len(right):,} from pandas")
    for column in left.columns:
        a, b = left[column], right[column]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(dtype="float64"), b.to_numpy(dtype="float64")
            if not (np.isnan(x) == np.isnan(y)).all():
                raise AssertionError(f"{column}: missing in different cells ({int((np.isnan(x) != np.isnan(y)).sum())})")
            if not np.allclose(x, y, rtol=0, atol=1e-9, equal_nan=True):
                raise AssertionError(f"{column}: {int((~np.isclose(x, y, rtol=0, atol=1e-9, equal_nan=True)).sum())} cells differ")
        else:
            if not (a.astype(str).to_numpy() == b.astype(str).to_numpy()).all():
                raise AssertionError(f"{column}: {int((a.astype(str) != b.astype(str)).sum())} cells differ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=180_000)
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "SOURCE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, source, result = args.child
        child(engine, Path(source), Path(result))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    source = OUT / f"omop_{args.patients}.duckdb"
    truth_path = source.with_suffix(".truth.json")
    if not (source.exists() and truth_path.exists()):
        from clinpaper.synth import synthesize
        tick = time.perf_counter()
        synthesize(source, patients=args.patients, sites=args.sites, seed=args.seed, overwrite=True)
        print(f"synthesized {source} in {time.perf_counter() - tick:.0f} s")
    truth = json.loads(truth_path.read_text())

    figures = {}
    for engine in ("clinpaper", "pandas"):
        result = OUT / f"result_{engine}.json"
        subprocess.run([sys.executable, __file__, "--child", engine, str(source), str(result)], check=True)
        figures[engine] = json.loads(result.read_text())

    import pandas as pd
    compare(pd.read_parquet(OUT / "result_clinpaper.parquet"), pd.read_parquet(OUT / "result_pandas.parquet"))

    gib = 1024 ** 3
    print(f"date: {date.today().isoformat()}; machine: {os.cpu_count()} cores, {platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"source: {truth['n_persons']:,} patients, {truth['n_stays']:,} ICU stays, "
          f"{truth['n_measurements']:,} measurement rows ({source.stat().st_size / gib:.2f} GiB DuckDB file)")
    for engine, got in figures.items():
        print(f"{engine:>9}: {got['seconds']:6.1f} s wall, {got['peak_rss_bytes'] / gib:5.2f} GiB peak RSS; "
              f"analysis table {got['rows']:,} rows x {got['columns']} columns")
    a, b = figures["clinpaper"], figures["pandas"]
    print(f"same table from both engines (rows, columns, values to 1e-9): yes")
    print(f"pandas / clinpaper: {b['seconds'] / a['seconds']:.1f}x the time, "
          f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.1f}x the peak memory")
    print(f"target (clinpaper): under 60 s and under 4 GiB: "
          f"{'met' if a['seconds'] < 60 and a['peak_rss_bytes'] < 4 * gib else 'NOT met'}")


if __name__ == "__main__":
    main()
