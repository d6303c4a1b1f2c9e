//! A transform tried without a swap: the SQL run on the newest raw blob,
//! with the first rows of its input (the `batch` table) and of its output,
//! so an operator sees what a version would write before proposing it
//! (`POST /transform/dry-run`, the console's "Dry run" button). Nothing is
//! written and nothing in the running pipeline changes.

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use super::transform::{DryRun, curate_on, keeps_metadata, newest_raw_blob};
use crate::pipeline::Pipeline;
use crate::transform::{SqlTransform, TransformError, TransformSpec};
use hubflow_actors::formats::curated::CuratedOutput;

/// The most rows a preview shows on each side.
pub const MAX_ROWS: usize = 100;

/// A dry run with rows.
#[derive(Debug)]
pub struct Preview {
    pub dry_run: DryRun,
    /// The first rows the SQL reads, as JSON objects.
    pub before: Vec<Map<String, Value>>,
    /// The first rows it produces.
    pub after: Vec<Map<String, Value>>,
}

/// Run `spec` on the newest raw blob and keep the first `rows` (at most
/// [`MAX_ROWS`]) before and after it. Refused like a swap would be: SQL that
/// does not parse or plan, a failure on the data, or output without the
/// metadata columns.
pub async fn preview(
    pipeline: &Pipeline,
    spec: &TransformSpec,
    rows: usize,
) -> Result<Preview, TransformError> {
    let transform = SqlTransform::build(spec)?;
    let rows = rows.min(MAX_ROWS);
    let Some(blob) = newest_raw_blob(pipeline).await? else {
        let dry_run = DryRun {
            raw_blob: None,
            rows_in: 0,
            rows_out: 0,
            columns: Vec::new(),
        };
        return Ok(Preview {
            dry_run,
            before: Vec::new(),
            after: Vec::new(),
        });
    };
    // Both sides carry the version's label, so the only differences shown
    // are what the SQL does.
    let input = curate_on(&blob, &spec.version, None).await?;
    let output = curate_on(&blob, &spec.version, transform).await?;
    let dry_run = output.summary();
    keeps_metadata(&dry_run, &spec.version)?;
    let unreadable = |message: String| TransformError::DryRun {
        version: spec.version.clone(),
        raw_blob: blob.raw_blob.clone(),
        message,
    };
    Ok(Preview {
        before: first_rows(&input.output, rows).map_err(unreadable)?,
        after: first_rows(&output.output, rows).map_err(unreadable)?,
        dry_run,
    })
}

/// The first `n` rows of a curated output's files (in file order), as JSON
/// objects (arrow's JSON writer: every column in every row, nulls as
/// `null`, binary as hex).
fn first_rows(output: &CuratedOutput, n: usize) -> Result<Vec<Map<String, Value>>, String> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut left = n;
    for file in &output.files {
        if left == 0 {
            break;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(file.data.clone())
            .and_then(|b| b.with_limit(left).with_batch_size(left.max(1)).build())
            .map_err(|e| format!("reading {}: {e}", file.path))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("reading {}: {e}", file.path))?;
            left = left.saturating_sub(batch.num_rows());
            batches.push(batch);
        }
    }
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for batch in &batches {
        writer
            .write(batch)
            .map_err(|e| format!("rows as JSON: {e}"))?;
    }
    writer.finish().map_err(|e| format!("rows as JSON: {e}"))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("rows as JSON: {e}"))
}
