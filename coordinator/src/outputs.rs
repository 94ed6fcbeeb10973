//! Writing a job's outputs (SPEC §3) once every shard is scored and the ranking is known.
//!
//! - [`load_rank_rows`] reads the margins back from the shards' `scores/` parts;
//! - [`write_ranking`] writes `ranking.parquet`, one row per scored pair in rank order;
//! - `selected/` is written by [`crate::selected`];
//! - [`write_rejected`] merges the shards' rejected rows into `rejected_rows.parquet`.
//!
//! Each file becomes visible only when complete (see `ParquetSink`).

use std::collections::BTreeMap;
use std::sync::Arc;

use apscore_core::columns;
use apscore_core::parquet_io::{self, ParquetIoError, ParquetSink};
use apscore_core::shard::Shard;
use apscore_core::storage::{Location, StorageError};
use apscore_worker::shard_scoring::rejected_schema;
use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use futures::TryStreamExt;

use crate::finish::ScoredPart;
use crate::plan::{SourceFile, locate};
use crate::ranking::{ImplicitMargin, RankRows, Ranking, alignment_potential};

/// The ranking file's name under the output location.
pub const RANKING_FILE: &str = "ranking.parquet";
/// The rejected rows' file name under the output location.
pub const REJECTED_FILE: &str = "rejected_rows.parquet";
/// The selected rows' folder under the output location.
pub const SELECTED_DIR: &str = "selected";

/// Rows per record batch of `ranking.parquet`.
const RANKING_BATCH_ROWS: usize = 65_536;

/// An output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Parquet(#[from] ParquetIoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{file}: {source}")]
    Arrow {
        file: String,
        #[source]
        source: ArrowError,
    },
    #[error("drawing the report: {0}")]
    Report(String),
    #[error("{file}: expected {expected} scored rows, found {found}")]
    RowCount {
        file: String,
        expected: u64,
        found: u64,
    },
}

pub(crate) fn arrow_err(file: &str) -> impl Fn(ArrowError) -> OutputError + '_ {
    move |source| OutputError::Arrow {
        file: file.to_string(),
        source,
    }
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

/// Streams every row group of `file` (`columns` only, when given).
pub(crate) async fn read_whole(
    file: &apscore_core::storage::InputFile,
    columns: Option<&[&str]>,
) -> Result<impl futures::Stream<Item = Result<RecordBatch, ParquetIoError>> + use<>, OutputError> {
    let footer = parquet_io::read_footer(file).await?;
    let groups = footer.row_group_rows().len();
    Ok(parquet_io::read_rows(file, &footer, 0..groups, columns).await?)
}

/// The columns of `ranking.parquet`; with the DPO margin, `dpo_margin` follows the other
/// margins and its z-score replaces `z_logp_margin_norm_abs`.
fn ranking_schema(implicit: ImplicitMargin) -> SchemaRef {
    let f64_field = |name: &str| Field::new(name, DataType::Float64, false);
    let mut fields = vec![
        Field::new(columns::ROW_ID, DataType::Int64, false),
        Field::new(columns::SOURCE_FILE, DataType::Utf8, false),
        Field::new(columns::SOURCE_ROW, DataType::Int64, false),
        f64_field(columns::RM_MARGIN),
        f64_field(columns::LOGP_MARGIN),
        f64_field(columns::LOGP_MARGIN_NORM),
        f64_field(columns::LOGP_MARGIN_ABS),
        f64_field(columns::LOGP_MARGIN_NORM_ABS),
        f64_field(columns::Z_RM_MARGIN),
        f64_field(columns::Z_LOGP_MARGIN_NORM_ABS),
        f64_field(columns::ALIGNMENT_POTENTIAL),
        f64_field(columns::SCORE),
        Field::new(columns::RANK, DataType::Int64, false),
        Field::new(columns::SELECTED, DataType::Boolean, false),
    ];
    if implicit == ImplicitMargin::Dpo {
        fields.insert(8, f64_field(columns::DPO_MARGIN));
        fields[10] = f64_field(columns::Z_DPO_MARGIN_ABS);
    }
    Arc::new(Schema::new(fields))
}

/// Writes `ranking.parquet`: every scored row in rank order with its margins, z-scores,
/// alignment potential, the score it was ranked by, its rank and whether it is selected.
pub async fn write_ranking(
    output: &Location,
    sources: &[SourceFile],
    rows: &RankRows,
    ranking: &Ranking,
    key_values: &[(String, String)],
) -> Result<(), OutputError> {
    let implicit_weight = ranking.params.implicit_weight;
    let path = output.path_of(RANKING_FILE);
    let display = output.display_of(&path);
    let schema = ranking_schema(ranking.params.implicit);
    let mut sink = ParquetSink::create(
        output.store(),
        path,
        display.clone(),
        Arc::clone(&schema),
        key_values,
    )?;
    for (chunk_index, chunk) in ranking.order.chunks(RANKING_BATCH_ROWS).enumerate() {
        let first_rank = chunk_index * RANKING_BATCH_ROWS;
        let pick = |v: &[f64]| -> Vec<f64> { chunk.iter().map(|&i| v[i as usize]).collect() };
        let rm = pick(&rows.rm_margin);
        let lm = pick(&rows.logp_margin);
        let lmn = pick(&rows.logp_margin_norm);
        let z_rm: Vec<f64> = rm.iter().map(|&v| ranking.z_rm.apply(v)).collect();
        let implicit: Vec<f64> = chunk.iter().map(|&i| rows.implicit(i as usize)).collect();
        let z_imp: Vec<f64> = implicit
            .iter()
            .map(|&v| ranking.z_implicit.apply(v.abs()))
            .collect();
        let ap: Vec<f64> = z_rm
            .iter()
            .zip(&z_imp)
            .map(|(&a, &b)| alignment_potential(a, b, implicit_weight))
            .collect();
        let row_ids: Vec<u64> = chunk.iter().map(|&i| rows.row_id(i as usize)).collect();
        let located: Vec<_> = row_ids.iter().map(|&id| locate(sources, id)).collect();
        let f64s = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let abs = |v: &[f64]| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(v.iter().map(|x| x.abs())))
        };
        let (lm_abs, lmn_abs) = (abs(&lm), abs(&lmn));
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                row_ids.iter().map(|&v| v as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                located.iter().map(|(f, _)| f.path.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                located.iter().map(|(_, r)| *r as i64),
            )),
            f64s(rm),
            f64s(lm),
            f64s(lmn),
            lm_abs,
            lmn_abs,
            f64s(z_rm),
            f64s(z_imp),
            f64s(ap),
            f64s(
                chunk
                    .iter()
                    .map(|&i| ranking.score(rows, i as usize))
                    .collect(),
            ),
            Arc::new(Int64Array::from_iter_values(
                (0..chunk.len()).map(|j| (first_rank + j + 1) as i64),
            )),
            Arc::new(BooleanArray::from_iter(
                (0..chunk.len()).map(|j| Some(first_rank + j < ranking.selected)),
            )),
        ];
        if ranking.params.implicit == ImplicitMargin::Dpo {
            arrays.insert(8, f64s(implicit));
        }
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(arrow_err(&display))?;
        sink.write(&batch).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// `batch`'s columns reordered to `names`.
pub(crate) fn in_column_order(
    batch: &RecordBatch,
    names: &[&str],
) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let indices: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<Result<_, _>>()?;
    batch.project(&indices)
}

/// Merges the shards' rejected rows into `rejected_rows.parquet`, in input order; returns the
/// number of rows.
pub async fn write_rejected(
    output: &Location,
    shards: &[Shard],
    key_values: &[(String, String)],
) -> Result<u64, OutputError> {
    let path = output.path_of(REJECTED_FILE);
    let display = output.display_of(&path);
    let mut sink =
        ParquetSink::create(output.store(), path, display, rejected_schema(), key_values)?;
    for shard in shards {
        let part = output.input_file(&shard.rejected_part()).await?;
        let mut stream = read_whole(&part, None).await?;
        while let Some(batch) = stream.try_next().await? {
            sink.write(&batch).await?;
        }
    }
    Ok(sink.finish().await?)
}
