//! `ranking.parquet`: every scored row in rank order with its margins, z-scores, alignment
//! potential, the score it was ranked by, its rank and whether it is selected.

use std::sync::Arc;

use apscore_core::columns;
use apscore_core::outputs::RANKING_FILE;
use apscore_core::parquet_io::ParquetSink;
use apscore_core::storage::Location;
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{OutputError, arrow_err};
use crate::plan::{SourceFile, locate};
use crate::ranking::{ImplicitMargin, Metric, RankRows, Ranking, alignment_potential};

/// Rows per record batch of `ranking.parquet`.
const RANKING_BATCH_ROWS: usize = 65_536;

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
        // The implicit margin is `logp_margin_norm` unless the ranking uses the DPO margin:
        // gathered once (each gather is a cache miss a row).
        let dpo = (ranking.params.implicit == ImplicitMargin::Dpo).then(|| pick(&rows.dpo_margin));
        let implicit: &[f64] = dpo.as_deref().unwrap_or(&lmn);
        let z_imp: Vec<f64> = implicit
            .iter()
            .map(|&v| ranking.z_implicit.apply(v.abs()))
            .collect();
        let ap: Vec<f64> = z_rm
            .iter()
            .zip(&z_imp)
            .map(|(&a, &b)| alignment_potential(a, b, implicit_weight))
            .collect();
        let score: Vec<f64> = match ranking.params.metric {
            // The alignment potential, −0.0 as 0.0 (as `Ranking::score` has it).
            Metric::Ap => ap.iter().map(|&v| v + 0.0).collect(),
            _ => chunk
                .iter()
                .map(|&i| ranking.score(rows, i as usize))
                .collect(),
        };
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
            f64s(score),
            Arc::new(Int64Array::from_iter_values(
                (0..chunk.len()).map(|j| (first_rank + j + 1) as i64),
            )),
            Arc::new(BooleanArray::from_iter(
                (0..chunk.len()).map(|j| Some(first_rank + j < ranking.selected)),
            )),
        ];
        if let Some(dpo) = dpo {
            arrays.insert(8, f64s(dpo));
        }
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(arrow_err(&display))?;
        sink.write(&batch).await?;
    }
    sink.finish().await?;
    Ok(())
}
