//! What a PromQL expression selects, read with an independent parser (not Prometheus
//! itself): for checking alerts and dashboards against the series the controller exports.

use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

/// The vector selectors (metric name and matchers) of a PromQL expression.
struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = std::convert::Infallible;
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        match expr {
            Expr::VectorSelector(vs) => self.0.push(vs.clone()),
            Expr::MatrixSelector(ms) => self.0.push(ms.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// Every vector selector in `ast`, matrix selectors' included.
pub fn selectors(ast: &Expr) -> Vec<VectorSelector> {
    let mut selectors = Selectors(Vec::new());
    let Ok(_) = walk_expr(&mut selectors, ast);
    selectors.0
}
