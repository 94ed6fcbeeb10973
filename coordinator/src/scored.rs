//! The scored rows of a job: its `scores/` parts (one per shard, in row order), what the
//! ranking needs of them, and the job-wide statistics merged part by part.
//!
//! A finished `rank`/`run` knows its parts from its shards; `select` and `report` find them
//! in an earlier job's output. Either way the ranking reads the same margins back.

use std::collections::{BTreeMap, VecDeque};

use apscore_core::columns;
use apscore_core::outputs::REJECTED_FILE;
use apscore_core::parquet_io::read_whole;
use apscore_core::stats::MarginStats;
use apscore_core::storage::Location;
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use futures::TryStreamExt;
use tokio::task::JoinHandle;

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
    /// Whether the parts carry the reference model's log-probs (`ref_chosen_logps`,
    /// `ref_rejected_logps`), which `selected/` then carries too.
    pub reference: bool,
    /// Whether the parts carry the input's columns (`--scores-with-input`); otherwise
    /// `selected/` and the report read them from the input files.
    pub inputs_in_scores: bool,
    /// Whether the log-probs are the input's own (precomputed, no model) and the parts leave
    /// them there: `selected/` then takes them from the input files, as doubles.
    pub logps_in_input: bool,
    /// Statistics of the margins of the scored rows, merged from the shards' reports; `None`
    /// derives them from the parts' rows once read ([`part_stats`]).
    pub stats: Option<MarginStats>,
    /// Uncompressed bytes per row of the input, an estimate for memory budgets.
    pub bytes_per_row: f64,
}

impl Scored {
    /// The columns of `selected/` taken from the parts, in order: the input's, the reference
    /// log-probs under the names TRL's DPO trainer reads as precomputed, then `row_id`.
    pub fn selected_columns(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.input_columns.iter().map(String::as_str).collect();
        if self.reference {
            for name in [columns::REF_CHOSEN_LOGPS, columns::REF_REJECTED_LOGPS] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names.push(columns::ROW_ID);
        names
    }

    /// Whether `selected/` takes the score column `name` from the input files rather than
    /// from the parts: the log-probs of a job that read them from its input and did not copy
    /// them into `scores/`.
    pub fn score_column_in_input(&self, name: &str) -> bool {
        self.logps_in_input && !self.inputs_in_scores && columns::LOGP_COLUMNS.contains(&name)
    }
}

/// Reads the margins of every scored row back from the `scores/` parts, and the `row_id`s and
/// reasons of the rejected rows from `rejected_rows.parquet`.
///
/// The parts must be exactly what the job wrote: every row's `row_id` is checked against the
/// position it must have (scored and rejected rows together number `0..input_rows` in input
/// order), so a missing, duplicated, reordered or altered part is an error, not a ranking.
pub async fn load_rank_rows(
    output: &Location,
    parts: &[ScoredPart],
    implicit: ImplicitMargin,
    input_rows: u64,
) -> Result<(RankRows, BTreeMap<String, u64>), OutputError> {
    let total: u64 = parts.iter().map(|p| p.rows).sum();
    let mut rows = RankRows {
        rm_margin: Vec::with_capacity(total as usize),
        logp_margin: Vec::with_capacity(total as usize),
        logp_margin_norm: Vec::with_capacity(total as usize),
        dpo_margin: Vec::new(),
        rejected_row_ids: Vec::new(),
    };
    let reasons = read_rejected(output, &mut rows.rejected_row_ids).await?;
    let mut expected = ExpectedRowIds::new(&rows.rejected_row_ids);

    let dpo = implicit == ImplicitMargin::Dpo;
    let mut wanted = vec![
        columns::ROW_ID,
        columns::RM_MARGIN,
        columns::LOGP_MARGIN,
        columns::LOGP_MARGIN_NORM,
    ];
    if dpo {
        wanted.push(columns::DPO_MARGIN);
        rows.dpo_margin.reserve(total as usize);
    }

    // Parts are read (decompressed, decoded) side by side, a few ahead, each on its own task;
    // they are checked and appended here in order.
    let mut to_read = parts.iter();
    let mut reading = InFlight(VecDeque::new());
    for part in parts {
        while reading.0.len() < PARTS_READ_AHEAD {
            let Some(next) = to_read.next() else { break };
            let (output, path, wanted) = (output.clone(), next.path.clone(), wanted.clone());
            reading.0.push_back(tokio::spawn(async move {
                read_part_margins(&output, &path, &wanted).await
            }));
        }
        let (file, batches) = reading
            .0
            .pop_front()
            .expect("this part is being read")
            .await??;
        let before = rows.len();
        for batch in batches {
            let index = |name: &str| batch.schema().index_of(name).expect("projected");
            let column = |name: &str| {
                batch
                    .column(index(name))
                    .as_primitive::<Float64Type>()
                    .values()
                    .clone()
            };
            let row_ids = batch
                .column(index(columns::ROW_ID))
                .as_primitive::<Int64Type>();
            for (row, &found) in row_ids.values().iter().enumerate() {
                let want = expected.next();
                if found as u64 != want {
                    return Err(OutputError::RowIds {
                        file: file.clone(),
                        row: (rows.len() - before + row) as u64,
                        found,
                        expected: want,
                    });
                }
            }
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
                file,
                expected: part.rows,
                found,
            });
        }
    }
    let accounted = rows.len() as u64 + rows.rejected_row_ids.len() as u64;
    if accounted != input_rows {
        return Err(OutputError::RowsMissing {
            location: output.display().into(),
            scored: rows.len() as u64,
            rejected: rows.rejected_row_ids.len() as u64,
            input_rows,
        });
    }
    Ok((rows, reasons))
}

/// `scores/` parts read at once while the margins are loaded: enough to keep every core
/// decoding, few enough that the batches held stay small (a part of 65,536 rows is 2 MiB).
const PARTS_READ_AHEAD: usize = 8;

/// Reads of `scores/` parts started ahead; those still running are stopped when the loading
/// ends early (a part that is not the job's), so a failing job does not read on.
struct InFlight<T>(VecDeque<JoinHandle<T>>);

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        for read in &self.0 {
            read.abort();
        }
    }
}

/// The columns `wanted` of the `scores/` part at `path`, whole, and the part as a person writes it.
async fn read_part_margins(
    output: &Location,
    path: &str,
    wanted: &[&str],
) -> Result<(String, Vec<RecordBatch>), OutputError> {
    let file = output.input_file(path).await?;
    let batches = read_whole(&file, Some(wanted)).await?.try_collect().await?;
    Ok((file.display, batches))
}

/// Reads the `row_id`s (ascending) and counts the reasons of `rejected_rows.parquet`.
async fn read_rejected(
    output: &Location,
    row_ids: &mut Vec<u64>,
) -> Result<BTreeMap<String, u64>, OutputError> {
    let mut reasons = BTreeMap::new();
    let file = output.input_file(REJECTED_FILE).await?;
    let mut stream = read_whole(&file, Some(&[columns::ROW_ID, columns::REASON])).await?;
    while let Some(batch) = stream.try_next().await? {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        row_ids.extend(ids.iter().map(|&id| id as u64));
        for reason in batch.column(1).as_string::<i32>().iter().flatten() {
            *reasons.entry(reason.to_string()).or_insert(0u64) += 1;
        }
    }
    if !row_ids.is_sorted() {
        row_ids.sort_unstable();
    }
    Ok(reasons)
}

/// The `row_id`s the scored rows must have, in order: every id from 0 up that is not rejected.
struct ExpectedRowIds<'a> {
    rejected: &'a [u64],
    next_id: u64,
}

impl<'a> ExpectedRowIds<'a> {
    fn new(rejected: &'a [u64]) -> Self {
        ExpectedRowIds {
            rejected,
            next_id: 0,
        }
    }

    fn next(&mut self) -> u64 {
        while let Some((&first, rest)) = self.rejected.split_first() {
            if first > self.next_id {
                break;
            }
            if first == self.next_id {
                self.next_id += 1;
            }
            self.rejected = rest;
        }
        self.next_id += 1;
        self.next_id - 1
    }
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
