//! SQL over the curated container, for data scientists (DataFusion locally;
//! Synapse serverless plays this part in Azure).
//!
//! Every source directory under the curated root becomes one table (named
//! after the source, lowercased, with characters other than `[a-z0-9_]`
//! replaced by `_`): a DataFusion `ListingTable` over its `*.parquet` files
//! with the Hive partition columns `date` and `hour` (both `Utf8`). The
//! table's schema is the union of its files' schemas under the curated
//! format's widening rules ([`merge_schemas`]), or the schema registry's
//! schema when the caller supplies one; files written before a field was
//! added or widened are read through it (missing columns read as null,
//! `Int64` is cast to `Float64`, a top-level object or array column widened
//! to `Utf8` reads as JSON text).
//!
//! [`format_batches`] renders results as a text table, CSV (nested values as
//! JSON text) or a JSON array. [`curated`] is `hubflow query`: the same
//! over the curated container a configuration names, with the schema
//! registry's types (mirrored locally first when it is on Azure).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::prelude::SessionContext;
pub use hubflow_actors::formats::curated::PARTITION_COLUMNS;
use hubflow_actors::formats::curated::merge_schemas;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::config::CuratedLocation;
use tracing::{debug, warn};

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The curated directory is missing, unreadable or holds no Parquet files.
    #[error("no curated data in {}: {reason}", dir.display())]
    NoData { dir: PathBuf, reason: String },
    /// Two source directories map to the same table name.
    #[error("sources {first:?} and {second:?} both map to table name {table:?}")]
    TableNameClash {
        table: String,
        first: String,
        second: String,
    },
    /// Listing the directory or reading a Parquet footer failed.
    #[error("reading curated files: {0:#}")]
    Read(anyhow::Error),
    /// Planning or running the SQL failed (syntax, unknown table or column, ...).
    #[error("sql: {0}")]
    Sql(#[from] DataFusionError),
    /// Rendering the results failed.
    #[error("formatting results: {0}")]
    Format(#[from] ArrowError),
}

/// How [`format_batches`] renders results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An ASCII table, for terminals.
    #[default]
    Table,
    /// CSV with a header row; nested values are JSON text.
    Csv,
    /// One JSON array of row objects, nulls included.
    Json,
}

/// Runs `sql` over the curated container at `curated_root`, inferring each
/// table's schema from its files.
pub async fn query_dir(curated_root: &Path, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    query_dir_with_schemas(curated_root, sql, &BTreeMap::new()).await
}

/// Runs `sql` over the curated container at `curated_root`. A source found in
/// `schemas` (the schema registry, keyed by source name) uses that schema as
/// is (metadata columns included or not); other sources are inferred.
pub async fn query_dir_with_schemas(
    curated_root: &Path,
    sql: &str,
    schemas: &BTreeMap<String, SchemaRef>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = curated_context(curated_root, schemas).await?;
    let df = ctx.sql(sql).await?;
    Ok(df.collect().await?)
}

/// A DataFusion session with one table per source under `curated_root`
/// registered (see the module docs). Useful for running several queries.
pub async fn curated_context(
    curated_root: &Path,
    schemas: &BTreeMap<String, SchemaRef>,
) -> Result<SessionContext, QueryError> {
    let ctx = SessionContext::new();
    for (name, provider) in table_providers(curated_root, schemas).await? {
        ctx.register_table(name.as_str(), provider)?;
    }
    Ok(ctx)
}

/// One table per source under `curated_root`, by table name (see the
/// module docs).
async fn table_providers(
    curated_root: &Path,
    schemas: &BTreeMap<String, SchemaRef>,
) -> Result<Vec<(String, Arc<dyn TableProvider>)>, QueryError> {
    let root = curated_root.to_path_buf();
    let known: BTreeMap<String, SchemaRef> = schemas.clone();
    let tables = tokio::task::spawn_blocking(move || discover(&root, &known))
        .await
        .map_err(|e| QueryError::Read(anyhow::anyhow!("schema discovery task failed: {e}")))??;

    let mut providers: Vec<(String, Arc<dyn TableProvider>)> = Vec::new();
    for table in tables {
        let url = url::Url::from_directory_path(&table.dir)
            .map_err(|()| {
                QueryError::Read(anyhow::anyhow!(
                    "{} is not an absolute directory path",
                    table.dir.display()
                ))
            })
            .and_then(|url| Ok(ListingTableUrl::try_new(url, None)?))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                PARTITION_COLUMNS
                    .iter()
                    .map(|c| (c.to_string(), DataType::Utf8))
                    .collect(),
            );
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(table.schema.clone())
            .with_expr_adapter_factory(Arc::new(JsonTextAdapterFactory));
        let provider = ListingTable::try_new(config)?;
        debug!(
            source = %table.source,
            table = %table.name,
            columns = table.schema.fields().len(),
            "curated table"
        );
        providers.push((table.name, Arc::new(provider)));
    }
    Ok(providers)
}

/// Adapts each file to the table schema like DataFusion's default adapter
/// (casts, missing columns as null), and also reads a top-level object or
/// array column as JSON text where the table has `Utf8`: the curated format
/// widens a field to text when a later batch mixes it with scalars, and the
/// files written before still hold it nested.
#[derive(Debug)]
struct JsonTextAdapterFactory;

impl PhysicalExprAdapterFactory for JsonTextAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> datafusion::common::Result<Arc<dyn PhysicalExprAdapter>> {
        let mut as_text = HashSet::new();
        let fields: Vec<Arc<Field>> = logical_file_schema
            .fields()
            .iter()
            .map(
                |field| match physical_file_schema.field_with_name(field.name()) {
                    Ok(physical)
                        if matches!(field.data_type(), DataType::Utf8 | DataType::Utf8View)
                            && is_nested(physical.data_type()) =>
                    {
                        as_text.insert(field.name().clone());
                        Arc::new(physical.clone())
                    }
                    _ => field.clone(),
                },
            )
            .collect();
        // The default adapter sees those columns at their file type, so it
        // adds no (impossible) cast; `JsonTextExpr` does the conversion.
        let logical = Arc::new(Schema::new_with_metadata(
            fields,
            logical_file_schema.metadata().clone(),
        ));
        let inner = DefaultPhysicalExprAdapterFactory.create(logical, physical_file_schema)?;
        Ok(Arc::new(JsonTextAdapter { as_text, inner }))
    }
}

#[derive(Debug)]
struct JsonTextAdapter {
    as_text: HashSet<String>,
    inner: Arc<dyn PhysicalExprAdapter>,
}

impl PhysicalExprAdapter for JsonTextAdapter {
    fn rewrite(
        &self,
        expr: Arc<dyn PhysicalExpr>,
    ) -> datafusion::common::Result<Arc<dyn PhysicalExpr>> {
        let expr = if self.as_text.is_empty() {
            expr
        } else {
            expr.transform_up(|e| {
                if let Some(column) = e.downcast_ref::<Column>()
                    && self.as_text.contains(column.name())
                {
                    let wrapped: Arc<dyn PhysicalExpr> = Arc::new(JsonTextExpr { child: e });
                    return Ok(Transformed::yes(wrapped));
                }
                Ok(Transformed::no(e))
            })
            .data()?
        };
        self.inner.rewrite(expr)
    }
}

/// Evaluates its child (a nested column) and renders each value as JSON text.
#[derive(Debug, Eq)]
struct JsonTextExpr {
    child: Arc<dyn PhysicalExpr>,
}

// Written by hand: deriving them for a `dyn` field trips rust-lang/rust#78808.
impl PartialEq for JsonTextExpr {
    fn eq(&self, other: &Self) -> bool {
        self.child.eq(&other.child)
    }
}

impl std::hash::Hash for JsonTextExpr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.child.hash(state);
    }
}

impl std::fmt::Display for JsonTextExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "json_text({})", self.child)
    }
}

impl PhysicalExpr for JsonTextExpr {
    fn data_type(&self, _input_schema: &Schema) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn nullable(&self, _input_schema: &Schema) -> datafusion::common::Result<bool> {
        Ok(true)
    }

    fn evaluate(&self, batch: &RecordBatch) -> datafusion::common::Result<ColumnarValue> {
        let values = self.child.evaluate(batch)?.into_array(batch.num_rows())?;
        let field = Field::new("v", values.data_type().clone(), true);
        Ok(ColumnarValue::Array(json_text(&field, &values)?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.child]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> datafusion::common::Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([child]) => Ok(Arc::new(JsonTextExpr { child })),
            Err(children) => Err(DataFusionError::Internal(format!(
                "json_text takes one child, got {}",
                children.len()
            ))),
        }
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "json_text(")?;
        self.child.fmt_sql(f)?;
        write!(f, ")")
    }
}

/// The table name for a source: lowercased, `[a-z0-9_]` kept, anything else
/// replaced by `_`, prefixed with `_` if it would start with a digit.
pub fn table_name(source: &str) -> String {
    let mut name: String = source
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

struct TableSpec {
    source: String,
    name: String,
    dir: PathBuf,
    schema: SchemaRef,
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Finds the source directories and their schemas (blocking IO).
fn discover(
    root: &Path,
    known: &BTreeMap<String, SchemaRef>,
) -> Result<Vec<TableSpec>, QueryError> {
    let no_data = |reason: String| QueryError::NoData {
        dir: root.to_path_buf(),
        reason,
    };
    let root = match std::path::absolute(root) {
        Ok(root) => root,
        Err(e) => return Err(no_data(format!("cannot resolve the path: {e}"))),
    };
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(no_data("the directory does not exist".into()));
        }
        Err(e) => return Err(no_data(format!("cannot list the directory: {e}"))),
    };
    let mut sources = Vec::new();
    for entry in entries {
        let entry = entry
            .with_context(|| format!("listing {}", root.display()))
            .map_err(QueryError::Read)?;
        let Ok(source) = entry.file_name().into_string() else {
            warn!(dir = %root.display(), "skipping a curated directory whose name is not utf-8");
            continue;
        };
        let is_dir = entry
            .file_type()
            .with_context(|| format!("inspecting {}", entry.path().display()))
            .map_err(QueryError::Read)?
            .is_dir();
        if is_dir && !is_hidden(&source) {
            sources.push((source, entry.path()));
        }
    }
    sources.sort();

    let mut tables: Vec<TableSpec> = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (source, dir) in sources {
        let schema = match known.get(&source) {
            Some(schema) => Some(table_schema(schema)),
            None => infer_schema(&dir).map_err(QueryError::Read)?,
        };
        let Some(schema) = schema else {
            debug!(source = %source, "no parquet files, no table");
            continue;
        };
        let name = table_name(&source);
        if let Some(first) = names.insert(name.clone(), source.clone()) {
            return Err(QueryError::TableNameClash {
                table: name,
                first,
                second: source,
            });
        }
        tables.push(TableSpec {
            source,
            name,
            dir,
            schema,
        });
    }
    if tables.is_empty() {
        return Err(no_data(
            "no source directory holds parquet files".to_string(),
        ));
    }
    Ok(tables)
}

/// A registry schema minus any partition columns (they come from the paths).
fn table_schema(schema: &SchemaRef) -> SchemaRef {
    if schema
        .fields()
        .iter()
        .any(|f| PARTITION_COLUMNS.contains(&f.name().as_str()))
    {
        let fields: Vec<Arc<Field>> = schema
            .fields()
            .iter()
            .filter(|f| !PARTITION_COLUMNS.contains(&f.name().as_str()))
            .cloned()
            .collect();
        Arc::new(Schema::new(fields))
    } else {
        schema.clone()
    }
}

/// Unions the schemas of every Parquet file under `dir` (in path order), or
/// `None` when there is none.
fn infer_schema(dir: &Path) -> anyhow::Result<Option<SchemaRef>> {
    let mut files = Vec::new();
    collect_parquet_files(dir, &mut files)?;
    files.sort();
    let mut merged: Option<Schema> = None;
    for path in &files {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = ArrowReaderMetadata::load(&file, Default::default())
            .with_context(|| format!("reading the parquet footer of {}", path.display()))?;
        let schema = meta.schema();
        merged = Some(match merged {
            None => schema.as_ref().clone(),
            Some(acc) => {
                let (next, conflicts) = merge_schemas(&acc, schema);
                for c in conflicts {
                    debug!(file = %path.display(), field = %c.field, from = %c.from, to = %c.to, "curated file schema widened");
                }
                next
            }
        });
    }
    Ok(merged.map(|s| table_schema(&Arc::new(s))))
}

fn collect_parquet_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_hidden(&name) {
            continue;
        }
        let file_type = entry
            .file_type()
            .with_context(|| format!("inspecting {}", entry.path().display()))?;
        if file_type.is_dir() {
            collect_parquet_files(&entry.path(), out)?;
        } else if name.ends_with(".parquet") {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Renders query results in the given format.
pub fn format_batches(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    let bytes = match format {
        OutputFormat::Table => {
            return Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string());
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for batch in batches {
                writer.write(&nested_as_json_text(batch)?)?;
            }
            writer.into_inner()
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writer.into_inner()
        }
    };
    String::from_utf8(bytes).map_err(|e| ArrowError::ExternalError(Box::new(e)).into())
}

pub(crate) fn is_nested(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Map(_, _)
            | DataType::Union(_, _)
    )
}

/// Replaces nested columns (which CSV cannot hold) by their JSON text.
fn nested_as_json_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_nested(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if is_nested(field.data_type()) {
            fields.push(Field::new(field.name(), DataType::Utf8, true));
            columns.push(json_text(field, column)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// One column's values as JSON text (null stays null).
pub(crate) fn json_text(field: &Field, column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let single = RecordBatch::try_new(
        Arc::new(Schema::new(vec![field.clone()])),
        vec![column.clone()],
    )?;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    writer.write(&single)?;
    writer.finish()?;
    let text = writer.into_inner();
    let mut out = StringBuilder::with_capacity(column.len(), text.len());
    for (row, line) in text.split(|b| *b == b'\n').take(column.len()).enumerate() {
        if column.is_null(row) {
            out.append_null();
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        match value.get(field.name()) {
            Some(v) => out.append_value(v.to_string()),
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}
/// `hubflow query`: SQL over the curated container at `location`, each
/// source's table
/// typed by its schema registry record (the union of every file's schema).
///
/// On the embedded store the files are read in place. With `[azure_blob]`
/// the curated container is mirrored first into
/// `<data_dir>/query-cache/<container>` (only new or rewritten files are
/// downloaded, see [`crate::curated_cache`]) and the registry is read from
/// Azure.
pub async fn curated(
    location: &CuratedLocation,
    sql: &str,
) -> anyhow::Result<Vec<arrow::record_batch::RecordBatch>> {
    let ctx = curated_session(location).await?;
    let df = ctx.sql(sql).await.map_err(QueryError::from)?;
    Ok(df.collect().await.map_err(QueryError::from)?)
}

/// Every curated table (one per source) and the schema a query sees, by
/// name (`\d` in the interactive `hubflow query`).
pub async fn curated_tables(
    location: &CuratedLocation,
) -> anyhow::Result<Vec<(String, SchemaRef)>> {
    let ctx = curated_session(location).await?;
    let mut tables = Vec::new();
    let mut names: Vec<String> = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default();
    names.sort();
    for name in names {
        let table = ctx.table_provider(name.as_str()).await?;
        tables.push((name, table.schema()));
    }
    Ok(tables)
}

/// The session [`curated`] queries in: the curated container (mirrored
/// first when remote) with each source's table typed by the registry.
pub async fn curated_session(location: &CuratedLocation) -> anyhow::Result<SessionContext> {
    let (curated, schemas) = curated_inputs(location).await?;
    Ok(curated_context(&curated, &schemas).await?)
}

/// Every curated table of `location` (mirrored first when remote) with the
/// registry's types, by table name; none while nothing is curated. The SQL
/// server (`crate::sql`) registers these in its own session.
pub async fn curated_providers(
    location: &CuratedLocation,
) -> anyhow::Result<Vec<(String, Arc<dyn TableProvider>)>> {
    let (curated, schemas) = curated_inputs(location).await?;
    match table_providers(&curated, &schemas).await {
        Ok(providers) => Ok(providers),
        Err(QueryError::NoData { .. }) => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}

/// The local curated root (the mirror when remote) and the registry's
/// schema per source.
async fn curated_inputs(
    location: &CuratedLocation,
) -> anyhow::Result<(std::path::PathBuf, BTreeMap<String, SchemaRef>)> {
    let container = &location.storage.curated_container;
    let (store, curated): (
        Arc<dyn hubflow_actors::ports::BlobStore>,
        std::path::PathBuf,
    ) = if let Some(section) = &location.azure_blob {
        let store = crate::azure::AzureBlobStore::new(section)?;
        let mirror = location.data_dir.join("query-cache").join(container);
        crate::curated_cache::sync(&store, container, &mirror).await?;
        (Arc::new(store), mirror)
    } else {
        let store = crate::embedded::FsBlobStore::new(location.data_dir.join("blobs"))?;
        let curated = store.container_path(container);
        (Arc::new(store), curated)
    };
    let state =
        hubflow_actors::ports::StateStore::new(store, location.storage.state_container.clone());
    let mut schemas = std::collections::BTreeMap::new();
    let names = match state.list_names("schemas/").await {
        Ok(names) => names,
        // No state container yet: nothing was curated; the query layer says so.
        Err(hubflow_actors::ports::StateError::Blob(
            hubflow_actors::ports::BlobError::ContainerNotFound { .. },
        )) => Vec::new(),
        Err(error) => {
            warn!(%error, "cannot read the schema registry; inferring schemas");
            Vec::new()
        }
    };
    for name in names {
        let Some(record) = state
            .load::<hubflow_actors::transformer::SchemaRecord>(&name)
            .await?
        else {
            continue;
        };
        let schema =
            hubflow_actors::formats::curated::schema_from_json(record.value.table_schema())
                .with_context(|| format!("schema registry record {name}"))?;
        let source = name.trim_start_matches("schemas/").to_string();
        schemas.insert(source, Arc::new(schema));
    }
    Ok((curated, schemas))
}

/// Results as one Parquet file (zstd), to `out`: `hubflow query --format
/// parquet`.
pub fn write_parquet(
    batches: &[RecordBatch],
    out: impl std::io::Write + Send,
) -> anyhow::Result<()> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    let schema = batches
        .first()
        .map(RecordBatch::schema)
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(out, schema, Some(props))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(())
}
