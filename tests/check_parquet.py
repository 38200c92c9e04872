"""Read every parquet table of a wsss report with the readers researchers use.

    python3 tests/check_parquet.py REPORT_DIR

For each `<name>.parquet`: pyarrow reads it, pandas reads it (through pyarrow), python polars
reads it when installed; all agree on rows and columns, and the CSV twin has the same rows and
header. Exit 0 when all hold, 1 otherwise; 3 when pyarrow or pandas is missing (the caller
decides whether that is a skip).
"""
import csv
import pathlib
import sys

try:
    import pandas as pd
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover
    print(f"missing reader: {e}")
    sys.exit(3)
try:
    import polars as pl
except ImportError:
    pl = None

root = pathlib.Path(sys.argv[1])
tables = sorted(root.glob("*.parquet"))
problems = []
if not tables:
    problems.append(f"no parquet files in {root}")
for p in tables:
    t = pq.read_table(p)
    df = pd.read_parquet(p)
    shape = (t.num_rows, t.num_columns)
    if df.shape != shape:
        problems.append(f"{p.name}: pandas {df.shape} vs pyarrow {shape}")
    if pl is not None:
        d = pl.read_parquet(p)
        if d.shape != shape:
            problems.append(f"{p.name}: polars {d.shape} vs pyarrow {shape}")
    with open(p.with_suffix(".csv"), newline="") as f:
        rows = list(csv.reader(f))
    if rows[0] != t.column_names:
        problems.append(f"{p.name}: CSV header {rows[0]} vs parquet {t.column_names}")
    if len(rows) - 1 != t.num_rows:
        problems.append(f"{p.name}: CSV has {len(rows) - 1} rows, parquet {t.num_rows}")
    print(f"{p.name}: {t.num_rows} rows x {t.num_columns} columns "
          f"(pyarrow, pandas{', polars' if pl is not None else ''})")
for m in problems:
    print("PROBLEM:", m)
sys.exit(1 if problems else 0)
