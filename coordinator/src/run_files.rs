//! The scratch files of `selected/`'s external sort: sorted runs of rows, written once and read
//! back once in the same job, as Arrow IPC streams through the object store.
//!
//! A run is the job's own data for a few seconds, so it is kept in Arrow's in-memory layout
//! rather than encoded as Parquet: writing is a copy of the buffers and reading rebuilds the
//! arrays without decoding definition and repetition levels (costly for conversations, which
//! are lists of structs). Each batch of a run is small, so that the merge, which holds one
//! batch of every run at once, stays within its memory.

use apscore_core::storage::{Location, StorageError};
use arrow::array::RecordBatch;
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use crate::error::{OutputError, arrow_err};

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
    chunks: BoxStream<'static, object_store::Result<Bytes>>,
    buffer: Buffer,
    decoder: StreamDecoder,
}

impl RunReader {
    pub async fn open(output: &Location, path: Path) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let chunks = output
            .store()
            .get(&path)
            .await
            .map_err(|e| OutputError::Storage(StorageError::store("read", path.to_string(), e)))?
            .into_stream();
        Ok(RunReader {
            display,
            chunks,
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
            match self.chunks.try_next().await {
                Ok(Some(chunk)) => self.buffer = Buffer::from(chunk),
                Ok(None) => {
                    self.decoder.finish().map_err(arrow_err(&self.display))?;
                    return Ok(None);
                }
                Err(e) => {
                    return Err(OutputError::Storage(StorageError::store(
                        "read",
                        self.display.clone(),
                        e,
                    )));
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
    /// chunks.
    #[tokio::test]
    async fn a_run_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let output = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let path = output.path_of("_work/runs/run-00000.arrows");
        let batches: Vec<RecordBatch> = (0..40).map(|i| batch(i * 5000, 5000)).collect();
        let mut writer = RunWriter::create(&output, path.clone(), &batches[0].schema()).unwrap();
        for b in &batches {
            writer.write(b).await.unwrap();
        }
        writer.finish().await.unwrap();

        let mut reader = RunReader::open(&output, path).await.unwrap();
        let mut read = Vec::new();
        while let Some(b) = reader.next().await.unwrap() {
            read.push(b);
        }
        assert_eq!(read, batches);
    }
}
