//! Tables: every tabular artifact is a polars `DataFrame` written as parquet (for programs)
//! and CSV (for people and spreadsheets), both atomically.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::util::fs::atomic_write_with;

pub mod schema;
pub use schema::{Source, Table};

/// Column-by-column construction of a `DataFrame`.
#[derive(Default)]
pub struct TableBuilder {
    cols: Vec<Column>,
}

impl TableBuilder {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a string column.
    pub fn str(mut self, name: &str, v: Vec<String>) -> Self {
        self.cols.push(Column::new(name.into(), v));
        self
    }
    /// Add an optional string column (null where absent).
    pub fn opt_str(mut self, name: &str, v: Vec<Option<String>>) -> Self {
        self.cols.push(Column::new(name.into(), v));
        self
    }
    /// Add an unsigned integer column.
    pub fn u32(mut self, name: &str, v: Vec<u32>) -> Self {
        self.cols.push(Column::new(name.into(), v));
        self
    }
    /// Add a float column.
    pub fn f64(mut self, name: &str, v: Vec<f64>) -> Self {
        self.cols.push(Column::new(name.into(), v));
        self
    }
    /// Add a boolean column.
    pub fn bool(mut self, name: &str, v: Vec<bool>) -> Self {
        self.cols.push(Column::new(name.into(), v));
        self
    }
    /// Build; fails if columns differ in length.
    pub fn build(self) -> Result<DataFrame> {
        Ok(DataFrame::new_infer_height(self.cols)?)
    }
}

/// Write `df` as `<dir>/<stem>.parquet` and `<dir>/<stem>.csv`.
pub fn write(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<()> {
    let pq = dir.join(format!("{stem}.parquet"));
    let mut err = None;
    atomic_write_with(&pq, |f| {
        ParquetWriter::new(f).finish(df).map(|_| ()).map_err(|e| {
            let m = e.to_string();
            err = Some(e);
            std::io::Error::other(m)
        })
    })?;
    if let Some(e) = err {
        return Err(Error::io(&pq, std::io::Error::other(e.to_string())));
    }
    let csv = dir.join(format!("{stem}.csv"));
    atomic_write_with(&csv, |f| {
        CsvWriter::new(f)
            .finish(df)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// Read a parquet table.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

/// Render rows as an aligned plain-text table for the terminal.
pub fn text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    out.push_str(&line(
        w.iter()
            .map(|n| "-".repeat(*n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        // A file where the folder should be: the write cannot happen; the error says where.
        let blocker = d.path().join("out");
        std::fs::write(&blocker, b"x").unwrap();
        let mut df = TableBuilder::new().f64("a", vec![1.0]).build().unwrap();
        let e = write(&mut df, &blocker, "t").unwrap_err().to_string();
        assert!(e.contains(&blocker.display().to_string()), "{e}");
        // A truncated parquet file: the reader's complaint comes with the path.
        let p = d.path().join("cut.parquet");
        std::fs::write(&p, b"PAR1 truncated").unwrap();
        let e = read_parquet(&p).unwrap_err().to_string();
        assert!(e.contains("cut.parquet"), "{e}");
    }

    #[test]
    fn roundtrip_parquet_and_csv() {
        let d = tempfile::tempdir().unwrap();
        let mut df = TableBuilder::new()
            .str("id", vec!["a".into(), "b".into()])
            .u32("n", vec![1, 2])
            .f64("x", vec![0.5, 1.5])
            .build()
            .unwrap();
        write(&mut df, d.path(), "t").unwrap();
        let back = read_parquet(&d.path().join("t.parquet")).unwrap();
        assert!(back.equals(&df));
        let csv = std::fs::read_to_string(d.path().join("t.csv")).unwrap();
        assert_eq!(csv, "id,n,x\na,1,0.5\nb,2,1.5\n");
    }

    #[test]
    fn text_table_aligns() {
        let t = text(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz  1\n");
    }
}
