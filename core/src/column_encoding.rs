//! Encoding a Parquet file's columns in parallel, on every core.
//!
//! parquet's `ArrowWriter` encodes and compresses one column after another on the calling
//! thread. A [`ColumnEncoder`] gives each column of the row group in progress its own writer
//! and encodes a batch's columns on rayon's pool at once, then splices the finished column
//! chunks into the file in schema order. The bytes are those `ArrowWriter` writes with the same
//! settings and row-group boundaries: only who does the work changes.
//!
//! The encoded file accumulates in memory a row group at a time; [`ColumnEncoder::take_bytes`]
//! hands what is complete to the caller (the upload), so at most a row group is held.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;

/// One Parquet file's encoder: the file's header, footer and finished row groups, and a writer
/// per column for the row group in progress.
pub struct ColumnEncoder {
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The row group in progress: one writer per leaf column, in schema order.
    columns: Option<Vec<ArrowColumnWriter>>,
    buffered_rows: usize,
    max_row_group_rows: usize,
    row_groups: usize,
}

impl ColumnEncoder {
    pub fn new(schema: SchemaRef, properties: WriterProperties) -> Result<Self> {
        let max_row_group_rows = properties.max_row_group_row_count().unwrap_or(usize::MAX);
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?;
        let (file, factory) = writer.into_serialized_writer()?;
        Ok(ColumnEncoder {
            file,
            factory,
            schema,
            columns: None,
            buffered_rows: 0,
            max_row_group_rows,
            row_groups: 0,
        })
    }

    /// Encodes `batch`, starting a new row group whenever one reaches the row limit.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != self.schema.fields().len() {
            return Err(ParquetError::General(format!(
                "a batch of {} columns for a file of {}",
                batch.num_columns(),
                self.schema.fields().len()
            )));
        }
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.buffered_rows >= self.max_row_group_rows {
                self.end_row_group()?;
            }
            let rows =
                (self.max_row_group_rows - self.buffered_rows).min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, rows))?;
            offset += rows;
        }
        Ok(())
    }

    /// Each column of `batch` (all of it goes into the row group in progress) on its own task.
    fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns = match &mut self.columns {
            Some(columns) => columns,
            none => none.insert(self.factory.create_column_writers(self.row_groups)?),
        };
        let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(columns.len());
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, array)?);
        }
        columns
            .par_iter_mut()
            .zip(leaves.par_iter())
            .try_for_each(|(column, leaf)| column.write(leaf))?;
        self.buffered_rows += batch.num_rows();
        Ok(())
    }

    /// Encoded bytes of the row group in progress, as parquet estimates them.
    pub fn in_progress_bytes(&self) -> usize {
        self.columns.as_ref().map_or(0, |columns| {
            columns.iter().map(|c| c.get_estimated_total_bytes()).sum()
        })
    }

    /// Closes the row group in progress (its last pages are compressed in parallel too) and
    /// appends it to the file. Nothing happens without one.
    pub fn end_row_group(&mut self) -> Result<()> {
        let Some(columns) = self.columns.take() else {
            return Ok(());
        };
        let chunks: Vec<ArrowColumnChunk> = columns
            .into_par_iter()
            .map(ArrowColumnWriter::close)
            .collect::<Result<_>>()?;
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.row_groups += 1;
        self.buffered_rows = 0;
        Ok(())
    }

    /// The file's bytes encoded since the last call: the header and whole row groups.
    pub fn take_bytes(&mut self) -> Result<Vec<u8>> {
        self.file.flush()?;
        Ok(std::mem::take(self.file.inner_mut()))
    }

    /// Ends the last row group and writes the footer; returns the bytes not taken yet.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.end_row_group()?;
        self.file.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::parquet_io::writer_properties;

    fn batch(start: i64, rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::Int64, false),
            Field::new("logp_margin", DataType::Float64, false),
            Field::new("prompt", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (start..start + rows as i64).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Float64Array::from_iter_values(
                ids.iter().map(|&i| (i as f64 * 0.37).sin()),
            )),
            Arc::new(StringArray::from_iter(
                ids.iter()
                    .map(|&i| (i % 7 != 0).then(|| format!("prompt number {i}"))),
            )),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// The same bytes as parquet's own writer with the same row groups, over several row
    /// groups, a batch split across two of them, and nulls.
    #[test]
    fn writes_what_arrow_writer_writes() {
        let properties = || {
            let mut builder = writer_properties(&[("k".into(), "v".into())]).into_builder();
            builder = builder.set_max_row_group_row_count(Some(1000));
            builder.build()
        };
        let batches = [batch(0, 700), batch(700, 700), batch(1400, 2500)];
        let schema = batches[0].schema();

        let mut reference =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties())).unwrap();
        let mut encoder = ColumnEncoder::new(schema, properties()).unwrap();
        let mut ours = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            reference.write(batch).unwrap();
            encoder.write(batch).unwrap();
            let taken = encoder.take_bytes().unwrap();
            // Row groups completed by a batch leave at once: the file is not held whole.
            if i == 2 {
                assert!(taken.len() > 1000, "{} bytes taken", taken.len());
            }
            ours.extend(taken);
        }
        ours.extend(encoder.finish().unwrap());
        let reference = reference.into_inner().unwrap();
        assert_eq!(ours, reference);

        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(ours)).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 4);
        let read: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
        let written = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        assert_eq!(read, written);
    }

    #[test]
    fn an_empty_file_has_no_row_group() {
        let schema = batch(0, 1).schema();
        let encoder = ColumnEncoder::new(schema, writer_properties(&[])).unwrap();
        let bytes = encoder.finish().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 0);
    }

    #[test]
    fn a_batch_of_other_columns_is_refused() {
        let schema = batch(0, 1).schema();
        let mut encoder = ColumnEncoder::new(schema, writer_properties(&[])).unwrap();
        let other =
            RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        assert!(encoder.write(&other).is_err());
    }
}
