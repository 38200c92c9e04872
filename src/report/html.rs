//! The report page (`index.html`, self-contained: styles, script and images inline, nothing
//! fetched) and its Markdown twin (`summary.md`, images linked) for a README or lab notebook.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use super::data::Experiment;
use super::figures::Figure;
use super::tables::{
    collapsed_variants, present_metric_columns, Miss, PatientSegRow, SeedGroup, SummaryRow,
    KEY_METRICS, TEST_PREFIX,
};
use crate::error::{Error, Result};

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A number as the tables show it (3 decimals, `–` for missing).
pub fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

fn img_tag(path: &Path, alt: &str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        esc(alt),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// A gallery image written by the report.
pub struct GalleryRef {
    /// File name under `galleries/`.
    pub file: String,
    /// Heading.
    pub title: String,
    /// What it shows.
    pub caption: String,
}

/// Everything the page shows.
pub struct Page<'a> {
    /// The experiment.
    pub exp: &'a Experiment,
    /// Summary rows.
    pub rows: &'a [SummaryRow],
    /// Parameter columns to show (those that differ between variants).
    pub params: &'a [String],
    /// Variants grouped over seeds.
    pub seeds: &'a [SeedGroup],
    /// Figures written.
    pub figures: &'a [Figure],
    /// Galleries written.
    pub galleries: &'a [GalleryRef],
    /// Misclassified images.
    pub misses: &'a [Miss],
    /// Per-patient errors: (variant, split, patient, images, errors).
    pub patients: &'a [(String, String, String, u32, u32)],
    /// Per-patient segmentation scores on valid and test, over seeds.
    pub patient_seg: &'a [PatientSegRow],
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1500px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:14px;margin:.5em 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4;cursor:pointer;user-select:none}td.t,th.t{text-align:left}tr:nth-child(even){background:#fafafa}
td.best{font-weight:bold;background:#e8f4e8}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:14px}.meta{color:#666}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:13px}
details{margin:.3em 0}.scroll{overflow-x:auto}summary{cursor:pointer}";

const SCRIPT: &str = "document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var rows=Array.prototype.slice.call(t.tBodies[0].rows);var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
  rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent;
   var nx=parseFloat(x),ny=parseFloat(y);if(!isNaN(nx)&&!isNaN(ny)){return asc?nx-ny:ny-nx;}return asc?x.localeCompare(y):y.localeCompare(x);});
  rows.forEach(function(r){t.tBodies[0].appendChild(r);});});});});";

/// Write `index.html` into `dir` (figures and galleries must already be there).
pub fn write_html(page: &Page, dir: &Path) -> Result<()> {
    let exp = page.exp;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>wsss report: {name}</title><style>{STYLE}</style></head><body>\n\
         <h1>wsss report: {name}</h1>\n<p class=\"meta\">{n} variant(s) · experiment folder <code>{dir}</code> · \
         metrics on each run's held-out split · wsss {ver}</p>\n",
        name = esc(&exp.name),
        n = exp.variants.len(),
        dir = esc(&exp.dir.display().to_string()),
        ver = env!("CARGO_PKG_VERSION"),
    );
    let collapsed = collapsed_variants(page.rows);
    if !collapsed.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"warn\"><b>Warning — collapsed segmenter:</b> {} predict(s) one class \
             on nearly every pixel of the validation images (see each run's \
             <code>segment_history.csv</code>); their segmentation scores measure a collapse. \
             They are kept in every mean below.</p>",
            esc(&collapsed.join(", "))
        );
    }
    if page
        .rows
        .iter()
        .any(|r| r.metrics.keys().any(|k| k.starts_with(TEST_PREFIX)))
    {
        h.push_str(
            "<p><code>test_*</code> columns are scored on the <code>test</code> split (patients \
             no setting was chosen on); the others on each run's validation split.</p>\n",
        );
    }
    // summary table
    h.push_str(
        "<h2 id=\"summary\">Summary</h2>\n<p>One row per variant; click a column to sort. \
                Parameters equal in every variant are hidden (see the configs below).</p>\n",
    );
    let metrics = present_metric_columns(page.rows);
    let shown: Vec<&String> = metrics.iter().collect();
    h.push_str("<div class=\"scroll\"><table class=\"sortable\" id=\"summary-table\"><thead><tr><th class=\"t\">variant</th>");
    for p in page.params {
        let _ = write!(h, "<th class=\"t\">{}</th>", esc(p));
    }
    for m in &shown {
        let title = KEY_METRICS
            .iter()
            .find(|k| k.column == m.as_str())
            .map(|k| k.meaning)
            .or_else(|| m.starts_with(TEST_PREFIX).then_some("on the test split"))
            .unwrap_or("baseline on the same images");
        let _ = write!(h, "<th title=\"{}\">{}</th>", esc(title), esc(m));
    }
    h.push_str("<th>compute s</th><th class=\"t\">status</th></tr></thead><tbody>\n");
    for r in page.rows {
        let _ = write!(h, "<tr><td class=\"t\">{}</td>", esc(&r.variant));
        for p in page.params {
            let _ = write!(
                h,
                "<td class=\"t\">{}</td>",
                esc(r.config.get(p).map(String::as_str).unwrap_or(""))
            );
        }
        for m in &shown {
            let v = r.metrics.get(*m).copied().unwrap_or(f64::NAN);
            let best = m.ends_with("miou")
                && v.is_finite()
                && page.rows.iter().all(|o| {
                    o.metrics
                        .get(*m)
                        .copied()
                        .unwrap_or(f64::NAN)
                        .partial_cmp(&v)
                        != Some(std::cmp::Ordering::Greater)
                });
            let _ = write!(
                h,
                "<td{} data-v=\"{}\">{}</td>",
                if best && page.rows.len() > 1 {
                    " class=\"best\""
                } else {
                    ""
                },
                if v.is_finite() {
                    v.to_string()
                } else {
                    String::new()
                },
                num(v)
            );
        }
        let _ = writeln!(
            h,
            "<td>{:.0}</td><td class=\"t\">{}</td></tr>",
            r.compute_s,
            esc(&r.status)
        );
    }
    h.push_str("</tbody></table></div>\n");
    if page.seeds.iter().any(|g| g.n > 1) {
        h.push_str(&seed_table_html(page, &shown));
    }
    // figures
    if !page.figures.is_empty() {
        h.push_str("<h2 id=\"figures\">Figures</h2>\n");
        for f in page.figures {
            let _ = writeln!(
                h,
                "<figure>{}<figcaption>{} <a href=\"figures/{s}.svg\">SVG</a> · <a href=\"figures/{s}.png\">PNG</a></figcaption></figure>",
                img_tag(&dir.join("figures").join(format!("{}.png", f.stem)), &f.caption)?,
                esc(&f.caption),
                s = esc(&f.stem)
            );
        }
    }
    if !page.galleries.is_empty() {
        h.push_str("<h2 id=\"galleries\">Galleries</h2>\n");
        for g in page.galleries {
            let _ = writeln!(
                h,
                "<h3>{}</h3><figure>{}<figcaption>{}</figcaption></figure>",
                esc(&g.title),
                img_tag(&dir.join("galleries").join(&g.file), &g.title)?,
                esc(&g.caption)
            );
        }
    }
    // misclassification
    h.push_str("<h2 id=\"misclassified\">Misclassified images</h2>\n");
    if page.misses.is_empty() {
        h.push_str("<p>No image was misclassified by any variant.</p>\n");
    } else {
        let _ = writeln!(
            h,
            "<p>{} misclassification(s) over all variants and splits (table <code>misclassified.csv</code>); \
             most confident errors first.</p>",
            page.misses.len()
        );
        h.push_str("<table class=\"sortable\"><thead><tr><th class=\"t\">variant</th><th class=\"t\">split</th>\
                    <th class=\"t\">image</th><th class=\"t\">patient</th><th class=\"t\">class</th>\
                    <th class=\"t\">predicted</th><th>confidence</th></tr></thead><tbody>\n");
        for m in page.misses.iter().take(200) {
            let _ = writeln!(
                h,
                "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
                 <td class=\"t\">{}</td><td class=\"t\">{}</td><td>{}</td></tr>",
                esc(&m.variant),
                esc(&m.split),
                esc(&m.id),
                esc(&m.patient),
                esc(&m.class),
                esc(&m.predicted),
                num(m.confidence)
            );
        }
        h.push_str("</tbody></table>\n");
    }
    let with_errors: Vec<_> = page.patients.iter().filter(|p| p.4 > 0).collect();
    if !with_errors.is_empty() {
        h.push_str("<h3>Errors per patient</h3><p>Patients with at least one error (all patients in \
                    <code>patient_errors.csv</code>).</p><table class=\"sortable\"><thead><tr>\
                    <th class=\"t\">variant</th><th class=\"t\">split</th><th class=\"t\">patient</th>\
                    <th>images</th><th>errors</th><th>error rate</th></tr></thead><tbody>\n");
        for (v, s, p, n, e) in with_errors {
            let _ = writeln!(
                h,
                "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td><td>{n}</td><td>{e}</td><td>{}</td></tr>",
                esc(v),
                esc(s),
                esc(p),
                num(f64::from(*e) / f64::from(*n))
            );
        }
        h.push_str("</tbody></table>\n");
    }
    if !page.patient_seg.is_empty() {
        h.push_str(
            "<h3 id=\"patient-segmentation\">Segmentation per patient</h3><p>Each validation and \
             test patient's mean per-image mIoU (every tile weighs the same), mean ± std over \
             seeds; <em>predicted foreground</em> is the share of its pixels the segmenter calls \
             foreground (near 1: it marks whole tiles). Training patients and the per-variant \
             values are in <code>patient_segmentation.csv</code>.</p>\
             <table class=\"sortable\"><thead><tr><th class=\"t\">setting</th>\
             <th class=\"t\">split</th><th class=\"t\">patient</th><th>images</th><th>seeds</th>\
             <th>segmenter mIoU</th><th>pseudo-label mIoU</th><th>predicted foreground</th>\
             </tr></thead><tbody>\n",
        );
        for r in page.patient_seg {
            let setting = if r.params.is_empty() {
                "(all)".to_string()
            } else {
                r.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                h,
                "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
                 <td>{}</td><td>{}</td><td data-v=\"{}\">{} ± {}</td><td>{}</td><td>{}</td></tr>",
                esc(&setting),
                esc(&r.split),
                esc(&r.patient),
                r.images,
                r.n,
                if r.seg_miou.0.is_finite() {
                    r.seg_miou.0.to_string()
                } else {
                    String::new()
                },
                num(r.seg_miou.0),
                num(r.seg_miou.1),
                num(r.pseudo_miou),
                num(r.seg_fg_fraction)
            );
        }
        h.push_str("</tbody></table>\n");
    }
    // configs
    h.push_str("<h2 id=\"configs\">Resolved configs</h2>\n");
    for v in &exp.variants {
        let _ = writeln!(
            h,
            "<details><summary>{} <span class=\"meta\">({})</span></summary><pre>{}</pre></details>",
            esc(&v.id),
            esc(&v.hash),
            esc(&v.config_text)
        );
    }
    h.push_str("<h2 id=\"files\">Tables</h2>\n<p>");
    for t in super::TABLE_FILES {
        let _ = write!(
            h,
            "<code>{t}</code> (<a href=\"{t}.csv\">CSV</a>, <a href=\"{t}.parquet\">parquet</a>) "
        );
    }
    let _ = write!(h, "</p>\n<script>{SCRIPT}</script>\n</body></html>\n");
    crate::util::fs::atomic_write(&dir.join("index.html"), h.as_bytes())
}

/// `mean ± std` as the tables show it.
fn pm(g: &SeedGroup, m: &str) -> String {
    let mu = g.mean.get(m).copied().unwrap_or(f64::NAN);
    let sd = g.std.get(m).copied().unwrap_or(f64::NAN);
    if !mu.is_finite() {
        "–".into()
    } else if sd.is_finite() {
        format!("{mu:.3} ± {sd:.3}")
    } else {
        format!("{mu:.3}")
    }
}

fn seed_table_html(page: &Page, shown: &[&String]) -> String {
    let mut h = String::from(
        "<h3 id=\"seeds\">Mean ± std over seeds</h3>\n<p>Variants that differ only in their seeds, \
         grouped (sample standard deviation; table <code>summary_seeds.csv</code>).</p>\n\
         <div class=\"scroll\"><table class=\"sortable\" id=\"seed-table\"><thead><tr>",
    );
    let first = &page.seeds[0];
    for (k, _) in &first.params {
        let _ = write!(h, "<th class=\"t\">{}</th>", esc(k));
    }
    h.push_str("<th>n</th>");
    for m in shown {
        let _ = write!(h, "<th>{}</th>", esc(m));
    }
    h.push_str("</tr></thead><tbody>\n");
    for g in page.seeds {
        h.push_str("<tr>");
        for (_, v) in &g.params {
            let _ = write!(h, "<td class=\"t\">{}</td>", esc(v));
        }
        let _ = write!(h, "<td>{}</td>", g.n);
        for m in shown {
            let _ = write!(
                h,
                "<td data-v=\"{}\">{}</td>",
                g.mean
                    .get(*m)
                    .copied()
                    .filter(|v| v.is_finite())
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                esc(&pm(g, m))
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table></div>\n");
    h
}

/// One Markdown table row; `|` inside a cell (a swept string, a path) is escaped and line
/// breaks become spaces, so every row keeps the header's cell count.
pub fn md_row(cells: &[String]) -> String {
    let esc: Vec<String> = cells
        .iter()
        .map(|c| {
            c.replace('\\', "\\\\")
                .replace('|', "\\|")
                .replace(['\n', '\r'], " ")
        })
        .collect();
    format!("| {} |", esc.join(" | "))
}

/// Write `summary.md` into `dir`.
pub fn write_markdown(page: &Page, dir: &Path) -> Result<()> {
    let mut m = String::new();
    let _ = writeln!(m, "# {}\n", page.exp.name);
    let metrics = present_metric_columns(page.rows);
    let shown: Vec<&String> = metrics.iter().collect();
    let mut head: Vec<String> = vec!["variant".into()];
    head.extend(page.params.iter().cloned());
    head.extend(shown.iter().map(|s| s.to_string()));
    let _ = writeln!(m, "{}", md_row(&head));
    let _ = writeln!(m, "|{}|", vec!["---"; head.len()].join("|"));
    for r in page.rows {
        let mut cells = vec![r.variant.clone()];
        cells.extend(
            page.params
                .iter()
                .map(|p| r.config.get(p).cloned().unwrap_or_default()),
        );
        cells.extend(
            shown
                .iter()
                .map(|c| num(r.metrics.get(*c).copied().unwrap_or(f64::NAN))),
        );
        let _ = writeln!(m, "{}", md_row(&cells));
    }
    if page.seeds.iter().any(|g| g.n > 1) {
        let _ = writeln!(m, "\nMean ± std over seeds (sample std):\n");
        let mut head: Vec<String> = page.seeds[0]
            .params
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        head.push("n".into());
        head.extend(shown.iter().map(|s| s.to_string()));
        let _ = writeln!(m, "{}", md_row(&head));
        let _ = writeln!(m, "|{}|", vec!["---"; head.len()].join("|"));
        for g in page.seeds {
            let mut cells: Vec<String> = g.params.iter().map(|(_, v)| v.clone()).collect();
            cells.push(g.n.to_string());
            cells.extend(shown.iter().map(|c| pm(g, c)));
            let _ = writeln!(m, "{}", md_row(&cells));
        }
    }
    let split = page
        .rows
        .first()
        .map(|r| r.split.as_str())
        .unwrap_or("valid");
    let test_cols = if shown.iter().any(|c| c.starts_with(TEST_PREFIX)) {
        "; `test_*` columns on the `test` split (no setting was chosen on it)"
    } else {
        ""
    };
    let _ = writeln!(
        m,
        "\nMetrics on the `{split}` split{test_cols}. {} misclassification(s) over all variants \
         and splits (`misclassified.csv`).\n",
        page.misses.len()
    );
    let collapsed = collapsed_variants(page.rows);
    if !collapsed.is_empty() {
        let _ = writeln!(
            m,
            "**Warning — collapsed segmenter:** {} predict(s) one class on nearly every pixel of \
             the validation images; their segmentation scores measure a collapse.\n",
            collapsed.join(", ")
        );
    }
    for f in page.figures {
        let _ = writeln!(m, "![{}](figures/{}.png)\n", f.caption, f.stem);
    }
    for g in page.galleries {
        let _ = writeln!(
            m,
            "**{}** — {}\n\n![{}](galleries/{})\n",
            g.title, g.caption, g.title, g.file
        );
    }
    crate::util::fs::atomic_write(&dir.join("summary.md"), m.as_bytes())
}

#[cfg(test)]
mod md_tests {
    use super::md_row;

    #[test]
    fn markdown_cells_escape_pipes() {
        let row = md_row(&["a|b".into(), "x\ny".into(), "c".into()]);
        assert_eq!(row, "| a\\|b | x y | c |");
        // As many unescaped separators as a 3-cell header.
        let seps = |r: &str| r.replace("\\|", "").matches('|').count();
        assert_eq!(
            seps(&row),
            seps(&md_row(&["h1".into(), "h2".into(), "h3".into()]))
        );
    }
}
