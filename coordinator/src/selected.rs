//! `selected/`: the selected rows with their input columns, in rank order, in bounded memory.
//!
//! The rows live in the input files (and the `scores/` parts) in input order; the ranking
//! wants them in rank order,
//! and a dataset's selected rows (with their conversations) rarely fit in memory. So this is
//! an external sort in two passes, each reading its data once, each on every core:
//!
//! ```text
//!   pass 1  the input files (or scores/ parts), in input order, cut into one lane per core
//!           ──▶ each lane takes its selected rows, sorts each run of them by rank (a memory
//!           budget's worth), and writes the run cut by output part
//!           ──▶ _work/selected-runs/run-LL-NNNNN-part-PPPPP.arrows (run_files)
//!   pass 2  one merge per output part, as many at once as there are cores: for each rank of
//!           the part, the next row of the run that holds that rank
//!           ──▶ selected/part-PPPPP.parquet
//! ```
//!
//! The parts are fixed by the number of selected rows alone ([`part_bounds`]), so the files a
//! job writes do not depend on the machine. Pass 2 needs no comparisons: pass 1 records which
//! run holds each rank. When every selected row fits in one run (within the memory budget),
//! there is no run file and no pass 2: the rows are sorted in memory and written once.

use std::ops::Range;
use std::sync::Arc;

use apscore_core::columns;
use apscore_core::outputs::{SELECTED_DIR, WORK_DIR};
use apscore_core::parquet_io::{self, ParquetSink};
use apscore_core::storage::{InputFile, Location};
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::compute::{cast, concat_batches, interleave_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use tokio::task::JoinSet;
use tracing::debug;

use crate::error::{OutputError, arrow_err};
use crate::picking::{RowPicker, SharedSlice};
use crate::ranking::{RankRows, Ranking};
use crate::run_files::{RUN_EXTENSION, RunIndex, RunReader, RunWriter};
use crate::scored::Scored;

/// Default memory for the selected rows held at once: the runs being gathered in pass 1, the
/// runs' current batches in pass 2.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 48 * 1024 * 1024;
/// Default rows per file of `selected/` at most; the files are written side by side.
pub const DEFAULT_FILE_ROWS: usize = 1 << 18;

/// How `selected/` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectedWriting {
    /// Memory for the selected rows held at once (bytes); less means more sorted runs.
    pub memory_bytes: u64,
    /// Rows per file at most: the selection is cut into as few files of equal size.
    pub file_rows: usize,
}

impl Default for SelectedWriting {
    fn default() -> Self {
        SelectedWriting {
            memory_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            file_rows: DEFAULT_FILE_ROWS,
        }
    }
}

/// Rows per record batch written to `selected/`.
const OUTPUT_BATCH_ROWS: usize = 8192;
/// Lanes of pass 1 and merges of pass 2 at once, at most.
const MAX_LANES: usize = 8;

/// Writes `selected/part-NNNNN.parquet`: the selected rows in rank order, with the input's
/// columns (and the reference log-probs, with a reference model) followed by `row_id` and
/// `rank`, gathered from the input files and the `scores/` parts. About `writing.memory_bytes`
/// of rows are held in memory at once. Returns the files written.
pub async fn write_selected(
    output: &Location,
    scored: &Scored,
    rows: &RankRows,
    ranking: &Ranking,
    writing: SelectedWriting,
    key_values: &[(String, String)],
) -> Result<Vec<String>, OutputError> {
    if ranking.selected == 0 {
        return write_empty_part(output, scored, key_values).await;
    }
    let budget = Budget {
        bytes: writing.memory_bytes as f64,
        bytes_per_row: scored.bytes_per_row + 16.0,
    };
    let started = std::time::Instant::now();
    let bounds = Arc::new(part_bounds(ranking.selected, writing.file_rows));
    let picks = Picks::of(ranking, rows);
    let written = if ranking.selected <= budget.run_rows(1) {
        // Every selected row fits in one run: put them in rank order here, no run file.
        let mut run = RunBuilder::default();
        let mut source = SelectedSource::new(output, scored, &picks);
        while let Some((picked, range)) = source.next_batch().await? {
            run.add(picked, picks.ranks[range].to_vec());
        }
        drop(source);
        let sorted = run.sorted(output.display())?;
        let mut written = Vec::with_capacity(bounds.len() - 1);
        for part in 0..bounds.len() - 1 {
            let mut sink = SelectedPart::create(output, part, &sorted, key_values)?;
            let mut offset = bounds[part];
            while offset < bounds[part + 1] {
                let len = OUTPUT_BATCH_ROWS.min(bounds[part + 1] - offset);
                sink.write(&sorted.slice(offset, len)).await?;
                offset += len;
            }
            written.push(sink.finish().await?);
        }
        written
    } else {
        let lanes = lanes();
        let parts = write_runs(output, scored, picks, &bounds, budget, lanes).await?;
        debug!(
            seconds = started.elapsed().as_secs_f64(),
            runs = parts.iter().map(|p| p.files.len()).sum::<usize>(),
            lanes,
            "selected rows gathered in sorted runs"
        );
        merge_parts(output, parts, &bounds, budget, key_values, lanes).await?
    };
    debug!(
        rows = ranking.selected,
        files = written.len(),
        seconds = started.elapsed().as_secs_f64(),
        "selected rows put in rank order"
    );
    output.delete_all(RUNS_DIR).await?;
    Ok(written)
}

/// The selected rows by their position among the scored rows, ascending (the order in which a
/// walk over the files meets them), with their ranks and `row_id`s. The lanes share the lists.
#[derive(Clone)]
struct Picks {
    positions: SharedSlice<u64>,
    row_ids: SharedSlice<u64>,
    /// Rank (0-based) of each pick.
    ranks: SharedSlice<u32>,
}

impl Picks {
    fn of(ranking: &Ranking, rows: &RankRows) -> Self {
        let mut picks: Vec<(u32, u32)> = ranking.order[..ranking.selected]
            .iter()
            .enumerate()
            .map(|(rank, &position)| (position, rank as u32))
            .collect();
        picks.sort_unstable();
        let positions: Vec<u64> = picks.iter().map(|&(p, _)| u64::from(p)).collect();
        let ranks: Vec<u32> = picks.iter().map(|&(_, rank)| rank).collect();
        drop(picks);
        let row_ids: Vec<u64> = positions.iter().map(|&p| rows.row_id(p as usize)).collect();
        Picks {
            positions: positions.into(),
            row_ids: row_ids.into(),
            ranks: ranks.into(),
        }
    }

    fn len(&self) -> usize {
        self.ranks.len()
    }

    /// The picks `range`, sharing the lists.
    fn slice(&self, range: Range<usize>) -> Self {
        Picks {
            positions: self.positions.slice(range.clone()),
            row_ids: self.row_ids.slice(range.clone()),
            ranks: self.ranks.slice(range),
        }
    }
}

/// Where pass 1 writes its runs: under the job's work folder, removed when the job completes.
const RUNS_DIR: &str = "_work/selected-runs";

/// The ranks (0-based) of each file of `selected/`: part `p` holds `bounds[p]..bounds[p + 1]`.
/// As few parts as `file_rows` rows per part allow, of equal size (to a row).
fn part_bounds(selected: usize, file_rows: usize) -> Vec<usize> {
    let parts = selected.div_ceil(file_rows.max(1)).max(1);
    (0..=parts).map(|p| p * selected / parts).collect()
}

/// The lanes of pass 1 and the merges of pass 2 run at once: one per core.
fn lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_LANES)
}

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
        if scored.score_column_in_input(name) {
            fields.push(double_field(name));
            continue;
        }
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
    /// Rows per run when `lanes` lanes gather runs at once: half the budget for the gathered
    /// rows, half for their sorted copy.
    fn run_rows(&self, lanes: usize) -> usize {
        ((self.bytes / 2.0 / lanes as f64 / self.bytes_per_row) as usize).max(64)
    }

    /// Rows per batch of a run file.
    fn run_batch_rows(&self) -> usize {
        ((RUN_BATCH_BYTES / self.bytes_per_row) as usize).clamp(16, parquet_io::BATCH_ROWS)
    }
}

/// The runs of pass 1 that hold one output part's rows.
struct PartRuns {
    /// The run files: relative path, and what the writer recorded for the reader.
    files: Vec<(String, RunIndex)>,
    /// For each rank of the part (from the part's first), the file that holds it.
    run_of_rank: Vec<u32>,
}

/// One output part's share of a sorted run, written by a lane of pass 1.
struct RunPiece {
    part: usize,
    relative: String,
    index: RunIndex,
    /// The ranks the piece holds, ascending.
    ranks: Vec<u32>,
}

/// Pass 1: the selected rows, cut by position into `lanes` lanes gathered at once, each in
/// runs sorted by rank and written cut by output part. Returns each part's runs.
async fn write_runs(
    output: &Location,
    scored: &Scored,
    picks: Picks,
    bounds: &Arc<Vec<usize>>,
    budget: Budget,
    lanes: usize,
) -> Result<Vec<PartRuns>, OutputError> {
    debug_assert!(RUNS_DIR.starts_with(WORK_DIR));
    let lanes = lanes.min(picks.len()).max(1);
    let run_rows = budget.run_rows(lanes);
    let scored = Arc::new(scored.clone());
    // Dropped on an error, the set stops the other lanes.
    let mut tasks = JoinSet::new();
    for lane in 0..lanes {
        let range = lane * picks.len() / lanes..(lane + 1) * picks.len() / lanes;
        let lane_picks = picks.slice(range);
        let (output, scored, bounds) = (output.clone(), Arc::clone(&scored), Arc::clone(bounds));
        let batch_rows = budget.run_batch_rows();
        tasks.spawn(async move {
            let lane = Lane {
                output: &output,
                index: lane,
                bounds: &bounds,
                batch_rows,
            };
            lane.gather(&scored, &lane_picks, run_rows).await
        });
    }
    let mut parts: Vec<PartRuns> = bounds
        .windows(2)
        .map(|w| PartRuns {
            files: Vec::new(),
            run_of_rank: vec![0; w[1] - w[0]],
        })
        .collect();
    while let Some(lane) = tasks.join_next().await {
        for piece in lane?? {
            let part = &mut parts[piece.part];
            let file = part.files.len() as u32;
            for rank in piece.ranks {
                part.run_of_rank[rank as usize - bounds[piece.part]] = file;
            }
            part.files.push((piece.relative, piece.index));
        }
    }
    Ok(parts)
}

/// One lane of pass 1.
struct Lane<'a> {
    output: &'a Location,
    index: usize,
    bounds: &'a [usize],
    /// Rows per batch of a run file.
    batch_rows: usize,
}

impl Lane<'_> {
    /// Gathers the rows of `picks` in runs of `run_rows` rows, and writes each run sorted by
    /// rank, cut by output part.
    async fn gather(
        &self,
        scored: &Scored,
        picks: &Picks,
        run_rows: usize,
    ) -> Result<Vec<RunPiece>, OutputError> {
        let mut pieces = Vec::new();
        let mut runs = 0;
        let mut run = RunBuilder::default();
        let mut source = SelectedSource::new(self.output, scored, picks);
        while let Some((picked, range)) = source.next_batch().await? {
            run.add(picked, picks.ranks[range].to_vec());
            if run.rows >= run_rows {
                pieces.extend(self.write_run(&mut run, runs).await?);
                runs += 1;
            }
        }
        if run.rows > 0 {
            pieces.extend(self.write_run(&mut run, runs).await?);
        }
        Ok(pieces)
    }

    /// Sorts the gathered rows by rank, appends the `rank` column and writes them as this
    /// lane's run number `run`, one file per output part they fall in.
    async fn write_run(
        &self,
        run: &mut RunBuilder,
        number: usize,
    ) -> Result<Vec<RunPiece>, OutputError> {
        let batch = run.sorted(self.output.display())?;
        let ranks: Vec<u32> = run.rows_by_rank.iter().map(|&(rank, _, _)| rank).collect();
        *run = RunBuilder::default();
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < ranks.len() {
            let part = self.bounds.partition_point(|&b| b <= ranks[start] as usize) - 1;
            let end =
                start + ranks[start..].partition_point(|&r| (r as usize) < self.bounds[part + 1]);
            let relative = format!(
                "{RUNS_DIR}/run-{:02}-{number:05}-part-{part:05}.{RUN_EXTENSION}",
                self.index
            );
            let path = self.output.path_of(&relative);
            // Small batches: pass 2 holds one batch of every run at once.
            let mut writer = RunWriter::create(self.output, path, &batch.schema())?;
            let mut offset = start;
            while offset < end {
                let len = self.batch_rows.min(end - offset);
                writer.write(&batch.slice(offset, len)).await?;
                offset += len;
            }
            let index = writer.finish().await?;
            pieces.push(RunPiece {
                part,
                relative,
                index,
                ranks: ranks[start..end].to_vec(),
            });
            start = end;
        }
        Ok(pieces)
    }
}

/// The selected rows with the columns `selected/` carries ([`Scored::selected_columns`]), in
/// position order: all from the `scores/` parts when they copy the input; otherwise the
/// input's own columns from the input files (by `row_id`), the columns apscore computed (an
/// input column named like a score column, the reference log-probs) from the parts, and
/// `row_id` from the picks.
struct SelectedSource<'a> {
    /// The input's columns, or every column when the parts copy the input.
    main: RowPicker<'a>,
    /// The computed columns, when the parts do not copy the input and there are any.
    computed: Option<RowPicker<'a>>,
    /// Rows taken from `computed` ahead of `main`.
    computed_ahead: Vec<RecordBatch>,
    /// The `row_id` of each row to pick.
    row_ids: SharedSlice<u64>,
    /// The columns in the order `selected/` has them (`row_id` last).
    columns: Vec<String>,
    from_input: bool,
    /// Score columns taken from the input ([`Scored::score_column_in_input`]): cast to the
    /// doubles `scores/` would have held.
    in_input_as_double: Vec<String>,
}

impl<'a> SelectedSource<'a> {
    /// The rows at `picks`.
    fn new(output: &'a Location, scored: &'a Scored, picks: &Picks) -> Self {
        let (positions, row_ids) = (picks.positions.clone(), picks.row_ids.clone());
        let columns = scored.selected_columns();
        let names = columns.iter().map(|c| c.to_string()).collect();
        if scored.inputs_in_scores {
            return SelectedSource {
                main: RowPicker::scores(output, &scored.parts, positions, &columns),
                computed: None,
                computed_ahead: Vec::new(),
                row_ids,
                columns: names,
                from_input: false,
                in_input_as_double: Vec::new(),
            };
        }
        let (computed, own): (Vec<&str>, Vec<&str>) = columns
            .iter()
            .copied()
            .filter(|&c| c != columns::ROW_ID)
            .partition(|&c| columns::is_score_column(c) && !scored.score_column_in_input(c));
        SelectedSource {
            main: RowPicker::inputs(output, &scored.sources, row_ids.clone(), &own),
            computed: (!computed.is_empty())
                .then(|| RowPicker::scores(output, &scored.parts, positions, &computed)),
            computed_ahead: Vec::new(),
            row_ids,
            in_input_as_double: own
                .iter()
                .filter(|c| scored.score_column_in_input(c))
                .map(|c| c.to_string())
                .collect(),
            columns: names,
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
        let row_id: ArrayRef = Arc::new(Int64Array::from_iter_values(
            self.row_ids[range.clone()].iter().map(|&id| id as i64),
        ));
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut arrays = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            if self.in_input_as_double.contains(name) {
                let column = batch.column_by_name(name).expect("picked from the input");
                let (field, array) = score_column_as_double(name, column)?;
                fields.push(field);
                arrays.push(array);
                continue;
            }
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

/// The field of a score column in `selected/`: a double, never null (only scored rows are
/// selected).
fn double_field(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}

/// A score column taken from the input (precomputed log-probs), as `scores/` would have held
/// it: cast to double. The selected rows' values are finite numbers (others are rejected).
fn score_column_as_double(name: &str, column: &ArrayRef) -> Result<(Field, ArrayRef), OutputError> {
    let array = cast(column, &DataType::Float64).map_err(arrow_err("selected rows"))?;
    Ok((double_field(name), array))
}

/// Selected rows gathered for one run, not yet sorted.
#[derive(Default)]
struct RunBuilder {
    pieces: Vec<RecordBatch>,
    /// (rank, piece, row in piece) of each row.
    rows_by_rank: Vec<(u32, usize, usize)>,
    rows: usize,
}

impl RunBuilder {
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
}

/// One run being read in pass 2.
struct RunCursor {
    reader: RunReader,
    batch: Option<RecordBatch>,
    offset: usize,
    /// Index of `batch` among the batches the output batch being built draws from.
    held: Option<usize>,
}

/// Pass 2: every part merged from its runs, `lanes` parts at once, each within its share of
/// the budget. Returns the files written, in part order.
async fn merge_parts(
    output: &Location,
    parts: Vec<PartRuns>,
    bounds: &[usize],
    budget: Budget,
    key_values: &[(String, String)],
    lanes: usize,
) -> Result<Vec<String>, OutputError> {
    let share = Budget {
        bytes: budget.bytes / lanes as f64,
        ..budget
    };
    let key_values: Arc<[(String, String)]> = key_values.into();
    let mut written = vec![String::new(); parts.len()];
    let mut waiting = parts.into_iter().enumerate();
    // Dropped on an error, the set stops the other merges.
    let mut merges = JoinSet::new();
    loop {
        while merges.len() < lanes {
            let Some((part, runs)) = waiting.next() else {
                break;
            };
            let (output, key_values) = (output.clone(), Arc::clone(&key_values));
            let ranks = bounds[part]..bounds[part + 1];
            merges.spawn(async move {
                let file = merge_part(&output, part, ranks, &runs, share, &key_values).await?;
                Ok::<_, OutputError>((part, file))
            });
        }
        let Some(merged) = merges.join_next().await else {
            break;
        };
        let (part, file) = merged??;
        written[part] = file;
    }
    Ok(written)
}

/// Merges one part: rank by rank, the next row of the run holding that rank.
async fn merge_part(
    output: &Location,
    part: usize,
    ranks: Range<usize>,
    runs: &PartRuns,
    budget: Budget,
    key_values: &[(String, String)],
) -> Result<String, OutputError> {
    // Each run gets an equal share of the budget, for the bytes read from it (its current
    // batch is a view of them) and the next read.
    let per_run = budget.bytes / runs.files.len().max(1) as f64;
    let mut cursors = Vec::with_capacity(runs.files.len());
    for (relative, index) in &runs.files {
        let path = output.path_of(relative);
        cursors.push(RunCursor {
            reader: RunReader::open(output, path, index.clone(), per_run as usize / 2).await?,
            batch: None,
            offset: 0,
            held: None,
        });
    }

    let mut sink: Option<SelectedPart> = None;
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(OUTPUT_BATCH_ROWS);
    let rows = ranks.len();
    for (i, &run) in runs.run_of_rank.iter().enumerate() {
        let cursor = &mut cursors[run as usize];
        if cursor
            .batch
            .as_ref()
            .is_none_or(|b| cursor.offset == b.num_rows())
        {
            let Some(next) = cursor.reader.next().await? else {
                return Err(OutputError::RowCount {
                    file: output.display_of(&output.path_of(&runs.files[run as usize].0)),
                    expected: rows as u64,
                    found: i as u64,
                });
            };
            cursor.batch = Some(next);
            cursor.offset = 0;
            cursor.held = None;
        }
        let held_index = match cursor.held {
            Some(index) => index,
            None => {
                held.push(cursor.batch.clone().expect("a current batch"));
                cursor.held = Some(held.len() - 1);
                held.len() - 1
            }
        };
        picks.push((held_index, cursor.offset));
        cursor.offset += 1;

        if picks.len() == OUTPUT_BATCH_ROWS || i + 1 == rows {
            let refs: Vec<&RecordBatch> = held.iter().collect();
            let batch =
                interleave_record_batch(&refs, &picks).map_err(arrow_err(output.display()))?;
            picks.clear();
            held.clear();
            cursors.iter_mut().for_each(|c| c.held = None);
            let sink = match &mut sink {
                Some(sink) => sink,
                None => sink.insert(SelectedPart::create(output, part, &batch, key_values)?),
            };
            sink.write(&batch).await?;
        }
    }
    sink.expect("a part holds at least one row").finish().await
}

/// One file of `selected/` being written.
struct SelectedPart {
    relative: String,
    sink: ParquetSink,
}

impl SelectedPart {
    /// Starts `selected/part-{part}.parquet` with the columns of `like`.
    fn create(
        output: &Location,
        part: usize,
        like: &RecordBatch,
        key_values: &[(String, String)],
    ) -> Result<Self, OutputError> {
        let relative = format!("{SELECTED_DIR}/part-{part:05}.parquet");
        let path = output.path_of(&relative);
        let display = output.display_of(&path);
        let sink = ParquetSink::create(output.store(), path, display, like.schema(), key_values)?;
        Ok(SelectedPart { relative, sink })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        Ok(self.sink.write(batch).await?)
    }

    /// Publishes the file; returns its path under the output location.
    async fn finish(self) -> Result<String, OutputError> {
        self.sink.finish().await?;
        Ok(self.relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_as_few_as_the_file_size_allows_and_of_equal_size() {
        assert_eq!(part_bounds(1, 4), vec![0, 1]);
        assert_eq!(part_bounds(4, 4), vec![0, 4]);
        assert_eq!(part_bounds(5, 4), vec![0, 2, 5]);
        assert_eq!(part_bounds(2400, 700), vec![0, 600, 1200, 1800, 2400]);
        let bounds = part_bounds(1_000_003, DEFAULT_FILE_ROWS);
        assert_eq!(bounds.len(), 5);
        assert!(
            bounds
                .windows(2)
                .all(|w| (250_000..=250_001).contains(&(w[1] - w[0])))
        );
    }
}
