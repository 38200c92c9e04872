//! The README's manifest reference lists every key the schema knows.

use wsss::config::schema::FIELDS;

#[test]
fn readme_documents_every_manifest_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<&str> = FIELDS
        .iter()
        .map(|f| f.key)
        .filter(|k| !readme.contains(&format!("| `{k}` |")))
        .collect();
    assert!(missing.is_empty(), "README.md lacks rows for: {missing:?}");
}

#[test]
fn schema_command_prints_every_key() {
    let text = wsss::cli::schema_text();
    for f in FIELDS {
        assert!(text.contains(f.key), "{}", f.key);
    }
}
