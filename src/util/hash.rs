//! Content hashes for cache keys and fingerprints (SHA-256, hex).

use sha2::{Digest, Sha256};

/// Incremental hasher whose fields are length-prefixed, so `("ab","c")` ≠ `("a","bc")`.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A new hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add one field.
    pub fn field(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let b = bytes.as_ref();
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    /// Add a serialisable value as canonical JSON.
    pub fn json(&mut self, v: &impl serde::Serialize) -> &mut Self {
        let s = serde_json::to_string(v).unwrap_or_default();
        self.field(s)
    }
    /// Full hex digest.
    pub fn hex(&self) -> String {
        self.0
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// SHA-256 of some bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        let a = Hasher::new().field("ab").field("c").hex();
        let b = Hasher::new().field("a").field("bc").hex();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(a, Hasher::new().field("ab").field("c").hex());
    }
}
