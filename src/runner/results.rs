//! The experiment's results table: one row per variant — its swept values, status, run
//! directory and every number its stages summarised (`<stage>_summary.json` in the run
//! directory, as `<stage>.<field>` columns) — so a sweep over `cam.threshold` lands in one
//! table. Written as `<experiment>/results.{parquet,csv}` after every run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::Manifest;
use crate::error::Result;
use crate::table::{self, TableBuilder};

use super::Report;

/// Build and write the results table of a finished run; returns the number of rows.
pub fn write(m: &Manifest, report: &Report, exp_dir: &Path) -> Result<usize> {
    let swept: Vec<String> = m
        .variants
        .first()
        .map(|v| v.assignments.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut numbers: Vec<BTreeMap<String, f64>> = Vec::new();
    let mut columns = BTreeSet::new();
    for v in &report.variants {
        let mut row = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&v.run_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stage) = name.strip_suffix("_summary.json") else {
                    continue;
                };
                let Ok(bytes) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(&bytes) else {
                    continue;
                };
                for (k, val) in o {
                    // Flags (e.g. `segment.collapsed`) as 1 / 0.
                    let x = val
                        .as_f64()
                        .or_else(|| val.as_bool().map(|b| f64::from(u8::from(b))));
                    let col = format!("{stage}.{k}");
                    // A stage that records one of its settings (`cam.tta`) under the swept
                    // key's own name: the swept column already holds it.
                    if swept.contains(&col) {
                        continue;
                    }
                    if let Some(x) = x {
                        columns.insert(col.clone());
                        row.insert(col, x);
                    }
                }
            }
        }
        numbers.push(row);
    }
    let mut b = TableBuilder::new()
        .str(
            "variant",
            report.variants.iter().map(|v| v.id.clone()).collect(),
        )
        .str(
            "hash",
            report.variants.iter().map(|v| v.hash.clone()).collect(),
        );
    for key in &swept {
        let vals = report
            .variants
            .iter()
            .map(|rv| {
                m.variants
                    .iter()
                    .find(|v| v.id == rv.id)
                    .and_then(|v| v.assignments.iter().find(|(k, _)| k == key))
                    .map(|(_, val)| match val {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            })
            .collect();
        b = b.str(key, vals);
    }
    b = b.str(
        "status",
        report
            .variants
            .iter()
            .map(|v| if v.error.is_some() { "failed" } else { "ok" }.to_string())
            .collect(),
    );
    for c in &columns {
        b = b.f64(
            c,
            numbers
                .iter()
                .map(|r| r.get(c).copied().unwrap_or(f64::NAN))
                .collect(),
        );
    }
    let mut df = b
        .str(
            "run_dir",
            report
                .variants
                .iter()
                .map(|v| v.run_dir.display().to_string())
                .collect(),
        )
        .build()?;
    table::write(&mut df, exp_dir, "results")?;
    Ok(report.variants.len())
}
