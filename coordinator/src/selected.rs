//! `selected/`: the selected rows with their input columns, in rank order, in bounded memory.
//!
//! The rows live in the input files (and the `scores/` parts) in input order; the ranking
//! wants them in rank order,
//! and a dataset's selected rows (with their conversations) rarely fit in memory. So this is
//! an external sort in two passes, each reading its data once:
//!
//! ```text
//!   pass 1  scores/ parts, in input order ──▶ take the selected rows, sort each run of them by
//!           rank (a run: one part's selected rows, or a memory budget's worth)
//!           ──▶ _work/selected-runs/run-NNNNN.{arrows,parquet} (small batches: run_files)
//!   pass 2  for rank 1, 2, … k: the next row of the run that holds that rank
//!           ──▶ selected/part-NNNNN.parquet
//! ```
//!
//! Pass 2 needs no comparisons: pass 1 records which run holds each rank. When every selected
//! row fits in one run (within the memory budget), there is no run file and no pass 2: the
//! rows are sorted in memory and written once.

use std::ops::Range;
use std::sync::Arc;

use apscore_core::columns;
use apscore_core::outputs::{SELECTED_DIR, WORK_DIR};
use apscore_core::parquet_io::{self, ParquetSink};
use apscore_core::storage::{InputFile, Location};
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::compute::{concat_batches, interleave_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use tracing::debug;

use crate::error::{OutputError, arrow_err};
use crate::picking::RowPicker;
use crate::ranking::{RankRows, Ranking};
use crate::run_files::{RunFormat, RunReader, RunWriter};
use crate::scored::Scored;

/// Default memory for the selected rows held at once: one run in pass 1, all runs' current
/// batches in pass 2.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 48 * 1024 * 1024;
/// Rows per file of `selected/`.
const PART_ROWS: usize = 1 << 20;
/// Rows per record batch written to `selected/`.
const OUTPUT_BATCH_ROWS: usize = 8192;

/// Writes `selected/part-NNNNN.parquet`: the selected rows in rank order, with the input's
/// columns (and the reference log-probs, with a reference model) followed by `row_id` and
/// `rank`, gathered from the `scores/` parts. About
/// `budget_bytes` of rows are held in memory at once. Returns the files written.
pub async fn write_selected(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    budget_bytes: u64,
    key_values: &[(String, String)],
) -> Result<Vec<String>, OutputError> {
    let budget = Budget {
        bytes: budget_bytes as f64,
        bytes_per_row: scored.bytes_per_row + 16.0,
    };
    let started = std::time::Instant::now();
    let (mut runs, mut last) = write_runs(output, scored, rows, ranking, budget).await?;
    let written = if ranking.selected == 0 {
        write_empty_part(output, scored, key_values).await?
    } else if runs.files.is_empty() {
        // Every selected row fits in one run: put them in rank order here, no run file.
        let sorted = last.sorted(output.display())?;
        let mut parts = SelectedParts::new(output, key_values);
        let mut offset = 0;
        while offset < sorted.num_rows() {
            let len = OUTPUT_BATCH_ROWS.min(sorted.num_rows() - offset);
            parts.write(&sorted.slice(offset, len)).await?;
            offset += len;
        }
        parts.finish().await?
    } else {
        last.write(output, &mut runs).await?;
        debug!(
            seconds = started.elapsed().as_secs_f64(),
            runs = runs.files.len(),
            "selected rows gathered in sorted runs"
        );
        merge_runs(output, &runs, ranking.selected, budget, key_values).await?
    };
    debug!(
        rows = ranking.selected,
        runs = runs.files.len(),
        files = written.len(),
        seconds = started.elapsed().as_secs_f64(),
        "selected rows put in rank order"
    );
    output.delete_all(RUNS_DIR).await?;
    Ok(written)
}

/// Where pass 1 writes its runs: under the job's work folder, removed when the job completes.
const RUNS_DIR: &str = "_work/selected-runs";

/// With nothing selected, `selected/` still holds one file, with no rows and the usual columns,
/// so that readers of the folder find a table (none when there is no scored row to take the
/// columns from).
async fn write_empty_part(
    output: &Location,
    scored: &Scored,
    key_values: &[(String, String)],
) -> Result<Vec<String>, OutputError> {
    let Some(first) = scored.parts.first() else {
        return Ok(Vec::new());
    };
    let part = output.input_file(&first.path).await?;
    let part_schema = Arc::clone(parquet_io::read_footer(&part).await?.schema());
    // The input's columns come from the part, or without a copy there from the input.
    let input_schema = match (scored.inputs_in_scores, scored.sources.first()) {
        (false, Some(source)) => {
            let file = InputFile::from_url(&source.path, source.size)?;
            Arc::clone(parquet_io::read_footer(&file).await?.schema())
        }
        _ => Arc::clone(&part_schema),
    };
    let mut fields: Vec<Field> = Vec::new();
    for name in scored.selected_columns() {
        // Columns apscore computes (and the input's named like them) are the part's.
        let (first, second) = match columns::is_score_column(name) {
            true => (&part_schema, &input_schema),
            false => (&input_schema, &part_schema),
        };
        let field = first
            .field_with_name(name)
            .or_else(|_| second.field_with_name(name))
            .map_err(arrow_err(&part.display))?;
        fields.push(field.clone());
    }
    fields.push(Field::new(columns::RANK, DataType::Int64, false));
    let relative = format!("{SELECTED_DIR}/part-00000.parquet");
    let path = output.path_of(&relative);
    let display = output.display_of(&path);
    let sink = ParquetSink::create(
        output.store(),
        path,
        display,
        Arc::new(Schema::new(fields)),
        key_values,
    )?;
    sink.finish().await?;
    Ok(vec![relative])
}

/// The memory both passes keep to.
#[derive(Debug, Clone, Copy)]
struct Budget {
    bytes: f64,
    /// Estimated bytes per selected row in memory.
    bytes_per_row: f64,
}

/// Bytes per batch of a run file: pass 2 holds one batch of every run.
const RUN_BATCH_BYTES: f64 = 256.0 * 1024.0;

impl Budget {
    /// Rows per batch of a run file.
    fn run_batch_rows(&self) -> usize {
        ((RUN_BATCH_BYTES / self.bytes_per_row) as usize).clamp(16, parquet_io::BATCH_ROWS)
    }
}

/// The sorted runs of pass 1.
struct Runs {
    format: RunFormat,
    /// Relative paths of the run files.
    files: Vec<String>,
    /// For each rank (0-based), the run that holds it.
    run_of_rank: Vec<u32>,
}

/// Pass 1: the selected rows, in runs sorted by rank written as run files; the last run is
/// returned unwritten (when it is the only one, the rows need no merge).
async fn write_runs(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    budget: Budget,
) -> Result<(Runs, RunBuilder), OutputError> {
    debug_assert!(RUNS_DIR.starts_with(WORK_DIR));
    // Half the budget for the gathered rows, half for their sorted copy.
    let run_rows = ((budget.bytes / 2.0 / budget.bytes_per_row) as usize).max(64);

    // (position among scored rows, rank), by position: the walk below meets them in order.
    let mut by_position: Vec<(u32, u32)> = ranking.order[..ranking.selected]
        .iter()
        .enumerate()
        .map(|(rank, &position)| (position, rank as u32))
        .collect();
    by_position.sort_unstable();

    let mut runs = Runs {
        format: RunFormat::for_rows(budget.bytes_per_row),
        files: Vec::new(),
        run_of_rank: vec![0; ranking.selected],
    };
    let mut run = RunBuilder::new(budget.run_batch_rows());
    let mut source = SelectedSource::new(output, scored, rows, &by_position);
    while let Some((picked, range)) = source.next_batch().await? {
        run.add(
            picked,
            by_position[range].iter().map(|&(_, rank)| rank).collect(),
        );
        if run.rows >= run_rows {
            run.write(output, &mut runs).await?;
        }
    }
    Ok((runs, run))
}

/// The selected rows with the columns `selected/` carries ([`Scored::selected_columns`]), in
/// position order: all from the `scores/` parts when they copy the input; otherwise the
/// input's own columns from the input files (by `row_id`), the columns apscore computed (an
/// input column named like a score column, the reference log-probs) from the parts, and
/// `row_id` from memory.
struct SelectedSource<'a> {
    /// The input's columns, or every column when the parts copy the input.
    main: RowPicker<'a>,
    /// The computed columns, when the parts do not copy the input and there are any.
    computed: Option<RowPicker<'a>>,
    /// Rows taken from `computed` ahead of `main`.
    computed_ahead: Vec<RecordBatch>,
    rows: &'a RankRows,
    /// Positions of the selected rows, ascending.
    positions: Vec<u64>,
    /// The columns in the order `selected/` has them (`row_id` last).
    columns: Vec<String>,
    from_input: bool,
}

impl<'a> SelectedSource<'a> {
    fn new(
        output: &'a Location,
        scored: &'a Scored,
        rows: &'a RankRows,
        by_position: &[(u32, u32)],
    ) -> Self {
        let positions: Vec<u64> = by_position.iter().map(|&(p, _)| u64::from(p)).collect();
        let columns = scored.selected_columns();
        if scored.inputs_in_scores {
            return SelectedSource {
                main: RowPicker::scores(output, &scored.parts, positions.clone(), &columns),
                computed: None,
                computed_ahead: Vec::new(),
                rows,
                positions,
                columns: columns.iter().map(|c| c.to_string()).collect(),
                from_input: false,
            };
        }
        let (computed, own): (Vec<&str>, Vec<&str>) = columns
            .iter()
            .copied()
            .filter(|&c| c != columns::ROW_ID)
            .partition(|&c| columns::is_score_column(c));
        let row_ids: Vec<u64> = positions.iter().map(|&p| rows.row_id(p as usize)).collect();
        SelectedSource {
            main: RowPicker::inputs(output, &scored.sources, row_ids, &own),
            computed: (!computed.is_empty())
                .then(|| RowPicker::scores(output, &scored.parts, positions.clone(), &computed)),
            computed_ahead: Vec::new(),
            rows,
            positions,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            from_input: true,
        }
    }

    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Range<usize>)>, OutputError> {
        let Some((batch, range)) = self.main.next_batch().await? else {
            return Ok(None);
        };
        if !self.from_input {
            return Ok(Some((batch, range)));
        }
        let computed = self.computed_rows(range.len()).await?;
        let positions = &self.positions[range.clone()];
        let row_id: ArrayRef = Arc::new(Int64Array::from_iter_values(
            positions
                .iter()
                .map(|&p| self.rows.row_id(p as usize) as i64),
        ));
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut arrays = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            let from = [Some(&batch), computed.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|b| {
                    Some((
                        b.schema().field_with_name(name).ok()?.clone(),
                        b.column_by_name(name)?.clone(),
                    ))
                });
            let (field, array) = match from {
                Some(found) => found,
                None => (
                    Field::new(columns::ROW_ID, DataType::Int64, false),
                    Arc::clone(&row_id),
                ),
            };
            fields.push(field);
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(arrow_err("selected rows"))?;
        Ok(Some((batch, range)))
    }

    /// The next `n` rows of the computed columns (both pickers meet the rows in the same
    /// order), or `None` without any.
    async fn computed_rows(&mut self, n: usize) -> Result<Option<RecordBatch>, OutputError> {
        let Some(picker) = &mut self.computed else {
            return Ok(None);
        };
        let mut have: usize = self.computed_ahead.iter().map(RecordBatch::num_rows).sum();
        while have < n {
            let Some((batch, _)) = picker.next_batch().await? else {
                break;
            };
            have += batch.num_rows();
            self.computed_ahead.push(batch);
        }
        let schema = self.computed_ahead[0].schema();
        let all = concat_batches(&schema, &self.computed_ahead).map_err(arrow_err("scores/"))?;
        let taken = all.slice(0, n);
        let rest = all.slice(n, all.num_rows() - n);
        self.computed_ahead = if rest.num_rows() > 0 {
            vec![rest]
        } else {
            Vec::new()
        };
        Ok(Some(taken))
    }
}

/// Selected rows gathered for one run, not yet sorted.
struct RunBuilder {
    /// Rows per batch of the run file.
    batch_rows: usize,
    pieces: Vec<RecordBatch>,
    /// (rank, piece, row in piece) of each row.
    rows_by_rank: Vec<(u32, usize, usize)>,
    rows: usize,
}

impl RunBuilder {
    fn new(batch_rows: usize) -> Self {
        RunBuilder {
            batch_rows,
            pieces: Vec::new(),
            rows_by_rank: Vec::new(),
            rows: 0,
        }
    }

    fn add(&mut self, piece: RecordBatch, ranks: Vec<u32>) {
        let index = self.pieces.len();
        self.rows += piece.num_rows();
        self.rows_by_rank.extend(
            ranks
                .into_iter()
                .enumerate()
                .map(|(row, rank)| (rank, index, row)),
        );
        self.pieces.push(piece);
    }

    /// The gathered rows sorted by rank, with the `rank` column appended.
    fn sorted(&mut self, what: &str) -> Result<RecordBatch, OutputError> {
        self.rows_by_rank.sort_unstable_by_key(|&(rank, _, _)| rank);
        let pieces: Vec<&RecordBatch> = self.pieces.iter().collect();
        let order: Vec<(usize, usize)> =
            self.rows_by_rank.iter().map(|&(_, p, r)| (p, r)).collect();
        let sorted = interleave_record_batch(&pieces, &order).map_err(arrow_err(what))?;
        let rank: ArrayRef = Arc::new(Int64Array::from_iter_values(
            self.rows_by_rank
                .iter()
                .map(|&(rank, _, _)| i64::from(rank) + 1),
        ));
        let mut fields: Vec<Field> = sorted
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(columns::RANK, DataType::Int64, false));
        let mut arrays = sorted.columns().to_vec();
        arrays.push(rank);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(arrow_err(what))
    }

    /// Sorts the gathered rows by rank, appends the `rank` column and writes them as the next
    /// run; records which ranks the run holds.
    async fn write(&mut self, output: &Location, runs: &mut Runs) -> Result<(), OutputError> {
        if self.rows == 0 {
            return Ok(());
        }
        let run_index = runs.files.len() as u32;
        let relative = format!("{RUNS_DIR}/run-{run_index:05}.{}", runs.format.extension());
        let path = output.path_of(&relative);
        let display = output.display_of(&path);
        let batch = self.sorted(&display)?;
        for &(rank, _, _) in &self.rows_by_rank {
            runs.run_of_rank[rank as usize] = run_index;
        }
        // Small batches: pass 2 holds one batch of every run at once.
        let mut writer = RunWriter::create(runs.format, output, path, &batch.schema())?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = self.batch_rows.min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, len)).await?;
            offset += len;
        }
        writer.finish().await?;
        runs.files.push(relative);
        *self = RunBuilder::new(self.batch_rows);
        Ok(())
    }
}

/// One run being read in pass 2.
struct RunCursor {
    reader: RunReader,
    batch: Option<RecordBatch>,
    offset: usize,
    /// Index of `batch` among the batches the output batch being built draws from.
    held: Option<usize>,
}

/// Pass 2: rank by rank, the next row of the run holding that rank.
async fn merge_runs(
    output: &Location,
    runs: &Runs,
    selected: usize,
    budget: Budget,
    key_values: &[(String, String)],
) -> Result<Vec<String>, OutputError> {
    if selected == 0 {
        return Ok(Vec::new());
    }
    // Each run's current batch gets an equal share of the budget (IPC runs are read in the
    // batches they were written in, already small).
    let per_run = budget.bytes / runs.files.len().max(1) as f64;
    let batch_rows = ((per_run / budget.bytes_per_row) as usize).clamp(16, parquet_io::BATCH_ROWS);
    let mut cursors = Vec::with_capacity(runs.files.len());
    for relative in &runs.files {
        cursors.push(RunCursor {
            reader: RunReader::open(runs.format, output, relative, batch_rows).await?,
            batch: None,
            offset: 0,
            held: None,
        });
    }

    let mut parts = SelectedParts::new(output, key_values);
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(OUTPUT_BATCH_ROWS);
    for (rank, &run) in runs.run_of_rank.iter().enumerate() {
        let cursor = &mut cursors[run as usize];
        if cursor
            .batch
            .as_ref()
            .is_none_or(|b| cursor.offset == b.num_rows())
        {
            let next = cursor.reader.next().await?;
            let Some(next) = next else {
                return Err(OutputError::RowCount {
                    file: output.display_of(&output.path_of(&runs.files[run as usize])),
                    expected: selected as u64,
                    found: rank as u64,
                });
            };
            cursor.batch = Some(next);
            cursor.offset = 0;
            cursor.held = None;
        }
        let held_index = match cursor.held {
            Some(i) => i,
            None => {
                held.push(cursor.batch.clone().expect("a current batch"));
                cursor.held = Some(held.len() - 1);
                held.len() - 1
            }
        };
        picks.push((held_index, cursor.offset));
        cursor.offset += 1;

        if picks.len() == OUTPUT_BATCH_ROWS || rank + 1 == selected {
            let refs: Vec<&RecordBatch> = held.iter().collect();
            let display = output.display();
            let batch = interleave_record_batch(&refs, &picks).map_err(arrow_err(display))?;
            picks.clear();
            held.clear();
            cursors.iter_mut().for_each(|c| c.held = None);

            parts.write(&batch).await?;
        }
    }
    parts.finish().await
}

/// The files of `selected/` being written, `PART_ROWS` rows each.
struct SelectedParts<'a> {
    output: &'a Location,
    key_values: &'a [(String, String)],
    /// The part being written and its rows so far.
    current: Option<(ParquetSink, usize)>,
    written: Vec<String>,
}

impl<'a> SelectedParts<'a> {
    fn new(output: &'a Location, key_values: &'a [(String, String)]) -> Self {
        SelectedParts {
            output,
            key_values,
            current: None,
            written: Vec::new(),
        }
    }

    /// Appends the next rows in rank order; a part ends once it holds `PART_ROWS` rows.
    async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        if self.current.is_none() {
            let relative = format!("{SELECTED_DIR}/part-{:05}.parquet", self.written.len());
            let path = self.output.path_of(&relative);
            let file = self.output.display_of(&path);
            let sink = ParquetSink::create(
                self.output.store(),
                path,
                file,
                batch.schema(),
                self.key_values,
            )?;
            self.current = Some((sink, 0));
            self.written.push(relative);
        }
        let (sink, rows) = self.current.as_mut().expect("an open part");
        sink.write(batch).await?;
        *rows += batch.num_rows();
        if *rows >= PART_ROWS {
            let (done, _) = self.current.take().expect("an open part");
            done.finish().await?;
        }
        Ok(())
    }

    /// Finishes the last part; returns the files written.
    async fn finish(mut self) -> Result<Vec<String>, OutputError> {
        if let Some((last, _)) = self.current.take() {
            last.finish().await?;
        }
        Ok(self.written)
    }
}
