//! Where curated files go and how their Parquet is written: the Hive path
//! of a (source, hour) group and the writer properties.
//!
//! Encodings are chosen per column, for the shapes curated data has:
//! dictionary encoding (the default) for the usual low-cardinality columns;
//! `DELTA_BINARY_PACKED` for integers and timestamps that only grow within
//! the file (hub sequence numbers, ingest times, source ids that increase),
//! where a dictionary would fall back to plain values; `DELTA_BYTE_ARRAY`
//! for the record id and hub offset texts, which share prefixes with their
//! neighbours.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{
    COL_HUB_OFFSET, COL_RECORD_ID, CurateError, CurateOptions, HOUR_MS, TRANSFORM_VERSION_KEY,
};

/// `<source>/date=YYYY-MM-DD/hour=HH/<stem>.parquet` for the hour bucket
/// (hours since the epoch) of the group.
pub(super) fn hour_path(source: &str, hour_bucket: i64, stem: &str) -> String {
    // The bucket comes from a validated enqueued time, so it is in range.
    let start = DateTime::from_timestamp_millis(hour_bucket * HOUR_MS).unwrap_or_default();
    format!(
        "{source}/date={:04}-{:02}-{:02}/hour={:02}/{stem}.parquet",
        start.year(),
        start.month(),
        start.day(),
        start.hour()
    )
}

pub(super) fn writer_properties(opts: &CurateOptions) -> Result<WriterProperties, CurateError> {
    let level = ZstdLevel::try_new(opts.zstd_level)
        .map_err(|e| CurateError::InvalidOptions(format!("zstd_level: {e}")))?;
    if opts.max_row_group_rows == 0 {
        return Err(CurateError::InvalidOptions(
            "max_row_group_rows must be > 0".into(),
        ));
    }
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(opts.max_row_group_rows))
        .build())
}

/// The properties with the transform version in the file's key-value metadata.
pub(super) fn with_version_metadata(props: WriterProperties, version: &str) -> WriterProperties {
    props
        .into_builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            TRANSFORM_VERSION_KEY.to_string(),
            version.to_string(),
        )]))
        .build()
}

/// `props` with each top-level column's encoding chosen for `batch`.
pub(super) fn tuned_for(props: &WriterProperties, batch: &RecordBatch) -> WriterProperties {
    let mut builder = props.clone().into_builder();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        let encoding = match field.data_type() {
            DataType::Utf8 if matches!(field.name().as_str(), COL_RECORD_ID | COL_HUB_OFFSET) => {
                Some(Encoding::DELTA_BYTE_ARRAY)
            }
            DataType::Int64 if grows(column.as_primitive::<Int64Type>()) => {
                Some(Encoding::DELTA_BINARY_PACKED)
            }
            DataType::Timestamp(_, _)
                if column
                    .as_primitive_opt::<TimestampMillisecondType>()
                    .is_some_and(grows) =>
            {
                Some(Encoding::DELTA_BINARY_PACKED)
            }
            _ => None,
        };
        if let Some(encoding) = encoding {
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, encoding);
        }
    }
    builder.build()
}

/// Whether the non-null values never decrease, over more than one distinct
/// value (a constant column is better as a dictionary).
fn grows<T>(array: &arrow::array::PrimitiveArray<T>) -> bool
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: PartialOrd,
{
    let mut previous: Option<T::Native> = None;
    let mut first: Option<T::Native> = None;
    for value in array.iter().flatten() {
        if previous.is_some_and(|p| value < p) {
            return false;
        }
        first.get_or_insert(value);
        previous = Some(value);
    }
    array.len() > 1 && first != previous
}

pub(super) fn write_parquet(
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<Bytes, CurateError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let props = tuned_for(props, batch);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}
