#!/usr/bin/env python3
"""polars doing the work `apscore rank` does, for benches/rank-vs-polars.sh (SAME_OUTPUTS=1):
where benches/polars_rank.py writes a 6-column ranking and the top rows, this writes the same
three tables with the same columns as apscore's contract (docs/outputs.md) — `scores` (the row
keys and the 15 score columns, in input order), `ranking` (14 columns, in rank order) and
`selected` (the input's columns plus `row_id` and `rank`) — zstd level 1 like apscore. It
shows what the extra columns cost polars, so the two can be compared on equal work. Needs
polars.

Usage: polars_rank_same_outputs.py INPUT_DIR OUTPUT_DIR [RATIO]
"""
import sys
from pathlib import Path

import polars as pl

SCORES = [
    "chosen_logps", "rejected_logps", "chosen_logps_norm", "rejected_logps_norm",
    "chosen_tokens", "rejected_tokens", "logp_margin", "logp_margin_norm", "logp_margin_abs",
    "logp_margin_norm_abs", "rm_margin", "truncated", "row_id", "source_file", "source_row",
]
RANKING = [
    "row_id", "source_file", "source_row", "rm_margin", "logp_margin", "logp_margin_norm",
    "logp_margin_abs", "logp_margin_norm_abs", "z_rm_margin", "z_logp_margin_norm_abs",
    "alignment_potential", "score", "rank",
]


def z(column: str) -> pl.Expr:
    return (pl.col(column) - pl.col(column).mean()) / pl.col(column).std(ddof=0)


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.4
    files = f"{src}/**/*.parquet"
    input_columns = pl.scan_parquet(files).collect_schema().names()
    ranked = (
        pl.scan_parquet(files, include_file_paths="source_file")
        .with_row_index("row_id")
        .with_columns(
            source_row=pl.int_range(pl.len()).over("source_file"),
            chosen_tokens=pl.lit(None, pl.Int64),
            rejected_tokens=pl.lit(None, pl.Int64),
            truncated=pl.lit(None, pl.Boolean),
            logp_margin=pl.col("chosen_logps") - pl.col("rejected_logps"),
            logp_margin_norm=pl.col("chosen_logps_norm") - pl.col("rejected_logps_norm"),
            rm_margin=pl.col("score_chosen") - pl.col("score_rejected"),
        )
        .with_columns(
            logp_margin_abs=pl.col("logp_margin").abs(),
            logp_margin_norm_abs=pl.col("logp_margin_norm").abs(),
        )
        .with_columns(z_rm_margin=z("rm_margin"), z_logp_margin_norm_abs=z("logp_margin_norm_abs"))
        .with_columns(alignment_potential=pl.col("z_rm_margin") - pl.col("z_logp_margin_norm_abs"))
        .with_columns(score=pl.col("alignment_potential"))
        .sort(["alignment_potential", "row_id"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .collect()
    )
    k = int(ratio * ranked.height)
    out.mkdir(parents=True, exist_ok=True)
    write = {"compression": "zstd", "compression_level": 1}
    ranked.sort("row_id").select(SCORES).write_parquet(out / "scores.parquet", **write)
    ranked.select(*RANKING, selected=pl.col("rank") <= k).write_parquet(out / "ranking.parquet", **write)
    ranked.head(k).select(*input_columns, "row_id", "rank").write_parquet(out / "selected.parquet", **write)
    print(f"polars (same outputs): ranked {ranked.height} rows, selected {k}")


if __name__ == "__main__":
    main()
