//! The scored rows of a job: its `scores/` parts (one per shard, in row order), what the
//! ranking needs of them, and the job-wide statistics merged part by part.
//!
//! A finished `rank`/`run` knows its parts from its shards; `select` and `report` find them
//! in an earlier job's output. Either way the ranking reads the same margins back.

use std::collections::BTreeMap;

use apscore_core::columns;
use apscore_core::outputs::REJECTED_FILE;
use apscore_core::parquet_io::read_whole;
use apscore_core::stats::MarginStats;
use apscore_core::storage::Location;
use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use futures::TryStreamExt;

use crate::error::OutputError;
use crate::plan::SourceFile;
use crate::ranking::{ImplicitMargin, RankRows};

/// One `scores/` part: its path under the output location and its rows.
#[derive(Debug, Clone)]
pub struct ScoredPart {
    pub path: String,
    pub rows: u64,
}

/// What a job knows once every row is scored or rejected.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The input files in row order.
    pub sources: Vec<SourceFile>,
    /// The `scores/` parts in row order.
    pub parts: Vec<ScoredPart>,
    /// The input's columns, which `selected/` carries.
    pub input_columns: Vec<String>,
    /// Statistics of the margins of the scored rows, merged from the shards' reports; `None`
    /// derives them from the parts' rows once read ([`part_stats`]).
    pub stats: Option<MarginStats>,
    /// Uncompressed bytes per row of the input, an estimate for memory budgets.
    pub bytes_per_row: f64,
}

/// Reads the margins of every scored row back from the `scores/` parts, and the `row_id`s and
/// reasons of the rejected rows from `rejected_rows.parquet`.
pub async fn load_rank_rows(
    output: &Location,
    parts: &[ScoredPart],
    implicit: ImplicitMargin,
) -> Result<(RankRows, BTreeMap<String, u64>), OutputError> {
    let total: u64 = parts.iter().map(|p| p.rows).sum();
    let mut rows = RankRows {
        rm_margin: Vec::with_capacity(total as usize),
        logp_margin: Vec::with_capacity(total as usize),
        logp_margin_norm: Vec::with_capacity(total as usize),
        dpo_margin: Vec::new(),
        rejected_row_ids: Vec::new(),
    };
    let dpo = implicit == ImplicitMargin::Dpo;
    let mut margins = vec![
        columns::RM_MARGIN,
        columns::LOGP_MARGIN,
        columns::LOGP_MARGIN_NORM,
    ];
    if dpo {
        margins.push(columns::DPO_MARGIN);
        rows.dpo_margin.reserve(total as usize);
    }
    for part in parts {
        let file = output.input_file(&part.path).await?;
        let before = rows.len();
        let mut stream = read_whole(&file, Some(&margins)).await?;
        while let Some(batch) = stream.try_next().await? {
            let column = |name: &str| {
                batch
                    .column(batch.schema().index_of(name).expect("projected"))
                    .as_primitive::<Float64Type>()
                    .values()
                    .clone()
            };
            rows.rm_margin
                .extend_from_slice(&column(columns::RM_MARGIN));
            rows.logp_margin
                .extend_from_slice(&column(columns::LOGP_MARGIN));
            rows.logp_margin_norm
                .extend_from_slice(&column(columns::LOGP_MARGIN_NORM));
            if dpo {
                rows.dpo_margin
                    .extend_from_slice(&column(columns::DPO_MARGIN));
            }
        }
        let found = (rows.len() - before) as u64;
        if found != part.rows {
            return Err(OutputError::RowCount {
                file: file.display,
                expected: part.rows,
                found,
            });
        }
    }

    let mut reasons = BTreeMap::new();
    let file = output.input_file(REJECTED_FILE).await?;
    let mut stream = read_whole(&file, Some(&[columns::ROW_ID, columns::REASON])).await?;
    while let Some(batch) = stream.try_next().await? {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        rows.rejected_row_ids
            .extend(ids.iter().map(|&id| id as u64));
        for reason in batch.column(1).as_string::<i32>().iter().flatten() {
            *reasons.entry(reason.to_string()).or_insert(0u64) += 1;
        }
    }
    if !rows.rejected_row_ids.is_sorted() {
        rows.rejected_row_ids.sort_unstable();
    }
    Ok((rows, reasons))
}

/// The statistics of `rows` merged part by part (`rows` holds the parts' rows in order), as a
/// worker summarises each shard and the coordinator merges them: identical to the last bit.
pub fn part_stats(rows: &RankRows, parts: &[ScoredPart]) -> MarginStats {
    let mut stats = MarginStats::default();
    let mut start = 0usize;
    for part in parts {
        let end = start + part.rows as usize;
        let part = MarginStats::from_columns(
            &rows.rm_margin[start..end],
            &rows.logp_margin[start..end],
            &rows.logp_margin_norm[start..end],
        );
        stats.merge(&match rows.dpo_margin.get(start..end) {
            Some(dpo) if !dpo.is_empty() => part.with_dpo(dpo),
            _ => part,
        });
        start = end;
    }
    stats
}
