//! Writing a job's outputs (SPEC §3) once every shard is scored and the ranking is known.
//!
//! - [`load_rank_rows`] reads the margins back from the shards' `scores/` parts;
//! - [`write_ranking`] writes `ranking.parquet`, one row per scored pair in rank order;
//! - [`write_selected`] gathers the selected rows' original columns from `scores/` into
//!   `selected/`, in rank order, in chunks that bound memory;
//! - [`write_rejected`] merges the shards' rejected rows into `rejected_rows.parquet`.
//!
//! Each file becomes visible only when complete (see `ParquetSink`).

use std::sync::Arc;

use apscore_core::columns;
use apscore_core::parquet_io::{self, ParquetIoError, ParquetSink};
use apscore_core::shard::Shard;
use apscore_core::storage::{Location, StorageError};
use apscore_worker::shard_scoring::rejected_schema;
use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use futures::TryStreamExt;

use crate::plan::Plan;
use crate::ranking::{RankRows, Ranking, alignment_potential};

/// The ranking file's name under the output location.
pub const RANKING_FILE: &str = "ranking.parquet";
/// The rejected rows' file name under the output location.
pub const REJECTED_FILE: &str = "rejected_rows.parquet";
/// The selected rows' folder under the output location.
pub const SELECTED_DIR: &str = "selected";

/// Rows per record batch of `ranking.parquet`.
const RANKING_BATCH_ROWS: usize = 65_536;
/// Memory for one chunk of selected rows being gathered.
const SELECTED_CHUNK_BYTES: f64 = 256.0 * 1024.0 * 1024.0;

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
    #[error("{file}: expected {expected} scored rows, found {found}")]
    RowCount {
        file: String,
        expected: u64,
        found: u64,
    },
}

fn arrow_err(file: &str) -> impl Fn(ArrowError) -> OutputError + '_ {
    move |source| OutputError::Arrow {
        file: file.to_string(),
        source,
    }
}

/// Reads `row_id` and the margins of every scored row back from the `scores/` parts.
/// `scored[i]` is the number of rows shard `i` reported scored.
pub async fn load_rank_rows(
    output: &Location,
    shards: &[Shard],
    scored: &[u64],
) -> Result<RankRows, OutputError> {
    let total: u64 = scored.iter().sum();
    let mut rows = RankRows {
        row_id: Vec::with_capacity(total as usize),
        rm_margin: Vec::with_capacity(total as usize),
        logp_margin: Vec::with_capacity(total as usize),
        logp_margin_norm: Vec::with_capacity(total as usize),
    };
    let wanted = [
        columns::ROW_ID,
        columns::RM_MARGIN,
        columns::LOGP_MARGIN,
        columns::LOGP_MARGIN_NORM,
    ];
    for (shard, &expected) in shards.iter().zip(scored) {
        let part = output.input_file(&shard.scores_part()).await?;
        let footer = parquet_io::read_footer(&part).await?;
        let groups = footer.row_group_rows().len();
        let before = rows.len();
        let mut stream = parquet_io::read_rows(&part, &footer, 0..groups, Some(&wanted)).await?;
        while let Some(batch) = stream.try_next().await? {
            let column =
                |name: &str| batch.column(batch.schema().index_of(name).expect("projected"));
            rows.row_id.extend(
                column(columns::ROW_ID)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as u64),
            );
            for (name, target) in [
                (columns::RM_MARGIN, &mut rows.rm_margin),
                (columns::LOGP_MARGIN, &mut rows.logp_margin),
                (columns::LOGP_MARGIN_NORM, &mut rows.logp_margin_norm),
            ] {
                target.extend_from_slice(column(name).as_primitive::<Float64Type>().values());
            }
        }
        let found = (rows.len() - before) as u64;
        if found != expected {
            return Err(OutputError::RowCount {
                file: part.display,
                expected,
                found,
            });
        }
    }
    Ok(rows)
}

fn ranking_schema() -> SchemaRef {
    let f64_field = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
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
    ]))
}

/// Writes `ranking.parquet`: every scored row in rank order with its margins, z-scores,
/// alignment potential, the score it was ranked by, its rank and whether it is selected.
pub async fn write_ranking(
    output: &Location,
    plan: &Plan,
    rows: &RankRows,
    ranking: &Ranking,
    implicit_weight: f64,
    key_values: &[(String, String)],
) -> Result<(), OutputError> {
    let path = output.path_of(RANKING_FILE);
    let display = output.display_of(&path);
    let schema = ranking_schema();
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
        let z_imp: Vec<f64> = lmn
            .iter()
            .map(|&v| ranking.z_implicit.apply(v.abs()))
            .collect();
        let ap: Vec<f64> = z_rm
            .iter()
            .zip(&z_imp)
            .map(|(&a, &b)| alignment_potential(a, b, implicit_weight))
            .collect();
        let row_ids: Vec<u64> = chunk.iter().map(|&i| rows.row_id[i as usize]).collect();
        let located: Vec<_> = row_ids.iter().map(|&id| plan.locate(id)).collect();
        let f64s = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let abs = |v: &[f64]| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(v.iter().map(|x| x.abs())))
        };
        let (lm_abs, lmn_abs) = (abs(&lm), abs(&lmn));
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                row_ids.iter().map(|&v| v as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                located.iter().map(|(f, _)| f.file.display.as_str()),
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
            f64s(chunk.iter().map(|&i| ranking.scores[i as usize]).collect()),
            Arc::new(Int64Array::from_iter_values(
                (0..chunk.len()).map(|j| (first_rank + j + 1) as i64),
            )),
            Arc::new(BooleanArray::from_iter(
                (0..chunk.len()).map(|j| Some(first_rank + j < ranking.selected)),
            )),
        ];
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(arrow_err(&display))?;
        sink.write(&batch).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// Writes `selected/part-NNNNN.parquet`: the selected rows in rank order, with the input's
/// columns (`input_columns`) followed by `row_id` and `rank`. Returns the files written.
pub async fn write_selected(
    output: &Location,
    plan: &Plan,
    input_columns: &[String],
    scored: &[u64],
    ranking: &Ranking,
    key_values: &[(String, String)],
) -> Result<Vec<String>, OutputError> {
    // Where each shard's scored rows start among all scored rows.
    let mut part_start = Vec::with_capacity(scored.len() + 1);
    part_start.push(0u64);
    for &n in scored {
        part_start.push(part_start.last().unwrap() + n);
    }
    let bytes_per_row = plan
        .files
        .iter()
        .map(|f| f.bytes_per_row)
        .fold(0.0f64, f64::max)
        + 16.0;
    let chunk_rows = ((SELECTED_CHUNK_BYTES / bytes_per_row) as usize).max(1024);
    let mut wanted_columns: Vec<&str> = input_columns.iter().map(String::as_str).collect();
    wanted_columns.push(columns::ROW_ID);

    let selected = &ranking.order[..ranking.selected];
    let mut written = Vec::new();
    for (chunk_index, chunk) in selected.chunks(chunk_rows).enumerate() {
        let relative = format!("{SELECTED_DIR}/part-{chunk_index:05}.parquet");
        let path = output.path_of(&relative);
        let display = output.display_of(&path);
        let gathered =
            gather_rows(output, plan, &part_start, &wanted_columns, chunk, &display).await?;
        let first_rank = chunk_index * chunk_rows;
        let rank: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..chunk.len()).map(|j| (first_rank + j + 1) as i64),
        ));
        let mut fields: Vec<Field> = gathered
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(columns::RANK, DataType::Int64, false));
        let mut arrays = gathered.columns().to_vec();
        arrays.push(rank);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(arrow_err(&display))?;
        let mut sink =
            ParquetSink::create(output.store(), path, display, batch.schema(), key_values)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = parquet_io::BATCH_ROWS.min(batch.num_rows() - offset);
            sink.write(&batch.slice(offset, len)).await?;
            offset += len;
        }
        sink.finish().await?;
        written.push(relative);
    }
    Ok(written)
}

/// Reads the rows at positions `chunk` (indices among all scored rows, in rank order) from the
/// `scores/` parts and returns them in the order of `chunk`.
async fn gather_rows(
    output: &Location,
    plan: &Plan,
    part_start: &[u64],
    wanted_columns: &[&str],
    chunk: &[u32],
    display: &str,
) -> Result<RecordBatch, OutputError> {
    // (position among scored rows, position in the chunk), in file order.
    let mut wanted: Vec<(u64, u32)> = chunk
        .iter()
        .enumerate()
        .map(|(d, &p)| (p as u64, d as u32))
        .collect();
    wanted.sort_unstable();
    let mut pieces: Vec<RecordBatch> = Vec::new();
    let mut destinations: Vec<u32> = Vec::with_capacity(chunk.len());
    let mut next = 0usize;
    for (shard, bounds) in plan.shards.iter().zip(part_start.windows(2)) {
        let (start, end) = (bounds[0], bounds[1]);
        if next >= wanted.len() || wanted[next].0 >= end {
            continue;
        }
        let part = output.input_file(&shard.scores_part()).await?;
        let footer = parquet_io::read_footer(&part).await?;
        let groups = footer.row_group_rows().len();
        let mut stream =
            parquet_io::read_rows(&part, &footer, 0..groups, Some(wanted_columns)).await?;
        let mut batch_start = start;
        while let Some(batch) = stream.try_next().await? {
            let batch_end = batch_start + batch.num_rows() as u64;
            let mut take = Vec::new();
            while next < wanted.len() && wanted[next].0 < batch_end {
                take.push((wanted[next].0 - batch_start) as u32);
                destinations.push(wanted[next].1);
                next += 1;
            }
            if !take.is_empty() {
                let indices = UInt32Array::from(take);
                let picked =
                    take_record_batch(&batch, &indices).map_err(arrow_err(&part.display))?;
                pieces.push(
                    in_column_order(&picked, wanted_columns).map_err(arrow_err(&part.display))?,
                );
            }
            batch_start = batch_end;
        }
    }
    let schema = match pieces.first() {
        Some(p) => p.schema(),
        None => {
            return Err(OutputError::RowCount {
                file: display.to_string(),
                expected: chunk.len() as u64,
                found: 0,
            });
        }
    };
    let all = concat_batches(&schema, &pieces).map_err(arrow_err(display))?;
    if all.num_rows() != chunk.len() {
        return Err(OutputError::RowCount {
            file: display.to_string(),
            expected: chunk.len() as u64,
            found: all.num_rows() as u64,
        });
    }
    // `all` is in file order; row i belongs at chunk position destinations[i].
    let mut inverse = vec![0u32; chunk.len()];
    for (i, &d) in destinations.iter().enumerate() {
        inverse[d as usize] = i as u32;
    }
    take_record_batch(&all, &UInt32Array::from(inverse)).map_err(arrow_err(display))
}

/// `batch`'s columns reordered to `names`.
fn in_column_order(batch: &RecordBatch, names: &[&str]) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let indices: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<Result<_, _>>()?;
    batch.project(&indices)
}

/// Merges the shards' rejected rows into `rejected_rows.parquet`, in input order; returns
/// the row count and the rows' reasons with their counts.
pub async fn write_rejected(
    output: &Location,
    shards: &[Shard],
    key_values: &[(String, String)],
) -> Result<(u64, std::collections::BTreeMap<String, u64>), OutputError> {
    let path = output.path_of(REJECTED_FILE);
    let display = output.display_of(&path);
    let mut sink =
        ParquetSink::create(output.store(), path, display, rejected_schema(), key_values)?;
    let mut reasons = std::collections::BTreeMap::new();
    for shard in shards {
        let part = output.input_file(&shard.rejected_part()).await?;
        let footer = parquet_io::read_footer(&part).await?;
        let groups = footer.row_group_rows().len();
        let mut stream = parquet_io::read_rows(&part, &footer, 0..groups, None).await?;
        while let Some(batch) = stream.try_next().await? {
            let reason = batch.column(3).as_string::<i32>();
            for r in reason.iter().flatten() {
                *reasons.entry(r.to_string()).or_insert(0u64) += 1;
            }
            sink.write(&batch).await?;
        }
    }
    let rows = sink.finish().await?;
    Ok((rows, reasons))
}
