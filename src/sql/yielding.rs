//! A physical optimizer rule that lets a statement be stopped: every edge of
//! the plan passes through DataFusion's [`CooperativeExec`], so each batch
//! handed from one operator to the next spends tokio's task budget.
//!
//! DataFusion puts `CooperativeExec` only above the scans. An operator that
//! turns few input batches into very many (a join without equal keys)
//! never reaches a scan again, and the operator draining it (an aggregate)
//! then loops without ever returning `Pending`: its task cannot be aborted,
//! and a statement killed by its time limit or a cancel request would keep
//! its threads until it finished. With every edge cooperative the task
//! yields after 128 batches, and dropping the statement's stream (see
//! `super::guard`) ends its tasks there.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};

/// Wraps every input of every operator in a [`CooperativeExec`] (once).
#[derive(Debug, Default)]
pub struct YieldBetweenOperators;

fn cooperative(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<CooperativeExec>()
}

impl PhysicalOptimizerRule for YieldBetweenOperators {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if cooperative(&node) || node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> = node
                .children()
                .into_iter()
                .map(|child| {
                    if cooperative(child) {
                        Arc::clone(child)
                    } else {
                        Arc::new(CooperativeExec::new(Arc::clone(child))) as _
                    }
                })
                .collect();
            // The wrappers keep their input's properties.
            let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
            Ok(Transformed::yes(node.replace_children(children, options)?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "hubflow_yield_between_operators"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn every_operator_input_is_cooperative_once() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT count(*) FROM (VALUES (1), (2)) a(x), (VALUES (3)) b(y) WHERE a.x + b.y > 2")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let once = YieldBetweenOperators
            .optimize(plan, &ConfigOptions::default())
            .unwrap();
        let twice = YieldBetweenOperators
            .optimize(Arc::clone(&once), &ConfigOptions::default())
            .unwrap();
        fn check(plan: &Arc<dyn ExecutionPlan>, parent_cooperative: bool) -> usize {
            let here = cooperative(plan);
            // Never two in a row, and every non-root operator's parent is one.
            assert!(!(here && parent_cooperative));
            let mut wrapped = usize::from(here);
            for child in plan.children() {
                if !here {
                    assert!(cooperative(child), "an input not wrapped: {}", child.name());
                }
                wrapped += check(child, here);
            }
            wrapped
        }
        let wrapped = check(&twice, false);
        assert!(wrapped >= 3, "{wrapped}");
        assert_eq!(
            datafusion::physical_plan::displayable(once.as_ref())
                .indent(true)
                .to_string(),
            datafusion::physical_plan::displayable(twice.as_ref())
                .indent(true)
                .to_string()
        );
        let rows = datafusion::physical_plan::collect(twice, ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(
            rows[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0),
            2
        );
    }
}
