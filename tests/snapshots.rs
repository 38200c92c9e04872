//! Snapshot tests of user-facing output, with paths, hashes of data and timings redacted.

mod common;
use common::*;

#[test]
fn plan_json_snapshot() {
    let sb = Sandbox::new();
    let m = sb.write(
        "sweep.toml",
        "name = \"snap\"\n[split]\nvalid_fraction = 0.34\n[backbone]\nwidth = 0.0625\n[train]\nimage_size = 32\nepochs = 1\n[segmentation]\nwidth = 0.0625\ncrop_size = 32\nepochs = 1\n[sweep.grid]\n\"cam.threshold\" = [0.6, 0.7]\n\"loss.variant\" = [\"ce\", \"focal\"]\n[sweep.zip]\n\"train.seed\" = [1, 2]\n\"split.seed\" = [0, 0]\n",
    );
    assert_eq!(sb.run(&["run", m.to_str().unwrap()]).status.code(), Some(0));
    let o = sb.run(&["plan", m.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    insta::assert_json_snapshot!(v, {
        ".variants[].run_dir" => "[run_dir]",
        ".variants[].stages[].key" => "[key]",
        ".variants[].stages[].seconds" => "[seconds]",
    });
}

#[test]
fn schema_snapshot() {
    insta::assert_snapshot!(wsss::cli::schema_text());
}
