//! `rejected_rows.parquet`: the rows no shard could score, merged from the shards' own files
//! in input order, each with its `row_id`, `source_file`, `source_row` and `reason`.

use apscore_core::outputs::{REJECTED_FILE, rejected_schema};
use apscore_core::parquet_io::{ParquetSink, read_whole};
use apscore_core::shard::Shard;
use apscore_core::storage::Location;
use futures::TryStreamExt;

use crate::error::OutputError;

/// Merges the shards' rejected rows into `rejected_rows.parquet`, in input order; returns the
/// number of rows.
pub async fn write_rejected(
    output: &Location,
    shards: &[Shard],
    key_values: &[(String, String)],
) -> Result<u64, OutputError> {
    let path = output.path_of(REJECTED_FILE);
    let display = output.display_of(&path);
    let mut sink =
        ParquetSink::create(output.store(), path, display, rejected_schema(), key_values)?;
    for shard in shards {
        let part = output.input_file(&shard.rejected_part()).await?;
        let mut stream = read_whole(&part, None).await?;
        while let Some(batch) = stream.try_next().await? {
            sink.write(&batch).await?;
        }
    }
    Ok(sink.finish().await?)
}
