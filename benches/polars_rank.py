#!/usr/bin/env python3
"""The polars equivalent of `apscore rank` for benches/rank-vs-polars.sh: what a user with a
pre-scored dataset writes instead of apscore. Reads every column, computes the margins and the
alignment potential (population z-scores), sorts by it (ties by input order), and writes the
ranking and the top RATIO of the rows with all their columns. Needs polars.

Usage: polars_rank.py INPUT_DIR OUTPUT_DIR [RATIO]
"""
import sys
from pathlib import Path

import polars as pl


def z(column: str) -> pl.Expr:
    return (pl.col(column) - pl.col(column).mean()) / pl.col(column).std(ddof=0)


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.4
    ranked = (
        pl.scan_parquet(f"{src}/**/*.parquet")
        .with_row_index("row_id")
        .with_columns(
            rm_margin=pl.col("score_chosen") - pl.col("score_rejected"),
            logp_margin_norm_abs=(pl.col("chosen_logps_norm") - pl.col("rejected_logps_norm")).abs(),
        )
        .with_columns(alignment_potential=z("rm_margin") - z("logp_margin_norm_abs"))
        .sort(["alignment_potential", "row_id"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .collect()
    )
    k = int(ratio * ranked.height)
    out.mkdir(parents=True, exist_ok=True)
    ranked.select(
        "row_id", "rm_margin", "logp_margin_norm_abs", "alignment_potential", "rank",
        selected=pl.col("rank") <= k,
    ).write_parquet(out / "ranking.parquet", compression="zstd")
    ranked.head(k).drop("rm_margin", "logp_margin_norm_abs", "alignment_potential").write_parquet(
        out / "selected.parquet", compression="zstd")
    print(f"polars: ranked {ranked.height} rows, selected {k}")


if __name__ == "__main__":
    main()
