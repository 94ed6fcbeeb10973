//! Picking scored rows by position out of the `scores/` parts.
//!
//! Positions count the scored rows of a job in input order, across its parts. Given the
//! positions wanted, in ascending order, a [`RowPicker`] reads each part that holds some of
//! them once, front to back, and hands out the wanted rows batch by batch.

use std::ops::Range;

use apscore_core::outputs::SCORES_DIR;
use apscore_core::parquet_io::{ParquetIoError, in_column_order, read_whole};
use apscore_core::storage::Location;
use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::error::{OutputError, arrow_err};
use crate::scored::ScoredPart;

/// Reads the rows at ascending `positions` from the `scores/` parts, `columns` only (in that
/// order).
pub struct RowPicker<'a> {
    output: &'a Location,
    parts: &'a [ScoredPart],
    positions: &'a [u32],
    columns: &'a [&'a str],
    /// The next part to open.
    next_part: usize,
    /// Position of the first row of the next part to open.
    next_part_start: u64,
    /// The part being read.
    reading: Option<OpenPart>,
    /// Index into `positions` of the next row to pick.
    next: usize,
}

/// A `scores/` part being read front to back.
struct OpenPart {
    batches: BoxStream<'static, Result<RecordBatch, ParquetIoError>>,
    /// The part as a person writes it, for errors.
    file: String,
    /// Position of the first row of the next batch.
    batch_start: u64,
}

impl<'a> RowPicker<'a> {
    pub fn new(
        output: &'a Location,
        parts: &'a [ScoredPart],
        positions: &'a [u32],
        columns: &'a [&'a str],
    ) -> Self {
        debug_assert!(positions.is_sorted());
        RowPicker {
            output,
            parts,
            positions,
            columns,
            next_part: 0,
            next_part_start: 0,
            reading: None,
            next: 0,
        }
    }

    /// The next picked rows and the indices into `positions` they are, or `None` when every
    /// position was picked. Fails if a position lies beyond the last part.
    pub async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Range<usize>)>, OutputError> {
        while self.next < self.positions.len() {
            let wanted = u64::from(self.positions[self.next]);
            let Some(part) = &mut self.reading else {
                // Open the part that holds the next wanted row.
                let Some(part) = self.parts.get(self.next_part) else {
                    return Err(OutputError::RowCount {
                        file: self.output.display_of(&self.output.path_of(SCORES_DIR)),
                        expected: self.positions.len() as u64,
                        found: self.next as u64,
                    });
                };
                let start = self.next_part_start;
                self.next_part += 1;
                self.next_part_start += part.rows;
                if wanted < start + part.rows {
                    let file = self.output.input_file(&part.path).await?;
                    let stream = read_whole(&file, Some(self.columns)).await?;
                    self.reading = Some(OpenPart {
                        batches: Box::pin(stream),
                        file: file.display,
                        batch_start: start,
                    });
                }
                continue;
            };
            let Some(batch) = part.batches.try_next().await? else {
                self.reading = None;
                continue;
            };
            let batch_start = part.batch_start;
            let batch_end = batch_start + batch.num_rows() as u64;
            let first = self.next;
            let mut take = Vec::new();
            while self.next < self.positions.len()
                && u64::from(self.positions[self.next]) < batch_end
            {
                take.push((u64::from(self.positions[self.next]) - batch_start) as u32);
                self.next += 1;
            }
            part.batch_start = batch_end;
            if !take.is_empty() {
                let picked = take_record_batch(&batch, &UInt32Array::from(take))
                    .and_then(|b| in_column_order(&b, self.columns))
                    .map_err(arrow_err(&part.file))?;
                return Ok(Some((picked, first..self.next)));
            }
        }
        Ok(None)
    }
}
