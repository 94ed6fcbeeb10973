//! The scratch files of `selected/`'s external sort: sorted runs of rows, written once and read
//! back once in the same job, through the object store, as Arrow IPC streams (`.arrows`).
//! Writing is a copy of the buffers, and reading rebuilds the arrays from views of the bytes
//! read, without decoding levels, dictionaries or deltas (uncompressed Parquet runs cost as
//! much for narrow rows and more for conversations, whose lists of structs carry definition and
//! repetition levels).
//!
//! Each batch of a run is small, so that the merge, which holds one batch of every run at once,
//! stays within its memory.
//!
//! A column equal to an earlier one of the same batch (UltraFeedback's `messages` is its
//! `chosen`, a third of a row's text) is written once: its place holds nulls, and the reader
//! puts the earlier column back.
//!
//! Reading a run back does not check its arrays again (offsets, UTF-8: arrow's check of the
//! strings was 8 % of a job's CPU with text). It needs no check: the writer records the length
//! and CRC-32 of each piece it writes (a [`RunIndex`], kept in memory), and the reader decodes a
//! piece only once its bytes match, so what it decodes is byte for byte what this process's
//! IPC writer made from valid arrays. Bytes that changed in storage are refused by name.

use std::collections::VecDeque;
use std::sync::Arc;

use apscore_core::storage::{ChunkedRead, Location, StorageError};
use arrow::array::{RecordBatch, new_null_array};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::FileDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::ipc::{Block, MessageHeader, root_as_message};
use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;

use crate::error::{OutputError, arrow_err};

/// The file name extension of a run.
pub const RUN_EXTENSION: &str = "arrows";

/// Bytes handed to the upload at once.
const UPLOAD_BYTES: usize = 6 * 1024 * 1024;

/// What a run's writer made, piece by piece (the schema, each batch with its dictionaries, the
/// end of the stream): how its reader knows the bytes it reads back are those.
#[derive(Debug, Clone, Default)]
pub struct RunIndex {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
struct Piece {
    len: usize,
    crc: u32,
    /// Columns of the piece's batch written as nulls, each a copy of an earlier one.
    copies: Vec<ColumnCopy>,
}

/// Column `column` of a batch is column `of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ColumnCopy {
    column: usize,
    of: usize,
}

impl RunIndex {
    fn record(&mut self, bytes: &[u8], copies: Vec<ColumnCopy>) {
        if !bytes.is_empty() {
            self.pieces.push(Piece {
                len: bytes.len(),
                crc: crc32fast::hash(bytes),
                copies,
            });
        }
    }
}

/// One run being written.
pub struct RunWriter {
    display: String,
    path: Path,
    schema: SchemaRef,
    stream: StreamWriter<Vec<u8>>,
    upload: BufWriter,
    index: RunIndex,
}

impl RunWriter {
    pub fn create(output: &Location, path: Path, schema: &SchemaRef) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        let stream = StreamWriter::try_new(Vec::new(), schema).map_err(arrow_err(&display))?;
        let mut index = RunIndex::default();
        index.record(stream.get_ref(), Vec::new());
        let upload = BufWriter::with_capacity(output.store().clone(), path.clone(), UPLOAD_BYTES);
        Ok(RunWriter {
            display,
            path,
            schema: Arc::clone(schema),
            stream,
            upload,
            index,
        })
    }

    /// Appends `batch`, which must have the run's schema: the reader decodes the run against it
    /// without checking the arrays again.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        if !Arc::ptr_eq(&batch.schema(), &self.schema) && *batch.schema() != *self.schema {
            return Err(OutputError::Arrow {
                file: self.display.clone(),
                source: ArrowError::SchemaError(format!(
                    "a batch of schema {:?} written to a run of schema {:?}",
                    batch.schema(),
                    self.schema
                )),
            });
        }
        let copies = repeated_columns(batch);
        let written = if copies.is_empty() {
            batch.clone()
        } else {
            let mut columns = batch.columns().to_vec();
            for copy in &copies {
                columns[copy.column] =
                    new_null_array(columns[copy.of].data_type(), batch.num_rows());
            }
            RecordBatch::try_new(Arc::clone(&self.schema), columns)
                .map_err(arrow_err(&self.display))?
        };
        let before = self.stream.get_ref().len();
        self.stream
            .write(&written)
            .map_err(arrow_err(&self.display))?;
        self.index.record(&self.stream.get_ref()[before..], copies);
        if self.stream.get_ref().len() >= UPLOAD_BYTES {
            let bytes = std::mem::take(self.stream.get_mut());
            self.put(bytes).await?;
        }
        Ok(())
    }

    /// Ends the run; returns what its reader needs to trust it.
    pub async fn finish(mut self) -> Result<RunIndex, OutputError> {
        let before = self.stream.get_ref().len();
        self.stream.finish().map_err(arrow_err(&self.display))?;
        self.index
            .record(&self.stream.get_ref()[before..], Vec::new());
        let bytes = std::mem::take(self.stream.get_mut());
        self.put(bytes).await?;
        self.upload.shutdown().await.map_err(|e| {
            let source = object_store::Error::Generic {
                store: "output",
                source: Box::new(e),
            };
            self.store_error("write", source)
        })?;
        Ok(self.index)
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

/// The columns of `batch` equal to an earlier column, each with the first such column. Only
/// nullable columns qualify (their place is written as nulls), and not dictionaries (each
/// batch's dictionary would have to match as well).
fn repeated_columns(batch: &RecordBatch) -> Vec<ColumnCopy> {
    let schema = batch.schema();
    let candidate = |i: usize| {
        let field = schema.field(i);
        field.is_nullable() && !matches!(field.data_type(), DataType::Dictionary(..))
    };
    let mut copies: Vec<ColumnCopy> = Vec::new();
    for column in 1..batch.num_columns() {
        if !candidate(column) {
            continue;
        }
        let this = batch.column(column);
        let of = (0..column).find(|&of| {
            candidate(of)
                && !copies.iter().any(|c| c.column == of)
                && batch.column(of).data_type() == this.data_type()
                && (Arc::ptr_eq(batch.column(of), this)
                    || batch.column(of).as_ref() == this.as_ref())
        });
        if let Some(of) = of {
            copies.push(ColumnCopy { column, of });
        }
    }
    copies
}

/// One run being read, batch by batch, as it was written.
pub struct RunReader {
    display: String,
    chunks: ChunkedRead,
    /// What was read and not yet taken.
    unread: Bytes,
    /// What the writer recorded, and the number of the next piece to read.
    pieces: Vec<Piece>,
    next_piece: usize,
    /// Set by the run's schema, its first piece.
    decoder: Option<FileDecoder>,
    decoded: VecDeque<RecordBatch>,
}

/// Bytes read at once from a run, at least and at most.
const READ_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=8 * 1024 * 1024;

/// IPC messages start with this marker, then the length of their metadata.
const CONTINUATION: [u8; 4] = [0xff; 4];

impl RunReader {
    /// Opens the run at `path` that its writer described in `index`, to be read about
    /// `memory_bytes` at a time (the batches decoded from what was read are views of it).
    pub async fn open(
        output: &Location,
        path: Path,
        index: RunIndex,
        memory_bytes: usize,
    ) -> Result<Self, OutputError> {
        let display = output.display_of(&path);
        // A multiple of 64 bytes: on a local disk the views of a piece read in one go keep the
        // alignment the writer gave the buffers (the decoder copies any buffer that is not
        // aligned, as a piece read from a bucket's stream may be).
        let read_bytes =
            (memory_bytes as u64).clamp(*READ_BYTES.start(), *READ_BYTES.end()) / 64 * 64;
        Ok(RunReader {
            display,
            chunks: ChunkedRead::open(output, path, read_bytes).await?,
            unread: Bytes::new(),
            pieces: index.pieces,
            next_piece: 0,
            decoder: None,
            decoded: VecDeque::new(),
        })
    }

    /// The run's next batch, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, OutputError> {
        loop {
            if let Some(batch) = self.decoded.pop_front() {
                return Ok(Some(batch));
            }
            let number = self.next_piece;
            let Some(piece) = self.pieces.get_mut(number) else {
                if !self.unread.is_empty() || self.chunks.next().await?.is_some() {
                    return Err(self.changed(number, "bytes after its end"));
                }
                return Ok(None);
            };
            let (len, crc, copies) = (piece.len, piece.crc, std::mem::take(&mut piece.copies));
            self.next_piece += 1;
            let bytes = self.take(number, len).await?;
            if crc32fast::hash(&bytes) != crc {
                return Err(self.changed(number, "its checksum differs"));
            }
            self.decode(number, Buffer::from(bytes), &copies)?;
        }
    }

    /// The next `len` bytes of the run: a view of what was read when it holds them, else a copy
    /// of the reads they span.
    async fn take(&mut self, number: usize, len: usize) -> Result<Bytes, OutputError> {
        if self.unread.len() >= len {
            return Ok(self.unread.split_to(len));
        }
        let mut joined = Vec::with_capacity(len);
        joined.extend_from_slice(&std::mem::take(&mut self.unread));
        while joined.len() < len {
            let Some(mut chunk) = self.chunks.next().await? else {
                return Err(self.changed(number, "the run ends before it"));
            };
            let wanted = (len - joined.len()).min(chunk.len());
            joined.extend_from_slice(&chunk.split_to(wanted));
            self.unread = chunk;
        }
        Ok(Bytes::from(joined))
    }

    /// Decodes the messages of a piece whose bytes are the writer's, putting back the columns
    /// it wrote as `copies`.
    fn decode(
        &mut self,
        number: usize,
        piece: Buffer,
        copies: &[ColumnCopy],
    ) -> Result<(), OutputError> {
        let mut at = 0;
        while at < piece.len() {
            let prefix = piece
                .get(at..at + 8)
                .ok_or_else(|| self.changed(number, "cut short"))?;
            if prefix[..4] != CONTINUATION {
                return Err(self.changed(number, "not an IPC message"));
            }
            let meta_len = i32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes"));
            let meta_len =
                usize::try_from(meta_len).map_err(|_| self.changed(number, "cut short"))?;
            if meta_len == 0 {
                // The end-of-stream marker.
                at += 8;
                continue;
            }
            let meta = piece
                .get(at + 8..)
                .and_then(|rest| rest.get(..meta_len))
                .ok_or_else(|| self.changed(number, "cut short"))?;
            let message =
                root_as_message(meta).map_err(|e| self.changed(number, &e.to_string()))?;
            let body_len = usize::try_from(message.bodyLength()).ok();
            let Some(total) = body_len
                .and_then(|body| (8 + meta_len).checked_add(body))
                .filter(|&total| total <= piece.len() - at)
            else {
                return Err(self.changed(number, "cut short"));
            };
            let body_len = total - 8 - meta_len;
            let meta_prefixed =
                i32::try_from(8 + meta_len).map_err(|_| self.changed(number, "cut short"))?;
            let block = Block::new(0, meta_prefixed, body_len as i64);
            let bytes = piece.slice_with_length(at, total);
            let arrow = arrow_err(&self.display);
            match message.header_type() {
                MessageHeader::Schema if self.decoder.is_none() => {
                    let schema = message
                        .header_as_schema()
                        .ok_or_else(|| self.changed(number, "an empty schema message"))?;
                    let schema = try_fb_to_schema(schema).map_err(arrow)?;
                    let decoder = FileDecoder::new(Arc::new(schema), message.version());
                    // SAFETY: the checksum matched: these are the bytes this process's IPC
                    // writer made from valid arrays of the run's one schema (`RunWriter::write`
                    // refuses any other), so they decode to valid arrays. CRC-32 catches
                    // accidents (a cut or clobbered file), not a forgery: the work folder is the
                    // job's own, under its output lock, and whoever can write there can as well
                    // replace the job's outputs.
                    self.decoder = Some(unsafe { decoder.with_skip_validation(true) });
                }
                MessageHeader::DictionaryBatch if let Some(decoder) = &mut self.decoder => {
                    decoder.read_dictionary(&block, &bytes).map_err(arrow)?;
                }
                MessageHeader::RecordBatch if let Some(decoder) = &self.decoder => {
                    if let Some(batch) =
                        decoder.read_record_batch(&block, &bytes).map_err(&arrow)?
                    {
                        let batch = if copies.is_empty() {
                            batch
                        } else {
                            let mut columns = batch.columns().to_vec();
                            for copy in copies {
                                columns[copy.column] = Arc::clone(&columns[copy.of]);
                            }
                            RecordBatch::try_new(batch.schema(), columns).map_err(arrow)?
                        };
                        self.decoded.push_back(batch);
                    }
                }
                header => {
                    return Err(self.changed(number, &format!("an unexpected {header:?} message")));
                }
            }
            at += total;
        }
        Ok(())
    }

    fn changed(&self, piece: usize, problem: &str) -> OutputError {
        OutputError::RunChanged {
            file: self.display.clone(),
            piece,
            problem: problem.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        ArrayRef, DictionaryArray, Int64Array, ListBuilder, StringArray, StringBuilder,
    };
    use arrow::datatypes::Int32Type;

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

    /// Writes `batches` as a run under `dir`; returns the output, the run's path and index.
    async fn write(dir: &std::path::Path, batches: &[RecordBatch]) -> (Location, Path, RunIndex) {
        let output = Location::parse(dir.to_str().unwrap()).unwrap();
        let path = output.path_of(&format!("_work/runs/run-00000.{RUN_EXTENSION}"));
        let mut writer = RunWriter::create(&output, path.clone(), &batches[0].schema()).unwrap();
        for b in batches {
            writer.write(b).await.unwrap();
        }
        let index = writer.finish().await.unwrap();
        (output, path, index)
    }

    async fn read(
        output: &Location,
        path: &Path,
        index: RunIndex,
    ) -> Result<Vec<RecordBatch>, OutputError> {
        let mut reader = RunReader::open(output, path.clone(), index, 100_000).await?;
        let mut read = Vec::new();
        while let Some(b) = reader.next().await? {
            read.push(b);
        }
        Ok(read)
    }

    /// Batches come back as written, across uploads of several parts and reads of several
    /// chunks (which split batches).
    #[tokio::test]
    async fn a_run_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<RecordBatch> = (0..40).map(|i| batch(i * 5000, 5000)).collect();
        let (output, path, index) = write(dir.path(), &batches).await;
        assert_eq!(read(&output, &path, index).await.unwrap(), batches);
    }

    /// Input columns read as dictionaries keep them in the runs, each batch with its own.
    #[tokio::test]
    async fn dictionaries_that_change_between_batches_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<RecordBatch> = (0..3)
            .map(|b| {
                let words: Vec<String> =
                    (0..100).map(|i| format!("w{}", (i * 7 + b) % 11)).collect();
                let dict: DictionaryArray<Int32Type> = words.iter().map(String::as_str).collect();
                RecordBatch::try_from_iter([("source", Arc::new(dict) as ArrayRef)]).unwrap()
            })
            .collect();
        let (output, path, index) = write(dir.path(), &batches).await;
        assert_eq!(read(&output, &path, index).await.unwrap(), batches);
    }

    /// A batch of another schema is refused: the reader would decode it against the run's.
    #[tokio::test]
    async fn a_batch_of_another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let output = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let path = output.path_of(&format!("_work/runs/run-00000.{RUN_EXTENSION}"));
        let first = batch(0, 10);
        let mut writer = RunWriter::create(&output, path, &first.schema()).unwrap();
        writer.write(&first).await.unwrap();
        let other = RecordBatch::try_from_iter([(
            "row_id",
            Arc::new(Int64Array::from_iter_values(0..10)) as ArrayRef,
        )])
        .unwrap();
        let error = writer.write(&other).await.unwrap_err().to_string();
        assert!(error.contains("written to a run of schema"), "{error}");
    }

    /// A run whose bytes changed after they were written, or that lost its end, is refused by
    /// name instead of being decoded without its arrays checked.
    #[tokio::test]
    async fn a_changed_or_cut_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<RecordBatch> = (0..4).map(|i| batch(i * 1000, 1000)).collect();
        let (output, path, index) = write(dir.path(), &batches).await;
        let file = dir
            .path()
            .join(format!("_work/runs/run-00000.{RUN_EXTENSION}"));
        let written = std::fs::read(&file).unwrap();

        let mut changed = written.clone();
        // A byte of the text of the third batch or so: its strings would no longer be what the
        // offsets and the UTF-8 the writer checked say.
        let at = written.len() * 2 / 3;
        changed[at] ^= 0x80;
        std::fs::write(&file, &changed).unwrap();
        let error = read(&output, &path, index.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("run-00000.arrows"), "{error}");
        assert!(error.contains("checksum differs"), "{error}");

        std::fs::write(&file, &written[..written.len() - 100]).unwrap();
        let error = read(&output, &path, index.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("ends before"), "{error}");

        std::fs::write(&file, [written.as_slice(), b"extra"].concat()).unwrap();
        let error = read(&output, &path, index).await.unwrap_err().to_string();
        assert!(error.contains("after its end"), "{error}");
    }

    /// Conversations where `messages` is `chosen`, except in one row of the last batch.
    fn conversations(identical: bool) -> Vec<RecordBatch> {
        (0..6)
            .map(|b| {
                let chosen = batch(b * 500, 500).column(1).clone();
                let rejected = batch(b * 500 + 7, 500).column(1).clone();
                let messages = if identical || b < 5 {
                    // Built again, as a reader of the input file builds it: equal, not shared.
                    batch(b * 500, 500).column(1).clone()
                } else {
                    batch(b * 500 + 1, 500).column(1).clone()
                };
                let key = || {
                    Arc::new(StringArray::from_iter_values(
                        (b * 500..b * 500 + 500).map(|i| format!("pair {i}")),
                    )) as ArrayRef
                };
                RecordBatch::try_from_iter_with_nullable([
                    ("chosen", chosen, true),
                    ("rejected", rejected, true),
                    ("messages", messages, true),
                    ("key", key(), false),
                    ("key_again", key(), false),
                ])
                .unwrap()
            })
            .collect()
    }

    /// A column equal to an earlier one is written once and read back whole; a column that
    /// differs in one row, or may hold no nulls, is written in full.
    #[tokio::test]
    async fn a_column_equal_to_an_earlier_one_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let batches = conversations(false);
        let (output, path, index) = write(dir.path(), &batches).await;
        let copies: Vec<_> = index.pieces.iter().map(|p| p.copies.clone()).collect();
        assert_eq!(copies[1], vec![ColumnCopy { column: 2, of: 0 }]);
        assert!(copies[6].is_empty(), "the batch whose messages differ");
        assert_eq!(read(&output, &path, index).await.unwrap(), batches);

        let size = |dir: &std::path::Path| {
            std::fs::metadata(dir.join(format!("_work/runs/run-00000.{RUN_EXTENSION}")))
                .unwrap()
                .len() as f64
        };
        let without = tempfile::tempdir().unwrap();
        let narrower: Vec<RecordBatch> = conversations(true)
            .iter()
            .map(|b| b.project(&[0, 1, 3, 4]).unwrap())
            .collect();
        write(without.path(), &narrower).await;
        let ratio = size(dir.path()) / size(without.path());
        // Five batches of six are written without their copy (about 1.5 x with them all), the
        // last one with it: a sixth of a column, and the nulls in its place elsewhere.
        assert!(
            ratio < 1.15,
            "the run is {ratio} x as large as without the copies"
        );
    }
}
