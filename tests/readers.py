#!/usr/bin/env python3
"""Reads a job's outputs the way analysts do — pyarrow, DuckDB, polars, pandas — and checks
the column types and the row counts against summary.json. Also runs the README's DuckDB and
pandas snippets. Prints 'N passed, N failed' and exits non-zero on any failure.

Usage: python3 tests/readers.py OUTPUT_DIR      (.ci/run makes OUTPUT_DIR with apscore rank)
"""
import json
import sys
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

out = Path(sys.argv[1])
summary = json.loads((out / "summary.json").read_text())
counts = summary["counts"]
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(("ok   " if condition else "FAIL ") + name + ("" if condition else f": {detail}"))


# pyarrow: types and counts of every output.
ranking = pq.read_table(out / "ranking.parquet")
expected_ranking = {
    "row_id": pa.int64(), "source_file": pa.string(), "source_row": pa.int64(),
    "rm_margin": pa.float64(), "logp_margin": pa.float64(), "logp_margin_norm": pa.float64(),
    "logp_margin_abs": pa.float64(), "logp_margin_norm_abs": pa.float64(),
    "z_rm_margin": pa.float64(), "z_logp_margin_norm_abs": pa.float64(),
    "alignment_potential": pa.float64(), "score": pa.float64(), "rank": pa.int64(), "selected": pa.bool_(),
}
for name, kind in expected_ranking.items():
    check(f"pyarrow ranking.{name} is {kind}", ranking.schema.field(name).type == kind, ranking.schema.field(name).type)
check("pyarrow ranking rows = scored", ranking.num_rows == counts["scored_rows"], ranking.num_rows)
scores = pq.ParquetDataset(out / "scores").read()
check("pyarrow scores/ rows = scored", scores.num_rows == counts["scored_rows"], scores.num_rows)
for name in ["logp_margin", "logp_margin_norm", "logp_margin_abs", "logp_margin_norm_abs", "rm_margin"]:
    check(f"pyarrow scores.{name} is double", scores.schema.field(name).type == pa.float64())
# The log-probs were the input's (a `rank` job): scores/ leaves them there.
check("pyarrow scores/ leaves the input's log-probs in the input",
      not {"chosen_logps", "rejected_logps"} & set(scores.schema.names), scores.schema.names)
check("pyarrow scores.truncated is bool", scores.schema.field("truncated").type == pa.bool_())
selected = pq.ParquetDataset(out / "selected").read()
check("pyarrow selected/ rows = selected", selected.num_rows == counts["selected_rows"], selected.num_rows)
check("pyarrow selected/ in rank order", selected.column("rank").to_pylist() == list(range(1, selected.num_rows + 1)))
rejected = pq.read_table(out / "rejected_rows.parquet")
check("pyarrow rejected rows = rejected", rejected.num_rows == counts["rejected_rows"], rejected.num_rows)
check("pyarrow rejected.reason is string", rejected.schema.field("reason").type == pa.string())
facts = json.loads(pq.read_metadata(out / "ranking.parquet").metadata[b"apscore.facts"])
check("pyarrow key-value metadata holds the facts", facts["counts"]["scored_rows"] == counts["scored_rows"])
check("input rows = scored + rejected", counts["input_rows"] == counts["scored_rows"] + counts["rejected_rows"])

# DuckDB: the README's snippet, and the types it sees.
con = duckdb.connect()
top = con.execute(
    f"""SELECT rank, row_id, source_file, rm_margin, logp_margin_norm, alignment_potential
        FROM '{out}/ranking.parquet' WHERE selected ORDER BY rank LIMIT 5"""
).fetchall()
check("duckdb README snippet returns the top 5", [r[0] for r in top] == [1, 2, 3, 4, 5], top)
n_selected = con.execute(f"SELECT count(*) FROM '{out}/ranking.parquet' WHERE selected").fetchone()[0]
check("duckdb counts the selected rows", n_selected == counts["selected_rows"], n_selected)
n_scores = con.execute(f"SELECT count(*) FROM '{out}/scores/*.parquet'").fetchone()[0]
check("duckdb reads scores/*.parquet", n_scores == counts["scored_rows"], n_scores)
types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM '{out}/ranking.parquet'").fetchall()}
check("duckdb sees alignment_potential as DOUBLE", types["alignment_potential"] == "DOUBLE", types)
check("duckdb sees selected as BOOLEAN", types["selected"] == "BOOLEAN", types)
joined = con.execute(
    f"""SELECT count(*) FROM '{out}/selected/*.parquet' s
        JOIN '{out}/ranking.parquet' r USING (row_id) WHERE r.selected AND s.rank = r.rank"""
).fetchone()[0]
check("duckdb: selected/ agrees with ranking.parquet", joined == counts["selected_rows"], joined)

# polars.
pl_ranking = pl.read_parquet(out / "ranking.parquet")
check("polars ranking.rank is Int64", pl_ranking.schema["rank"] == pl.Int64, pl_ranking.schema["rank"])
check("polars ranking.alignment_potential is Float64", pl_ranking.schema["alignment_potential"] == pl.Float64)
check("polars ranking rows = scored", pl_ranking.height == counts["scored_rows"], pl_ranking.height)
pl_selected = pl.read_parquet(f"{out}/selected/*.parquet")
check("polars selected/ rows = selected", pl_selected.height == counts["selected_rows"], pl_selected.height)
pl_scores = pl.scan_parquet(f"{out}/scores/*.parquet").select(pl.len()).collect().item()
check("polars scans scores/", pl_scores == counts["scored_rows"], pl_scores)

# pandas: the README's snippet.
df = pd.read_parquet(out / "ranking.parquet")
best = df[df.selected].sort_values("rank").head(5)[["rank", "rm_margin", "logp_margin_norm", "alignment_potential"]]
check("pandas README snippet returns the top 5", list(best["rank"]) == [1, 2, 3, 4, 5], best)
check("pandas selected count", int(df.selected.sum()) == counts["selected_rows"])

# Joining scores/ back to the input (scores/ holds the row keys and the computed columns):
# on (source_file, source_row), the file and the row's place in it.
inputs = [source["path"] for source in summary["inputs"]]
n_joined = con.execute(
    f"""SELECT count(*) FROM '{out}/scores/*.parquet' s
        JOIN read_parquet({inputs!r}, filename = true, file_row_number = true) d
          ON s.source_file = d.filename AND s.source_row = d.file_row_number"""
).fetchone()[0]
check("duckdb README join: scores/ to the input", n_joined == counts["scored_rows"], n_joined)
frames = []
for path in inputs:
    frame = pd.read_parquet(path)
    frame["source_file"], frame["source_row"] = path, range(len(frame))
    frames.append(frame)
joined = pd.read_parquet(out / "scores").merge(
    pd.concat(frames), on=["source_file", "source_row"], suffixes=("", "_input"))
check("pandas README join: scores/ to the input", len(joined) == counts["scored_rows"], len(joined))
if {"score_chosen", "score_rejected"} <= set(joined.columns):
    check("pandas join: rm_margin = score_chosen - score_rejected",
          ((joined.score_chosen - joined.score_rejected) - joined.rm_margin).abs().max() < 1e-12)
if {"chosen_logps", "rejected_logps"} <= set(joined.columns):
    check("pandas join: logp_margin = chosen_logps - rejected_logps (the input's)",
          ((joined.chosen_logps - joined.rejected_logps) - joined.logp_margin).abs().max() == 0)
pl_joined = pl.read_parquet(f"{out}/scores/*.parquet").join(
    pl.read_parquet(inputs, include_file_paths="source_file")
      .with_columns(pl.int_range(pl.len()).over("source_file").cast(pl.Int64).alias("source_row")),
    on=["source_file", "source_row"])
check("polars join: scores/ to the input", pl_joined.height == counts["scored_rows"], pl_joined.height)

passed = sum(results)
failed = len(results) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
