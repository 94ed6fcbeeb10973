//! Planning a job: from input files to shards, using Parquet footers only.
//!
//! Every file's footer is read before any row is: this finds unreadable files and files whose
//! columns do not fit the dataset layout before any work starts. Shards are runs of whole row
//! groups of one file holding about `shard_rows` rows; row groups are never split. Rows get
//! their global input position (`row_id`) from the file order and their place in the file.

use apscore_core::layout::{DatasetLayout, LayoutError, LayoutOptions};
use apscore_core::parquet_io::{self, ParquetIoError};
use apscore_core::shard::Shard;
use apscore_core::storage::InputFile;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

/// Footers read at once while planning.
const FOOTER_CONCURRENCY: usize = 16;

/// The job cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Unreadable(#[from] ParquetIoError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("no input files")]
    NoInputs,
    #[error(
        "{file}: two columns are named `{column}`; a column must be unambiguous: rename one \
         (readers disagree on which one a name means)"
    )]
    DuplicateColumn { file: String, column: String },
    #[error(
        "{file}: its columns differ from those of {first} ({detail}); every file of a dataset \
         must have the same columns"
    )]
    SchemaMismatch {
        file: String,
        first: String,
        detail: String,
    },
}

/// One input file as planned.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub file: InputFile,
    /// Rows in the file.
    pub rows: u64,
    /// `row_id` of the file's first row.
    pub first_row_id: u64,
    /// Uncompressed bytes per row, an estimate for memory budgets.
    pub bytes_per_row: f64,
    /// The file's shards: `first_shard..first_shard + shards` of the plan.
    pub first_shard: u32,
    pub shards: u32,
}

/// The shards of a job and what was learnt planning them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    pub layout: DatasetLayout,
    pub shards: Vec<Shard>,
    pub input_rows: u64,
    /// The input's column names, in file order.
    pub input_columns: Vec<String>,
    /// Input columns that carry the name of a score column; `scores/` holds apscore's values.
    pub replaced_columns: Vec<String>,
}

impl Plan {
    /// The input files as the job's outputs name them.
    pub fn sources(&self) -> Vec<SourceFile> {
        self.files
            .iter()
            .map(|f| SourceFile {
                path: f.file.display.clone(),
                rows: f.rows,
                first_row_id: f.first_row_id,
                size: f.file.size,
                version: f.file.version.clone(),
                first_shard: f.first_shard,
                shards: f.shards,
            })
            .collect()
    }
}

/// An input file of a job as its outputs name it: the `source_file` of its rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub rows: u64,
    /// `row_id` of the file's first row.
    pub first_row_id: u64,
    /// Size in bytes and version (ETag, else modification time) when the job read it: a later
    /// job reuses this file's scores only if both are unchanged (incremental runs).
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub version: Option<String>,
    /// The file's shards, `first_shard..first_shard + shards`: its `scores/` parts.
    #[serde(default)]
    pub first_shard: u32,
    #[serde(default)]
    pub shards: u32,
}

/// The input file and position-in-file of a global `row_id` (`sources` in row order).
pub fn locate(sources: &[SourceFile], row_id: u64) -> (&SourceFile, u64) {
    let i = sources.partition_point(|f| f.first_row_id <= row_id).max(1) - 1;
    let file = &sources[i];
    (file, row_id - file.first_row_id)
}

/// Reads every footer, detects the layout on the first file and checks the others, and cuts
/// the row groups into shards of about `shard_rows` rows.
pub async fn plan_job(
    files: Vec<InputFile>,
    options: &LayoutOptions,
    shard_rows: u64,
) -> Result<Plan, PlanError> {
    if files.is_empty() {
        return Err(PlanError::NoInputs);
    }
    let footers: Vec<_> = futures::stream::iter(files.iter().map(parquet_io::read_footer))
        .buffered(FOOTER_CONCURRENCY)
        .try_collect()
        .await?;

    for (file, footer) in files.iter().zip(&footers) {
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = footer
            .schema()
            .fields()
            .iter()
            .find(|f| !seen.insert(f.name()))
        {
            return Err(PlanError::DuplicateColumn {
                file: file.display.clone(),
                column: twice.name().clone(),
            });
        }
    }
    let layout = DatasetLayout::detect(&files[0].display, footers[0].schema(), options)?;
    let first_schema = footers[0].schema();
    for (file, footer) in files.iter().zip(&footers).skip(1) {
        layout.check(&file.display, footer.schema())?;
        if let Some(detail) = schema_difference(first_schema, footer.schema()) {
            return Err(PlanError::SchemaMismatch {
                file: file.display.clone(),
                first: files[0].display.clone(),
                detail,
            });
        }
    }
    let input_columns = first_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut replaced_columns: Vec<String> = Vec::new();
    for footer in &footers {
        for field in footer.schema().fields() {
            let name = field.name();
            if apscore_core::columns::is_score_column(name) && !replaced_columns.contains(name) {
                replaced_columns.push(name.clone());
            }
        }
    }

    let shard_rows = shard_rows.max(1);
    let mut planned = Vec::with_capacity(files.len());
    let mut shards = Vec::new();
    let mut next_row_id = 0u64;
    for (file_index, (file, footer)) in files.into_iter().zip(&footers).enumerate() {
        let first_row_id = next_row_id;
        let first_shard = shards.len() as u32;
        let mut group_start = 0usize;
        let mut shard_first_row = 0u64;
        let mut shard_rows_so_far = 0u64;
        let groups = footer.row_group_rows();
        for (g, rows) in groups.iter().enumerate() {
            shard_rows_so_far += rows;
            let last_group = g + 1 == groups.len();
            if shard_rows_so_far >= shard_rows || last_group {
                if shard_rows_so_far > 0 {
                    shards.push(Shard {
                        index: shards.len() as u32,
                        file_index: file_index as u32,
                        row_groups: group_start..g + 1,
                        first_row_id: first_row_id + shard_first_row,
                        first_source_row: shard_first_row,
                        rows: shard_rows_so_far,
                    });
                }
                group_start = g + 1;
                shard_first_row += shard_rows_so_far;
                shard_rows_so_far = 0;
            }
        }
        let rows: u64 = groups.iter().sum();
        next_row_id += rows;
        planned.push(PlannedFile {
            file,
            rows,
            first_row_id,
            bytes_per_row: footer.bytes_per_row(),
            first_shard,
            shards: shards.len() as u32 - first_shard,
        });
    }
    Ok(Plan {
        files: planned,
        layout,
        shards,
        input_rows: next_row_id,
        input_columns,
        replaced_columns,
    })
}

/// How `other`'s columns differ from `first`'s (names, order and types), if they do.
fn schema_difference(
    first: &arrow::datatypes::Schema,
    other: &arrow::datatypes::Schema,
) -> Option<String> {
    let names = |s: &arrow::datatypes::Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(first) != names(other) {
        return Some(format!("columns {:?} vs {:?}", names(other), names(first)));
    }
    first
        .fields()
        .iter()
        .zip(other.fields())
        .find(|(a, b)| a.data_type() != b.data_type())
        .map(|(a, b)| {
            format!(
                "`{}` is {} here, {} there",
                a.name(),
                b.data_type(),
                a.data_type()
            )
        })
}
