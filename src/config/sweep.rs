//! Sweeps: `[sweep.grid]` (cartesian product) and `[sweep.zip]` (lock-step lists) expanded
//! into variant assignments with stable, readable ids.

use toml::Value;

/// The merged `[sweep]` table of a manifest. Keys are kept sorted so ids are stable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Keys whose values combine as a cartesian product.
    pub grid: Vec<(String, Vec<Value>)>,
    /// Keys whose lists advance together (all the same length).
    pub zip: Vec<(String, Vec<Value>)>,
}

/// Upper bound on the number of variants one manifest may expand to.
pub const MAX_VARIANTS: usize = 10_000;

impl Sweep {
    /// Whether the manifest sweeps nothing (one variant).
    pub fn is_empty(&self) -> bool {
        self.grid.is_empty() && self.zip.is_empty()
    }

    /// Number of variants: product of grid lengths times the zip length.
    pub fn count(&self) -> usize {
        let g = self
            .grid
            .iter()
            .fold(1usize, |acc, (_, v)| acc.saturating_mul(v.len()));
        let z = self.zip.first().map_or(1, |(_, v)| v.len());
        g.saturating_mul(z)
    }

    /// Every variant's assignments, each sorted by key. Zip positions are the outer loop, the
    /// grid the inner one, its last key varying fastest.
    pub fn assignments(&self) -> Vec<Vec<(String, Value)>> {
        let zlen = self.zip.first().map_or(1, |(_, v)| v.len());
        let mut out = Vec::with_capacity(self.count());
        for zi in 0..zlen {
            let mut combos: Vec<Vec<(String, Value)>> = vec![self
                .zip
                .iter()
                .map(|(k, v)| (k.clone(), v[zi].clone()))
                .collect()];
            for (k, vals) in &self.grid {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        vals.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push((k.clone(), v.clone()));
                            c
                        })
                    })
                    .collect();
            }
            for mut c in combos {
                c.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(c);
            }
        }
        out
    }
}

/// A value as it appears in a variant id: strings bare, numbers and booleans as in TOML.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(format_value).collect::<Vec<_>>().join(";")
        ),
        other => other.to_string(),
    }
}

/// The readable id of a variant: `key=value` pairs joined by commas, or `default`.
pub fn variant_id(assign: &[(String, Value)]) -> String {
    if assign.is_empty() {
        return "default".into();
    }
    assign
        .iter()
        .map(|(k, v)| format!("{k}={}", format_value(v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vals(n: usize) -> Vec<Value> {
        (0..n).map(|i| Value::Integer(i as i64)).collect()
    }

    #[test]
    fn grid_and_zip_by_hand() {
        let s = Sweep {
            grid: vec![
                (
                    "cam.threshold".into(),
                    vec![Value::Float(0.5), Value::Float(0.7)],
                ),
                (
                    "loss.variant".into(),
                    vec![Value::String("ce".into()), Value::String("focal".into())],
                ),
            ],
            zip: vec![],
        };
        let ids: Vec<String> = s.assignments().iter().map(|a| variant_id(a)).collect();
        assert_eq!(
            ids,
            [
                "cam.threshold=0.5,loss.variant=ce",
                "cam.threshold=0.5,loss.variant=focal",
                "cam.threshold=0.7,loss.variant=ce",
                "cam.threshold=0.7,loss.variant=focal"
            ]
        );
        let z = Sweep {
            grid: vec![],
            zip: vec![("a".into(), vals(3)), ("b".into(), vals(3))],
        };
        let ids: Vec<String> = z.assignments().iter().map(|a| variant_id(a)).collect();
        assert_eq!(ids, ["a=0,b=0", "a=1,b=1", "a=2,b=2"]);
        assert_eq!(variant_id(&[]), "default");
    }

    proptest! {
        #[test]
        fn count_is_product_and_ids_unique(lens in proptest::collection::vec(1usize..4, 0..4), z in 0usize..4) {
            let s = Sweep {
                grid: lens.iter().enumerate().map(|(i, n)| (format!("g{i}"), vals(*n))).collect(),
                zip: if z == 0 { vec![] } else { vec![("z0".into(), vals(z)), ("z1".into(), vals(z))] },
            };
            let a = s.assignments();
            prop_assert_eq!(a.len(), lens.iter().product::<usize>() * z.max(1));
            prop_assert_eq!(a.len(), s.count());
            let mut ids: Vec<String> = a.iter().map(|x| variant_id(x)).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), a.len());
        }
    }
}
