//! `wsss compare`: the summaries of one or more experiments joined into one table — one row
//! per variant, parameters as columns, key metrics as columns — sortable, for the terminal.

use super::data::{varying, Experiment};
use super::html::num;
use super::tables::{present_metric_columns, summary_row, SummaryRow};
use crate::error::{Error, Result};

/// How to show the comparison.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Show every config key that differs between the rows (also across experiments), instead
    /// of only each experiment's swept keys.
    pub only_changed: bool,
    /// Sort by this column (metrics: best first).
    pub sort: Option<String>,
}

/// The joined table: headers and rows of cells.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Column names.
    pub headers: Vec<String>,
    /// Cells, formatted.
    pub rows: Vec<Vec<String>>,
}

/// Join the experiments' summaries.
pub fn compare(exps: &[Experiment], opts: &CompareOptions) -> Result<Comparison> {
    let mut rows: Vec<SummaryRow> = exps
        .iter()
        .flat_map(|e| e.variants.iter().map(move |r| summary_row(&e.name, r)))
        .collect();
    let params: Vec<String> = if opts.only_changed {
        varying(rows.iter().map(|r| &r.config))
    } else {
        let mut p: Vec<String> = Vec::new();
        for e in exps {
            for k in e.varying_keys() {
                if !p.contains(&k) {
                    p.push(k);
                }
            }
        }
        p
    };
    let metrics = present_metric_columns(&rows);
    if let Some(col) = &opts.sort {
        if metrics.contains(col) {
            let v = |r: &SummaryRow| r.metrics.get(col).copied().unwrap_or(f64::NAN);
            // best first; missing values last
            rows.sort_by(|a, b| {
                let (x, y) = (v(a), v(b));
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => y.total_cmp(&x),
                }
            });
        } else if params.contains(col) {
            // Parameters sort as numbers when they are numbers (1, 2, 10 — not 1, 10, 2),
            // as text otherwise.
            rows.sort_by(|a, b| param_order(a.config.get(col), b.config.get(col)));
        } else {
            let mut allowed: Vec<String> = metrics.clone();
            allowed.extend(params.iter().cloned());
            return Err(Error::Usage(format!(
                "--sort {col}: not a column of this comparison (columns: {})",
                allowed.join(", ")
            )));
        }
    }
    let multi = exps.len() > 1;
    let mut headers: Vec<String> = Vec::new();
    if multi {
        headers.push("experiment".into());
    }
    headers.push("variant".into());
    headers.extend(params.iter().cloned());
    headers.extend(metrics.iter().cloned());
    headers.push("status".into());
    let cells = rows
        .iter()
        .map(|r| {
            let mut c = Vec::new();
            if multi {
                c.push(r.experiment.clone());
            }
            c.push(r.variant.clone());
            c.extend(
                params
                    .iter()
                    .map(|p| r.config.get(p).cloned().unwrap_or_default()),
            );
            c.extend(
                metrics
                    .iter()
                    .map(|m| num(r.metrics.get(m).copied().unwrap_or(f64::NAN))),
            );
            c.push(r.status.clone());
            c
        })
        .collect();
    Ok(Comparison {
        headers,
        rows: cells,
    })
}

/// Order of two parameter values: numbers by value (before text), text by text, missing last.
fn param_order(a: Option<&String>, b: Option<&String>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let num = |s: &String| s.trim().parse::<f64>().ok().filter(|x| !x.is_nan());
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => match (num(x), num(y)) {
            (Some(p), Some(q)) => p.total_cmp(&q),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => x.cmp(y),
        },
    }
}

#[cfg(test)]
mod order_tests {
    use super::param_order;

    #[test]
    fn numbers_sort_by_value() {
        let mut v: Vec<Option<String>> = ["10", "2", "1", "b", "0.5", "a"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .collect();
        v.sort_by(|a, b| param_order(a.as_ref(), b.as_ref()));
        let got: Vec<&str> = v.iter().map(|x| x.as_deref().unwrap_or("-")).collect();
        assert_eq!(got, ["0.5", "1", "2", "10", "a", "b", "-"]);
    }
}
