//! Nested columns as JSON text. The Postgres protocol has arrays of plain
//! values, but a struct would go out as an anonymous composite
//! (`(usr-0011,"Luca Tanaka",NG)`, its field names lost) and a map or a
//! list of lists not at all; clients read JSON. Each table with such a
//! column is registered as a view over the curated table that turns those
//! columns into JSON text (`{"id":"usr-0011","name":"Luca Tanaka",…}`,
//! the same text `hubflow query --format csv` prints) under their own
//! names; every other column, and every filter on it, goes to the curated
//! files unchanged (the view is inlined into each query's plan).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, Result};
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, TableProviderFilterPushDown, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;

/// Whether clients get `dt` as JSON text: structs, maps, unions, and lists
/// of anything nested (lists of plain values stay Postgres arrays).
pub fn as_json(dt: &DataType) -> bool {
    match dt {
        DataType::Struct(_) | DataType::Map(_, _) | DataType::Union(_, _) => true,
        DataType::List(item)
        | DataType::LargeList(item)
        | DataType::ListView(item)
        | DataType::LargeListView(item)
        | DataType::FixedSizeList(item, _) => crate::query::is_nested(item.data_type()),
        _ => false,
    }
}

/// `hubflow_to_json(value)`: a nested value as JSON text (null stays null).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToJson {
    signature: Signature,
}

impl Default for ToJson {
    fn default() -> Self {
        ToJson {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        "hubflow_to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [value] = args.args.as_slice() else {
            return datafusion::common::exec_err!("hubflow_to_json takes one argument");
        };
        let column = value.to_array(rows)?;
        let field = Field::new("value", column.data_type().clone(), true);
        Ok(ColumnarValue::Array(crate::query::json_text(
            &field, &column,
        )?))
    }
}

/// `provider` as clients see it: itself when it has no nested column, else
/// a view with those columns as JSON text.
pub fn present(name: &str, provider: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    let schema = provider.schema();
    if !schema.fields().iter().any(|f| as_json(f.data_type())) {
        return Ok(provider);
    }
    let to_json = ScalarUDF::from(ToJson::default());
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|field| {
            let column = Expr::Column(Column::new_unqualified(field.name()));
            if as_json(field.data_type()) {
                to_json.call(vec![column]).alias(field.name())
            } else {
                column
            }
        })
        .collect();
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?
        .project(columns)?
        .build()?;
    Ok(Arc::new(JsonColumns(ViewTable::new(plan, None))))
}

/// The view, listed as a table (psql's `\dt` shows only tables, and to the
/// client it is one).
#[derive(Debug)]
struct JsonColumns(ViewTable);

#[async_trait]
impl TableProvider for JsonColumns {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray, StructArray};
    use arrow::datatypes::{Fields, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn structs_read_as_json_text_and_filters_still_apply() {
        let user = StructArray::from(vec![
            (
                Arc::new(Field::new("name", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("Luca \"L\" Tanaka"), None])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("age", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(41), Some(7)])) as ArrayRef,
            ),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("user", user.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Float64Array::from(vec![1.5, 2.5])), Arc::new(user)],
        )
        .unwrap();
        let table = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let shown = present("t", table).unwrap();
        assert_eq!(shown.table_type(), TableType::Base);
        assert_eq!(
            shown.schema().field_with_name("user").unwrap().data_type(),
            &DataType::Utf8
        );
        let ctx = SessionContext::new();
        ctx.register_table("t", shown).unwrap();
        let rows = ctx
            .sql("SELECT \"user\" FROM t WHERE amount > 2 ORDER BY amount")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(text.len(), 1);
        let value: serde_json::Value = serde_json::from_str(text.value(0)).unwrap();
        assert_eq!(value, serde_json::json!({"name": null, "age": 7}));
        let first = ctx
            .sql("SELECT \"user\" FROM t WHERE amount < 2")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = first[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(text.value(0)).unwrap();
        assert_eq!(value["name"], "Luca \"L\" Tanaka");
    }

    #[test]
    fn lists_of_plain_values_stay_arrays() {
        let item = Arc::new(Field::new("item", DataType::Utf8, true));
        assert!(!as_json(&DataType::List(Arc::clone(&item))));
        let nested = Arc::new(Field::new("item", DataType::Struct(Fields::empty()), true));
        assert!(as_json(&DataType::List(nested)));
        assert!(as_json(&DataType::Struct(Fields::empty())));
        assert!(!as_json(&DataType::Utf8));
    }
}
