#!/usr/bin/env python3
"""Baseline for benches/rank-10m.sh: the reference code's selection (metric_selection.py) on the
same files, the way a user would run it without apscore: read the columns with pyarrow, z-score
with numpy, argsort, and write the selected rows back as Parquet. Needs pyarrow and numpy.

Usage: reference_rank.py INPUT_DIR OUTPUT_DIR [RATIO]
"""
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.4
    table = ds.dataset(src, format="parquet").to_table()
    rm = table["score_chosen"].to_numpy() - table["score_rejected"].to_numpy()
    lmn = np.abs(table["chosen_logps_norm"].to_numpy() - table["rejected_logps_norm"].to_numpy())
    z_rm = (rm - rm.mean()) / rm.std()
    z_lmn = (lmn - lmn.mean()) / lmn.std()
    score = z_rm - z_lmn
    k = int(ratio * len(score))
    # Stable sort of -score: descending, ties by input order (the reference's argsort is not
    # stable; apscore's contract is).
    order = np.argsort(-score, kind="stable")
    ranking = pa.table({"row_id": order, "alignment_potential": score[order], "rank": np.arange(1, len(order) + 1)})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(ranking, out / "ranking.parquet", compression="zstd")
    pq.write_table(table.take(order[:k]), out / "selected.parquet", compression="zstd")
    print(f"reference: ranked {len(score)} rows, selected {k}")


if __name__ == "__main__":
    main()
