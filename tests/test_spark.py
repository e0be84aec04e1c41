"""The same study on Spark: a small synthetic ICU cohort (500 patients) is built on DuckDB and on a
local Spark session (local[2], Ibis's pyspark backend, the OMOP tables read from Parquet) and must give
the same flow counts and the same analysis table (features to floating-point tolerance)."""
import copy
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from conftest import STUDY

pyspark = pytest.importorskip("pyspark")
ibis = pytest.importorskip("ibis")

from clinpaper.cohort import build_cohort   # noqa: E402
from clinpaper.config import load_study     # noqa: E402
from clinpaper.synth import synthesize      # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spark_source")
    path = folder / "small.duckdb"
    synthesize(path, patients=500, sites=5, seed=3)
    parquet = folder / "parquet"
    parquet.mkdir()
    with duckdb.connect(str(path), read_only=True) as raw:
        for (name,) in raw.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            raw.execute(f"COPY \"{name}\" TO '{parquet / (name.lower() + '.parquet')}' (FORMAT parquet)")
    return path, parquet


@pytest.fixture(scope="module")
def spark_con(source):
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").appName("clinpaper-test")
             .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    for table in sorted(source[1].glob("*.parquet")):
        spark.read.parquet(str(table)).createOrReplaceTempView(table.stem)
    yield ibis.pyspark.connect(spark)
    spark.stop()


@pytest.fixture(scope="module")
def study():
    study = copy.deepcopy(load_study(STUDY))
    # every aggregate, so that ordered (first/last) and counted aggregates are compared too
    study["features"]["measurements"][0]["aggregate"] = ["first", "min", "max", "mean", "last", "count"]
    return study


def test_spark_gives_the_duckdb_cohort(source, spark_con, study):
    on_duckdb = build_cohort(study, source[0])
    on_spark = build_cohort(study, spark_con)
    pd.testing.assert_frame_equal(on_spark.flow, on_duckdb.flow)
    assert on_duckdb.flow.n_removed.iloc[1:].sum() > 0          # the criteria removed someone
    left, right = on_spark.table, on_duckdb.table
    assert list(left.columns) == list(right.columns) and len(left) == len(right) > 100
    pd.testing.assert_frame_equal(left, right, check_dtype=False, rtol=1e-9, atol=1e-9)
    pd.testing.assert_frame_equal(on_spark.cleaning, on_duckdb.cleaning, check_dtype=False)
    assert right["heart_rate_first"].notna().sum() > 100
