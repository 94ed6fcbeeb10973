//! Picking rows by their place out of a run of files: the `scores/` parts (a scored row's
//! place is its position among the job's scored rows) or the input files (a row's place is its
//! `row_id`, its position among all input rows).
//!
//! Given the places wanted, in ascending order, a [`RowPicker`] reads each file that holds
//! some of them once, front to back, decoding only the wanted rows (the others are skipped),
//! and hands them out batch by batch.

use std::ops::{Deref, Range};
use std::sync::Arc;

use apscore_core::parquet_io::{ParquetIoError, in_column_order, read_selected};
use apscore_core::storage::{InputFile, Location};
use arrow::array::RecordBatch;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::error::{OutputError, arrow_err};
use crate::plan::SourceFile;
use crate::scored::ScoredPart;

/// A range of a list shared without copying: the places one picker wants out of a list
/// several pickers (the lanes of `selected/`) take their shares of.
#[derive(Debug)]
pub struct SharedSlice<T> {
    all: Arc<[T]>,
    range: Range<usize>,
}

impl<T> SharedSlice<T> {
    /// Its part `range` (relative to this slice), sharing the list.
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.range.len());
        SharedSlice {
            all: Arc::clone(&self.all),
            range: self.range.start + range.start..self.range.start + range.end,
        }
    }
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        self.slice(0..self.range.len())
    }
}

impl<T> From<Vec<T>> for SharedSlice<T> {
    fn from(all: Vec<T>) -> Self {
        let range = 0..all.len();
        SharedSlice {
            all: all.into(),
            range,
        }
    }
}

impl<T> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.all[self.range.clone()]
    }
}

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
    places: SharedSlice<u64>,
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
    /// Wanted rows of this file not handed out yet.
    remaining: usize,
}

impl<'a> RowPicker<'a> {
    /// Picks scored rows by `positions` out of the `scores/` parts at `output`.
    pub fn scores(
        output: &'a Location,
        parts: &[ScoredPart],
        positions: SharedSlice<u64>,
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
        row_ids: SharedSlice<u64>,
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
        places: SharedSlice<u64>,
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
                // Open the file that holds the next wanted row, reading only the wanted rows.
                let Some(segment) = self.segments.get(self.next_segment) else {
                    return Err(OutputError::RowCount {
                        file: self.what.clone(),
                        expected: self.places.len() as u64,
                        found: self.next as u64,
                    });
                };
                let start = self.next_segment_start;
                let end = start + segment.rows;
                self.next_segment += 1;
                self.next_segment_start = end;
                if wanted < end {
                    let file = match &segment.file {
                        SegmentFile::Output(path) => self.output.input_file(path).await?,
                        SegmentFile::Input { url, size } => InputFile::from_url(url, *size)?,
                    };
                    let rows: Vec<u64> = self.places[self.next..]
                        .iter()
                        .take_while(|&&place| place < end)
                        .map(|&place| place - start)
                        .collect();
                    let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
                    let stream = read_selected(&file, Some(&columns), &rows).await?;
                    self.reading = Some(OpenFile {
                        batches: Box::pin(stream),
                        file: file.display,
                        remaining: rows.len(),
                    });
                }
                continue;
            };
            let Some(batch) = open.batches.try_next().await? else {
                if open.remaining > 0 {
                    return Err(OutputError::RowCount {
                        file: open.file.clone(),
                        expected: self.places.len() as u64,
                        found: self.next as u64,
                    });
                }
                self.reading = None;
                continue;
            };
            // The file hands out the wanted rows only, in order: the next places.
            let n = batch.num_rows().min(open.remaining);
            open.remaining -= n;
            let first = self.next;
            self.next += n;
            if n > 0 {
                let columns: Vec<&str> = self.columns.iter().map(String::as_str).collect();
                let picked =
                    in_column_order(&batch.slice(0, n), &columns).map_err(arrow_err(&open.file))?;
                return Ok(Some((picked, first..self.next)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::SharedSlice;

    #[test]
    fn a_slice_of_a_slice_is_that_range_of_the_list() {
        let all = SharedSlice::from((0..10u64).collect::<Vec<_>>());
        let middle = all.slice(2..8);
        assert_eq!(&*middle, &[2, 3, 4, 5, 6, 7]);
        assert_eq!(&*middle.slice(1..3), &[3, 4]);
        assert_eq!(&*middle.clone(), &*middle);
        assert!(middle.slice(6..6).is_empty());
        assert_eq!(all.len(), 10);
    }

    #[test]
    #[should_panic]
    fn a_range_past_the_slice_is_refused() {
        SharedSlice::from(vec![1u64, 2, 3]).slice(1..3).slice(1..3);
    }
}
