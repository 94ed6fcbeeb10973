//! The scratch files of `selected/`'s external sort: sorted runs of rows, written once and read
//! back once in the same job, through the object store, as Arrow IPC streams (`.arrows`).
//! Writing is a copy of the buffers, and reading rebuilds the arrays from views of the bytes
//! read, without decoding levels, dictionaries or deltas (uncompressed Parquet runs cost as
//! much for narrow rows and more for conversations, whose lists of structs carry definition and
//! repetition levels).
//!
//! Each batch of a run is small, so that the merge, which holds one batch of every run at once,
//! stays within its memory.

use apscore_core::storage::{ChunkedRead, Location, StorageError};
use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use crate::error::{OutputError, arrow_err};

/// The file name extension of a run.
pub const RUN_EXTENSION: &str = "arrows";

/// Bytes handed to the upload at once.
const UPLOAD_BYTES: usize = 6 * 1024 * 1024;

/// One run being written.
pub struct RunWriter {
    display: String,
    path: Path,
    stream: StreamWriter<Vec<u8>>,
    upload: BufWriter,
}

impl RunWriter {
    pub fn create(output: &Location, path: Path, schema: &SchemaRef) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let stream = StreamWriter::try_new(Vec::new(), schema).map_err(arrow_err(&display))?;
        let upload = BufWriter::with_capacity(output.store().clone(), path.clone(), UPLOAD_BYTES);
        Ok(RunWriter {
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

/// One run being read, batch by batch, as it was written.
pub struct RunReader {
    display: String,
    chunks: ChunkedRead,
    buffer: Buffer,
    decoder: StreamDecoder,
}

/// Bytes read at once from a run, at least and at most.
const READ_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=8 * 1024 * 1024;

impl RunReader {
    /// Opens the run at `path`, to be read about `memory_bytes` at a time (the batches decoded
    /// from what was read are views of it).
    pub async fn open(
        output: &Location,
        path: Path,
        memory_bytes: usize,
    ) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let read_bytes = (memory_bytes as u64).clamp(*READ_BYTES.start(), *READ_BYTES.end());
        Ok(RunReader {
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

    /// Batches come back as written, across uploads of several parts and reads of several
    /// chunks (which split batches).
    #[tokio::test]
    async fn a_run_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let output = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let batches: Vec<RecordBatch> = (0..40).map(|i| batch(i * 5000, 5000)).collect();
        let relative = format!("_work/runs/run-00000.{RUN_EXTENSION}");
        let mut writer =
            RunWriter::create(&output, output.path_of(&relative), &batches[0].schema()).unwrap();
        for b in &batches {
            writer.write(b).await.unwrap();
        }
        writer.finish().await.unwrap();

        let mut reader = RunReader::open(&output, output.path_of(&relative), 100_000)
            .await
            .unwrap();
        let mut read = Vec::new();
        while let Some(b) = reader.next().await.unwrap() {
            read.push(b);
        }
        assert_eq!(read, batches);
    }
}
