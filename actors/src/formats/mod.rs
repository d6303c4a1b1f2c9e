//! Storage formats: raw batches as landed, curated Parquet as queried.

pub mod curated;
pub mod raw;
