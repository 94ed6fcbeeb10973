//! The scratch files of `selected/`'s external sort: sorted runs of rows, written once and read
//! back once in the same job, through the object store, in one of two formats ([`RunFormat`]):
//!
//! - rows with text: Arrow IPC streams. Writing is a copy of the buffers and reading rebuilds
//!   the arrays without decoding definition and repetition levels (costly for conversations,
//!   which are lists of structs);
//! - narrow rows (scores and ids only): uncompressed Parquet, whose dictionary and delta
//!   encodings make the files several times smaller than Arrow's buffers, which costs less to
//!   write and read back than it saves.
//!
//! Each batch (row group) of a run is small, so that the merge, which holds one batch of every
//! run at once, stays within its memory.

use apscore_core::parquet_io::{self, ParquetIoError, ParquetSink};
use apscore_core::storage::{ChunkedRead, Location, StorageError};
use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use crate::error::{OutputError, arrow_err};

/// Bytes handed to the upload at once.
const UPLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Rows wider than this (uncompressed bytes, on average) go into IPC runs.
const IPC_ROWS_OVER_BYTES: f64 = 512.0;

/// How a job's runs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFormat {
    /// Arrow IPC streams (`.arrows`), for rows with text.
    Ipc,
    /// Uncompressed Parquet with small row groups, for narrow rows.
    Parquet,
}

impl RunFormat {
    /// The format for rows of about `bytes_per_row` uncompressed bytes.
    pub fn for_rows(bytes_per_row: f64) -> Self {
        if bytes_per_row > IPC_ROWS_OVER_BYTES {
            RunFormat::Ipc
        } else {
            RunFormat::Parquet
        }
    }

    /// The file name extension of a run.
    pub fn extension(self) -> &'static str {
        match self {
            RunFormat::Ipc => "arrows",
            RunFormat::Parquet => "parquet",
        }
    }
}

/// One run being written.
pub enum RunWriter {
    Ipc(IpcRunWriter),
    Parquet(ParquetSink),
}

impl RunWriter {
    pub fn create(
        format: RunFormat,
        output: &Location,
        path: Path,
        schema: &SchemaRef,
    ) -> Result<Self, OutputError> {
        Ok(match format {
            RunFormat::Ipc => RunWriter::Ipc(IpcRunWriter::create(output, path, schema)?),
            RunFormat::Parquet => {
                let display = output.display_of(&path);
                let sink = ParquetSink::create_with(
                    output.store(),
                    path,
                    display,
                    schema.clone(),
                    parquet_io::scratch_properties(),
                )?;
                // Small row groups: the merge reads from every run at once.
                RunWriter::Parquet(sink.with_row_group_bytes(1 << 20))
            }
        })
    }

    /// Appends a batch (a row group of its own in a Parquet run only if it is big enough).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        match self {
            RunWriter::Ipc(writer) => writer.write(batch).await,
            RunWriter::Parquet(sink) => Ok(sink.write(batch).await?),
        }
    }

    pub async fn finish(self) -> Result<(), OutputError> {
        match self {
            RunWriter::Ipc(writer) => writer.finish().await,
            RunWriter::Parquet(sink) => sink.finish().await.map(|_| ()).map_err(Into::into),
        }
    }
}

/// One run being read, batch by batch.
pub enum RunReader {
    Ipc(IpcRunReader),
    Parquet(BoxStream<'static, Result<RecordBatch, ParquetIoError>>),
}

impl RunReader {
    /// Opens the run at `relative` (under `output`) written in `format`, to be held in about
    /// `memory_bytes`: an IPC run is read that many bytes at a time (the batches decoded from
    /// them share their memory), a Parquet run `batch_rows` rows at a time.
    pub async fn open(
        format: RunFormat,
        output: &Location,
        relative: &str,
        memory_bytes: usize,
        batch_rows: usize,
    ) -> Result<Self, OutputError> {
        Ok(match format {
            RunFormat::Ipc => RunReader::Ipc(
                IpcRunReader::open(output, output.path_of(relative), memory_bytes).await?,
            ),
            RunFormat::Parquet => {
                let file = output.input_file(relative).await?;
                let footer = parquet_io::read_footer(&file).await?;
                let groups = footer.row_group_rows().len();
                let stream =
                    parquet_io::read_rows_in_batches(&file, &footer, 0..groups, None, batch_rows)
                        .await?;
                RunReader::Parquet(Box::pin(stream))
            }
        })
    }

    /// The run's next batch, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, OutputError> {
        match self {
            RunReader::Ipc(reader) => reader.next().await,
            RunReader::Parquet(stream) => Ok(stream.try_next().await?),
        }
    }
}

/// One IPC run being written.
pub struct IpcRunWriter {
    display: String,
    path: Path,
    stream: StreamWriter<Vec<u8>>,
    upload: BufWriter,
}

impl IpcRunWriter {
    pub fn create(output: &Location, path: Path, schema: &SchemaRef) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let stream = StreamWriter::try_new(Vec::new(), schema).map_err(arrow_err(&display))?;
        let upload = BufWriter::with_capacity(output.store().clone(), path.clone(), UPLOAD_BYTES);
        Ok(IpcRunWriter {
            display,
            path,
            stream,
            upload,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        self.stream.write(batch).map_err(arrow_err(&self.display))?;
        if self.stream.get_ref().len() >= UPLOAD_BYTES {
            let bytes = std::mem::take(self.stream.get_mut());
            self.put(bytes).await?;
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(), OutputError> {
        self.stream.finish().map_err(arrow_err(&self.display))?;
        let bytes = std::mem::take(self.stream.get_mut());
        self.put(bytes).await?;
        self.upload.shutdown().await.map_err(|e| {
            let source = object_store::Error::Generic {
                store: "output",
                source: Box::new(e),
            };
            self.store_error("write", source)
        })
    }

    async fn put(&mut self, bytes: Vec<u8>) -> Result<(), OutputError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.upload
            .put(Bytes::from(bytes))
            .await
            .map_err(|e| self.store_error("write", e))
    }

    fn store_error(&self, action: &'static str, source: object_store::Error) -> OutputError {
        OutputError::Storage(StorageError::store(action, self.path.to_string(), source))
    }
}

/// One IPC run being read, batch by batch, as it was written.
pub struct IpcRunReader {
    display: String,
    chunks: ChunkedRead,
    buffer: Buffer,
    decoder: StreamDecoder,
}

/// Bytes read at once from an IPC run, at least and at most.
const IPC_READ_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=8 * 1024 * 1024;

impl IpcRunReader {
    /// Opens the run at `path`, to be read about `memory_bytes` at a time (the batches decoded
    /// from what was read are views of it).
    pub async fn open(
        output: &Location,
        path: Path,
        memory_bytes: usize,
    ) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let read_bytes =
            (memory_bytes as u64).clamp(*IPC_READ_BYTES.start(), *IPC_READ_BYTES.end());
        Ok(IpcRunReader {
            display,
            chunks: ChunkedRead::open(output, path, read_bytes).await?,
            buffer: Buffer::from_vec(Vec::<u8>::new()),
            decoder: StreamDecoder::new(),
        })
    }

    /// The run's next batch, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, OutputError> {
        loop {
            if !self.buffer.is_empty()
                && let Some(batch) = self
                    .decoder
                    .decode(&mut self.buffer)
                    .map_err(arrow_err(&self.display))?
            {
                return Ok(Some(batch));
            }
            if !self.buffer.is_empty() {
                continue;
            }
            match self.chunks.next().await? {
                Some(chunk) => self.buffer = Buffer::from(chunk),
                None => {
                    self.decoder.finish().map_err(arrow_err(&self.display))?;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringBuilder};

    use super::*;

    fn batch(start: i64, rows: usize) -> RecordBatch {
        let mut texts = ListBuilder::new(StringBuilder::new());
        for i in start..start + rows as i64 {
            for turn in 0..(i % 3) {
                texts
                    .values()
                    .append_value(format!("turn {turn} of row {i} ✓"));
            }
            texts.append(i % 5 != 0);
        }
        RecordBatch::try_from_iter([
            (
                "row_id",
                Arc::new(Int64Array::from_iter_values(start..start + rows as i64)) as ArrayRef,
            ),
            ("messages", Arc::new(texts.finish()) as ArrayRef),
        ])
        .unwrap()
    }

    /// Batches come back as written in both formats, across uploads of several parts and
    /// reads of several chunks.
    #[tokio::test]
    async fn a_run_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let output = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let batches: Vec<RecordBatch> = (0..40).map(|i| batch(i * 5000, 5000)).collect();
        for format in [RunFormat::Ipc, RunFormat::Parquet] {
            let relative = format!("_work/runs/run-00000.{}", format.extension());
            let path = output.path_of(&relative);
            let mut writer =
                RunWriter::create(format, &output, path, &batches[0].schema()).unwrap();
            for b in &batches {
                writer.write(b).await.unwrap();
            }
            writer.finish().await.unwrap();

            let mut reader = RunReader::open(format, &output, &relative, 100_000, 5000)
                .await
                .unwrap();
            let mut read = Vec::new();
            while let Some(b) = reader.next().await.unwrap() {
                read.push(b);
            }
            let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
            let written = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            assert_eq!(read, written, "{format:?}");
        }
    }

    #[test]
    fn text_rows_go_to_ipc_runs() {
        assert_eq!(RunFormat::for_rows(2400.0), RunFormat::Ipc);
        assert_eq!(RunFormat::for_rows(90.0), RunFormat::Parquet);
    }
}
