//! Reading and writing Parquet through [`object_store`], the same way for local files and buckets.
//!
//! Reading: [`read_footer`] fetches a file's metadata (one request, since the size is known from
//! listing) and [`read_rows`] streams chosen row groups and columns. Writing: [`ParquetSink`]
//! encodes record batches into a multipart upload (or a staged local file) that becomes visible
//! only when [`ParquetSink::finish`] completes it, so a crash never leaves a file that looks whole.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelectionPolicy,
};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::columns::{
    DISTINCT_FLOAT_COLUMNS, DISTINCT_INTEGER_COLUMNS, EXPLICIT_MARGIN_COLUMNS, SORTED_FLOAT_COLUMNS,
};
use crate::storage::InputFile;
use crate::upload::Upload;

/// Rows per record batch when reading and writing.
pub const BATCH_ROWS: usize = 8192;

/// Rows per row group in the files apscore writes, at most.
pub const OUTPUT_ROW_GROUP_ROWS: usize = 131_072;

/// Encoded bytes per row group, at most (roughly): a row group is held in memory until it is
/// complete, and rows with long conversations are large.
pub const OUTPUT_ROW_GROUP_BYTES: usize = 32 * 1024 * 1024;

/// A Parquet file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ParquetIoError {
    #[error("cannot read Parquet file `{file}`: {source}")]
    Read {
        file: String,
        #[source]
        source: ParquetError,
    },
    #[error("cannot write Parquet file `{file}`: {source}")]
    Write {
        file: String,
        #[source]
        source: ParquetError,
    },
}

/// Everything the footer of one Parquet file tells: its Arrow schema and row groups.
#[derive(Debug, Clone)]
pub struct Footer {
    pub metadata: ArrowReaderMetadata,
}

impl Footer {
    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    pub fn parquet(&self) -> &Arc<ParquetMetaData> {
        self.metadata.metadata()
    }

    /// Rows in each row group, in file order.
    pub fn row_group_rows(&self) -> Vec<u64> {
        self.parquet()
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows().max(0) as u64)
            .collect()
    }

    /// The leaf columns (indices among the file's leaves) named `leaf` under the top-level
    /// column `root`: e.g. the `content` of a message list's structs.
    pub fn leaves_named(&self, root: &str, leaf: &str) -> Vec<usize> {
        let leaves = self.parquet().file_metadata().schema_descr();
        (0..leaves.num_columns())
            .filter(|&i| {
                let column = leaves.column(i);
                let parts = column.path().parts();
                parts.len() > 1 && parts[0] == root && parts.last().is_some_and(|p| p == leaf)
            })
            .collect()
    }

    /// Whether the file's statistics prove that the leaf columns `leaves` hold no null in
    /// `row_groups` (a null or empty list or struct above a value counts as a null there).
    /// `false` when a row group has no such statistics.
    pub fn has_no_nulls(&self, leaves: &[usize], row_groups: Range<usize>) -> bool {
        let groups = self.parquet().row_groups();
        row_groups.into_iter().all(|g| {
            leaves.iter().all(|&leaf| {
                groups[g]
                    .column(leaf)
                    .statistics()
                    .and_then(|s| s.null_count_opt())
                    == Some(0)
            })
        })
    }

    /// Uncompressed bytes per row over the whole file; a rough memory estimate.
    pub fn bytes_per_row(&self) -> f64 {
        let groups = self.parquet().row_groups();
        let rows: i64 = groups.iter().map(|rg| rg.num_rows()).sum();
        let bytes: i64 = groups.iter().map(|rg| rg.total_byte_size()).sum();
        if rows > 0 {
            bytes as f64 / rows as f64
        } else {
            0.0
        }
    }
}

/// Reads the footer of `file`: schema and row-group layout. A truncated or non-Parquet file is
/// an error naming it.
pub async fn read_footer(file: &InputFile) -> Result<Footer, ParquetIoError> {
    let mut reader = ObjectReader::new(file);
    let read_err = |source| ParquetIoError::Read {
        file: file.display.clone(),
        source,
    };
    let parquet = reader.get_metadata(None).await.map_err(read_err)?;
    let metadata =
        ArrowReaderMetadata::try_new(parquet, ArrowReaderOptions::new()).map_err(read_err)?;
    Ok(Footer { metadata })
}

/// Streams `columns` (top-level names; all when `None`) of `row_groups` of `file`.
pub async fn read_rows(
    file: &InputFile,
    footer: &Footer,
    row_groups: Range<usize>,
    columns: Option<&[&str]>,
) -> Result<
    impl futures::Stream<Item = Result<RecordBatch, ParquetIoError>> + Send + use<>,
    ParquetIoError,
> {
    read_rows_without(file, footer, row_groups, columns, &[]).await
}

/// [`read_rows`] without the leaf columns `left_out` (indices among the file's leaves, e.g.
/// from [`Footer::leaves_named`]): their structs come without those fields.
pub async fn read_rows_without(
    file: &InputFile,
    footer: &Footer,
    row_groups: Range<usize>,
    columns: Option<&[&str]>,
    left_out: &[usize],
) -> Result<
    impl futures::Stream<Item = Result<RecordBatch, ParquetIoError>> + Send + use<>,
    ParquetIoError,
> {
    let display = file.display.clone();
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
        ObjectReader::new(file),
        footer.metadata.clone(),
    )
    .with_batch_size(BATCH_ROWS)
    .with_row_groups(row_groups.collect());
    build_stream(builder, footer, columns, left_out, display)
}

/// The stream `builder` describes, `columns` only (when given) without the leaves `left_out`,
/// its errors naming `display`.
fn build_stream(
    builder: ParquetRecordBatchStreamBuilder<ObjectReader>,
    footer: &Footer,
    columns: Option<&[&str]>,
    left_out: &[usize],
    display: String,
) -> Result<
    impl futures::Stream<Item = Result<RecordBatch, ParquetIoError>> + Send + use<>,
    ParquetIoError,
> {
    let schema = footer.schema();
    let roots: Vec<usize> = match columns {
        Some(names) => names
            .iter()
            .filter_map(|n| schema.index_of(n).ok())
            .collect(),
        None => (0..schema.fields().len()).collect(),
    };
    let builder = match (columns, left_out) {
        (None, []) => builder,
        (Some(_), []) => {
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder.with_projection(mask)
        }
        (_, _) => {
            let leaves = builder.parquet_schema();
            let kept = (0..leaves.num_columns()).filter(|&leaf| {
                roots.contains(&leaves.get_column_root_idx(leaf)) && !left_out.contains(&leaf)
            });
            let mask = ProjectionMask::leaves(leaves, kept);
            builder.with_projection(mask)
        }
    };
    let stream = builder.build().map_err(|source| ParquetIoError::Read {
        file: display.clone(),
        source,
    })?;
    Ok(stream.map_err(move |source| ParquetIoError::Read {
        file: display.clone(),
        source,
    }))
}

/// Streams every row group of `file` (`columns` only, when given).
pub async fn read_whole(
    file: &InputFile,
    columns: Option<&[&str]>,
) -> Result<
    impl futures::Stream<Item = Result<RecordBatch, ParquetIoError>> + Send + use<>,
    ParquetIoError,
> {
    let footer = read_footer(file).await?;
    let groups = footer.row_group_rows().len();
    read_rows(file, &footer, 0..groups, columns).await
}

/// Streams the rows of `file` at `rows` (indices in the file, ascending), `columns` only (when
/// given), in that order.
///
/// Rows carrying text (more than [`SKIP_ROWS_OVER_BYTES`] on average) that are not wanted are
/// skipped, not decoded: parquet's own selection, told to skip however short the runs between
/// wanted rows are (its default decodes every row of a scattered selection and filters
/// afterwards, conversations included). Narrow rows are all decoded and the wanted ones taken:
/// cheaper than skipping a few bytes at a time.
pub async fn read_selected(
    file: &InputFile,
    columns: Option<&[&str]>,
    rows: &[u64],
) -> Result<BoxStream<'static, Result<RecordBatch, ParquetIoError>>, ParquetIoError> {
    debug_assert!(rows.is_sorted());
    let footer = read_footer(file).await?;
    if footer.bytes_per_row() <= SKIP_ROWS_OVER_BYTES {
        let groups = footer.row_group_rows().len();
        let stream = read_rows(file, &footer, 0..groups, columns).await?;
        let display = file.display.clone();
        let rows = rows.to_vec();
        let (mut next, mut batch_start) = (0usize, 0u64);
        return Ok(stream
            .map(move |batch| {
                let batch = batch?;
                let batch_end = batch_start + batch.num_rows() as u64;
                let mut take = Vec::new();
                while next < rows.len() && rows[next] < batch_end {
                    take.push((rows[next] - batch_start) as u32);
                    next += 1;
                }
                batch_start = batch_end;
                take_record_batch(&batch, &UInt32Array::from(take)).map_err(|e| {
                    ParquetIoError::Read {
                        file: display.clone(),
                        source: ParquetError::ArrowError(e.to_string()),
                    }
                })
            })
            .boxed());
    }
    let total: usize = footer.row_group_rows().iter().sum::<u64>() as usize;
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for &row in rows {
        let row = row as usize;
        match ranges.last_mut() {
            Some(last) if last.end == row => last.end += 1,
            _ => ranges.push(row..row + 1),
        }
    }
    let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
    let display = file.display.clone();
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(
        ObjectReader::new(file),
        footer.metadata.clone(),
    )
    .with_batch_size(BATCH_ROWS)
    .with_row_selection(selection)
    .with_row_selection_policy(RowSelectionPolicy::Selectors);
    Ok(build_stream(builder, &footer, columns, &[], display)?.boxed())
}

/// Rows of a file larger than this (uncompressed, on average) are skipped rather than decoded
/// when a selection leaves them out.
const SKIP_ROWS_OVER_BYTES: f64 = 512.0;

/// `batch`'s columns reordered to `names` (a projection returns them in file order).
pub fn in_column_order(
    batch: &RecordBatch,
    names: &[&str],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    let indices: Vec<usize> = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<Result<_, _>>()?;
    batch.project(&indices)
}

/// An [`AsyncFileReader`] over one object whose size is already known.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl ObjectReader {
    fn new(file: &InputFile) -> Self {
        ObjectReader {
            store: Arc::clone(&file.store),
            path: file.path.clone(),
            size: file.size,
        }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(external)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Writer settings for every file apscore writes: zstd, bounded row groups, key facts, and
/// encodings suited to the columns apscore computes (see [`DISTINCT_FLOAT_COLUMNS`] and
/// [`EXPLICIT_MARGIN_COLUMNS`]), and no min/max statistics for those of them that are not
/// sorted.
pub fn writer_properties(key_values: &[(String, String)]) -> WriterProperties {
    let kv = key_values
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("zstd level 1"),
        ))
        .set_max_row_group_row_count(Some(OUTPUT_ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(kv));
    for name in DISTINCT_FLOAT_COLUMNS {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(name), false)
            .set_column_encoding(ColumnPath::from(name), Encoding::BYTE_STREAM_SPLIT)
            .set_column_compression(ColumnPath::from(name), distinct_float_compression());
        // Min/max of values spread over every row group never prune one, and cost 4 % of a
        // job's CPU; where `ranking.parquet` is sorted by a column, they do.
        if !SORTED_FLOAT_COLUMNS.contains(&name) {
            builder = builder
                .set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
        }
    }
    for name in EXPLICIT_MARGIN_COLUMNS {
        // 4,096 distinct values at most: many more than ratings give, and a reward model's
        // margins leave the dictionary after the first few thousand rows of a row group.
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(name), true)
            .set_column_dictionary_page_size_limit(ColumnPath::from(name), 4096 * 8)
            .set_column_encoding(ColumnPath::from(name), Encoding::BYTE_STREAM_SPLIT)
            .set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
    }
    for name in DISTINCT_INTEGER_COLUMNS {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(name), false)
            .set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// zstd for floats that are nearly all distinct: its fast mode (a negative level). Their
/// mantissas are noise: level 1 saves 1–2 % more of them than level -1 but takes about twice
/// the time to write them and to read them back.
fn distinct_float_compression() -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(-1).expect("zstd level -1"))
}

/// One Parquet file being written to an object store. Nothing is visible at its path until
/// [`ParquetSink::finish`] returns; dropping the sink abandons the upload.
///
/// Each row group is encoded into one buffer, which goes to the [`Upload`] as it is: the bytes
/// are copied once, from the encoded pages into that buffer, before the store writes them.
/// The buffer is reserved at the row group's size just before the row group is closed, so it
/// is not grown by copying, nor held while the row group is being encoded.
pub struct ParquetSink {
    display: String,
    writer: ArrowWriter<Vec<u8>>,
    upload: Upload,
    rows: u64,
    /// Bytes of the last row group handed to the upload.
    last_row_group_bytes: usize,
}

impl ParquetSink {
    pub fn create(
        store: &Arc<dyn ObjectStore>,
        path: Path,
        display: String,
        schema: SchemaRef,
        key_values: &[(String, String)],
    ) -> Result<Self, ParquetIoError> {
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(writer_properties(key_values)))
            .map_err(|source| ParquetIoError::Write {
                file: display.clone(),
                source,
            })?;
        Ok(ParquetSink {
            display,
            writer,
            upload: Upload::new(Arc::clone(store), path),
            rows: 0,
            last_row_group_bytes: 0,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetIoError> {
        self.rows += batch.num_rows() as u64;
        let row_groups = self.writer.flushed_row_groups().len();
        if self.writer.in_progress_rows() + batch.num_rows() >= OUTPUT_ROW_GROUP_ROWS {
            // The writer closes the row group within this batch.
            self.reserve_row_group();
        }
        self.writer
            .write(batch)
            .map_err(|source| self.write_error(source))?;
        if self.writer.in_progress_size() >= OUTPUT_ROW_GROUP_BYTES {
            self.reserve_row_group();
            self.writer
                .flush()
                .map_err(|source| self.write_error(source))?;
        }
        if self.writer.flushed_row_groups().len() != row_groups {
            self.upload_encoded().await?;
        }
        Ok(())
    }

    /// Closes the current row group, so the rows written so far form whole row groups.
    pub async fn end_row_group(&mut self) -> Result<(), ParquetIoError> {
        self.reserve_row_group();
        self.writer
            .flush()
            .map_err(|source| self.write_error(source))?;
        self.upload_encoded().await
    }

    /// Writes the footer and publishes the file; returns the rows written.
    pub async fn finish(mut self) -> Result<u64, ParquetIoError> {
        self.reserve_row_group();
        self.writer
            .finish()
            .map_err(|source| self.write_error(source))?;
        self.upload_encoded().await?;
        let ParquetSink {
            display,
            upload,
            rows,
            ..
        } = self;
        upload
            .finish()
            .await
            .map_err(|source| ParquetIoError::Write {
                file: display,
                source: ParquetError::External(Box::new(source)),
            })?;
        Ok(rows)
    }

    /// Room in the buffer for the row group about to be closed: its estimated size, or the
    /// last one's if larger.
    fn reserve_row_group(&mut self) {
        let bytes = self
            .writer
            .in_progress_size()
            .max(self.last_row_group_bytes);
        self.writer.inner_mut().reserve(bytes);
    }

    /// Hands the bytes encoded so far (whole row groups, or the footer) to the upload.
    async fn upload_encoded(&mut self) -> Result<(), ParquetIoError> {
        let encoded = std::mem::take(self.writer.inner_mut());
        self.last_row_group_bytes = encoded.len();
        self.upload
            .put(Bytes::from(encoded))
            .await
            .map_err(|source| self.write_error(ParquetError::External(Box::new(source))))
    }

    fn write_error(&self, source: ParquetError) -> ParquetIoError {
        ParquetIoError::Write {
            file: self.display.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;
    use crate::columns;

    /// `batch` written as apscore writes its files, opened again.
    fn written(batch: &RecordBatch) -> SerializedFileReader<Bytes> {
        let mut bytes = Vec::new();
        let mut writer =
            ArrowWriter::try_new(&mut bytes, batch.schema(), Some(writer_properties(&[]))).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
        SerializedFileReader::new(Bytes::from(bytes)).unwrap()
    }

    /// Readers can skip row groups by the sorted columns only: the others carry no min/max.
    #[test]
    fn only_sorted_float_columns_carry_min_max() {
        let values = || Arc::new(Float64Array::from(vec![0.5, -1.0, 2.0])) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            (columns::LOGP_MARGIN_NORM_ABS, values()),
            (columns::SCORE, values()),
            ("score_chosen", values()),
        ])
        .unwrap();
        let file = written(&batch);
        let group = file.metadata().row_group(0);
        let has_min_max = |i: usize| {
            group
                .column(i)
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some())
        };
        assert!(!has_min_max(0), "an unsorted computed column");
        assert!(has_min_max(1), "the score, which the ranking is sorted by");
        assert!(has_min_max(2), "an input column");
    }

    /// Every column is zstd, as the outputs promise; the distinct floats in its fast mode.
    #[test]
    fn every_column_is_zstd_and_distinct_floats_take_its_fast_mode() {
        let noise: Vec<f64> = (0..10_000).map(|i| (i as f64 * 0.618_034).sin()).collect();
        let batch = RecordBatch::try_from_iter([
            (
                columns::LOGP_MARGIN,
                Arc::new(Float64Array::from(noise.clone())) as ArrayRef,
            ),
            (
                "score_chosen",
                Arc::new(Float64Array::from(noise)) as ArrayRef,
            ),
        ])
        .unwrap();
        let file = written(&batch);
        let group = file.metadata().row_group(0);
        for column in group.columns() {
            assert!(
                matches!(column.compression(), Compression::ZSTD(_)),
                "{}: {:?}",
                column.column_path(),
                column.compression()
            );
        }
        let properties = writer_properties(&[]);
        let level = |name: &str| match properties.compression(&ColumnPath::from(name)) {
            Compression::ZSTD(level) => level.compression_level(),
            other => panic!("{name}: {other:?}"),
        };
        assert!(level(columns::LOGP_MARGIN) < 0);
        assert!(level(columns::ALIGNMENT_POTENTIAL) < 0);
        assert_eq!(level("score_chosen"), 1, "an input column");
        assert_eq!(level(columns::RM_MARGIN), 1, "a margin that may repeat");
    }

    /// Margins from ratings stay in a dictionary; a reward model's leave it for
    /// byte-stream-split, without growing a dictionary as large as the row group.
    #[test]
    fn explicit_margins_take_a_dictionary_only_while_they_repeat() {
        let rows = OUTPUT_ROW_GROUP_ROWS;
        let ratings: Vec<f64> = (0..rows).map(|i| (i % 19) as f64 * 0.5 - 4.5).collect();
        let reward_model: Vec<f64> = (0..rows).map(|i| (i as f64 * 0.618_034).sin()).collect();
        let batch = RecordBatch::try_from_iter([
            (
                columns::RM_MARGIN,
                Arc::new(Float64Array::from(ratings)) as ArrayRef,
            ),
            (
                columns::Z_RM_MARGIN,
                Arc::new(Float64Array::from(reward_model)) as ArrayRef,
            ),
        ])
        .unwrap();
        let file = written(&batch);
        let group = file.metadata().row_group(0);
        let (from_ratings, from_model) = (group.column(0), group.column(1));
        assert!(
            from_ratings
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY)
        );
        assert!(
            !from_ratings
                .encodings()
                .any(|e| e == Encoding::BYTE_STREAM_SPLIT)
        );
        assert!(
            from_ratings.compressed_size() < (rows * 8 / 20) as i64,
            "{} bytes for {rows} rated margins",
            from_ratings.compressed_size()
        );
        assert!(
            from_model
                .encodings()
                .any(|e| e == Encoding::BYTE_STREAM_SPLIT)
        );
        let dictionary = from_model
            .dictionary_page_offset()
            .map(|start| from_model.data_page_offset() - start);
        assert!(
            dictionary.unwrap_or(0) <= 64 * 1024,
            "a dictionary of {dictionary:?} bytes"
        );
        assert!(
            from_ratings
                .statistics()
                .is_none_or(|s| s.min_bytes_opt().is_none())
        );
    }
}
