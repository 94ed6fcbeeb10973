//! Picking rows by their place out of a run of files: the `scores/` parts (a scored row's
//! place is its position among the job's scored rows) or the input files (a row's place is its
//! `row_id`, its position among all input rows).
//!
//! Given the places wanted, in ascending order, a [`RowPicker`] reads each file that holds
//! some of them once, front to back, and hands out the wanted rows batch by batch.

use std::ops::Range;

use apscore_core::parquet_io::{ParquetIoError, in_column_order, read_whole};
use apscore_core::storage::{InputFile, Location};
use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::error::{OutputError, arrow_err};
use crate::plan::SourceFile;
use crate::scored::ScoredPart;

/// One file of the run a picker reads, holding the next `rows` places.
struct Segment {
    file: SegmentFile,
    rows: u64,
}

enum SegmentFile {
    /// A file under the job's output location (a `scores/` part).
    Output(String),
    /// An input file, by its URL and size.
    Input { url: String, size: u64 },
}

/// Reads the rows at ascending places from a run of files, `columns` only (in that order).
pub struct RowPicker<'a> {
    output: &'a Location,
    segments: Vec<Segment>,
    places: Vec<u64>,
    columns: Vec<String>,
    /// What the run is, for errors.
    what: String,
    /// The next file to open.
    next_segment: usize,
    /// Place of the first row of the next file to open.
    next_segment_start: u64,
    /// The file being read.
    reading: Option<OpenFile>,
    /// Index into `places` of the next row to pick.
    next: usize,
}

/// A file being read front to back.
struct OpenFile {
    batches: BoxStream<'static, Result<RecordBatch, ParquetIoError>>,
    /// The file as a person writes it, for errors.
    file: String,
    /// Place of the first row of the next batch.
    batch_start: u64,
}

impl<'a> RowPicker<'a> {
    /// Picks scored rows by `positions` out of the `scores/` parts at `output`.
    pub fn scores(
        output: &'a Location,
        parts: &[ScoredPart],
        positions: Vec<u64>,
        columns: &[&str],
    ) -> Self {
        let segments = parts
            .iter()
            .map(|p| Segment {
                file: SegmentFile::Output(p.path.clone()),
                rows: p.rows,
            })
            .collect();
        Self::new(output, segments, positions, columns, "scores/".into())
    }

    /// Picks input rows by `row_ids` out of the input files `sources` (in row order).
    pub fn inputs(
        output: &'a Location,
        sources: &[SourceFile],
        row_ids: Vec<u64>,
        columns: &[&str],
    ) -> Self {
        let segments = sources
            .iter()
            .map(|s| Segment {
                file: SegmentFile::Input {
                    url: s.path.clone(),
                    size: s.size,
                },
                rows: s.rows,
            })
            .collect();
        Self::new(output, segments, row_ids, columns, "the input files".into())
    }

    fn new(
        output: &'a Location,
        segments: Vec<Segment>,
        places: Vec<u64>,
        columns: &[&str],
        what: String,
    ) -> Self {
        debug_assert!(places.is_sorted());
        RowPicker {
            output,
            segments,
            places,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            what,
            next_segment: 0,
            next_segment_start: 0,
            reading: None,
            next: 0,
        }
    }

    /// The next picked rows and the indices into the places they are, or `None` when every
    /// place was picked. Fails if a place lies beyond the last file.
    pub async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Range<usize>)>, OutputError> {
        while self.next < self.places.len() {
            let wanted = self.places[self.next];
            let Some(open) = &mut self.reading else {
                // Open the file that holds the next wanted row.
                let Some(segment) = self.segments.get(self.next_segment) else {
                    return Err(OutputError::RowCount {
                        file: self.what.clone(),
                        expected: self.places.len() as u64,
                        found: self.next as u64,
                    });
                };
                let start = self.next_segment_start;
                self.next_segment += 1;
                self.next_segment_start += segment.rows;
                if wanted < start + segment.rows {
                    let file = match &segment.file {
                        SegmentFile::Output(path) => self.output.input_file(path).await?,
                        SegmentFile::Input { url, size } => InputFile::from_url(url, *size)?,
                    };
                    let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
                    let stream = read_whole(&file, Some(&columns)).await?;
                    self.reading = Some(OpenFile {
                        batches: Box::pin(stream),
                        file: file.display,
                        batch_start: start,
                    });
                }
                continue;
            };
            let Some(batch) = open.batches.try_next().await? else {
                self.reading = None;
                continue;
            };
            let batch_start = open.batch_start;
            let batch_end = batch_start + batch.num_rows() as u64;
            let first = self.next;
            let mut take = Vec::new();
            while self.next < self.places.len() && self.places[self.next] < batch_end {
                take.push((self.places[self.next] - batch_start) as u32);
                self.next += 1;
            }
            open.batch_start = batch_end;
            if !take.is_empty() {
                let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
                let picked = take_record_batch(&batch, &UInt32Array::from(take))
                    .and_then(|b| in_column_order(&b, &columns))
                    .map_err(arrow_err(&open.file))?;
                return Ok(Some((picked, first..self.next)));
            }
        }
        Ok(None)
    }
}
