//! Patient-level splits: every image of a patient lands in the same split, by construction
//! and by an explicit leakage check on the final table.
//!
//! Strategies: explicit patient lists, k-fold over patients, or a seeded fraction of each
//! class's patients. Patients are stratified by their majority class (GlaS has patients with
//! images of both classes).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::scan::DatasetIndex;
use crate::config::{ConfigError, ConfigErrors, SplitConfig, SplitMethod};

/// Which part of the data an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training.
    Train,
    /// Validation (model selection).
    Valid,
    /// Held-out test.
    Test,
    /// Not used (a patient not listed by `split.method = "patients"`).
    Excluded,
}

impl Split {
    /// Lower-case name as written in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
            Split::Excluded => "excluded",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the split table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitRow {
    /// Image id.
    pub id: String,
    /// Patient id.
    pub patient: String,
    /// Class name.
    pub class: String,
    /// Assigned split.
    pub split: Split,
}

/// Each patient's majority class (ties go to the higher class index, i.e. the positive one).
pub fn majority_class(idx: &DatasetIndex) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for s in &idx.samples {
        counts
            .entry(&s.patient)
            .or_insert_with(|| vec![0; idx.spec.classes.len()])[s.class] += 1;
    }
    counts
        .into_iter()
        .map(|(p, c)| {
            let best = (0..c.len()).max_by_key(|&i| (c[i], i)).unwrap_or(0);
            (p.to_string(), best)
        })
        .collect()
}

/// The split settings `cfg.method` reads, the others at their defaults and patient lists in
/// order without repeats: two configs that split alike have one value (the data stage's slice,
/// so that a sweep over `split.seed` with `method = "patients"` is not three computations).
pub fn effective(cfg: &SplitConfig) -> SplitConfig {
    let d = SplitConfig::default();
    let list = |v: &[String]| -> Vec<String> {
        let set: BTreeSet<&String> = v.iter().collect();
        set.into_iter().cloned().collect()
    };
    match cfg.method {
        SplitMethod::Patients => SplitConfig {
            method: cfg.method,
            train_patients: list(&cfg.train_patients),
            valid_patients: list(&cfg.valid_patients),
            test_patients: list(&cfg.test_patients),
            ..d
        },
        SplitMethod::Fraction => SplitConfig {
            method: cfg.method,
            seed: cfg.seed,
            valid_fraction: cfg.valid_fraction,
            test_fraction: cfg.test_fraction,
            ..d
        },
        SplitMethod::Kfold => SplitConfig {
            method: cfg.method,
            seed: cfg.seed,
            folds: cfg.folds,
            fold: cfg.fold,
            ..d
        },
    }
}

/// Assign patients to splits. Problems are reported as manifest errors against `source`.
pub fn assign(
    idx: &DatasetIndex,
    cfg: &SplitConfig,
    source: &str,
) -> Result<BTreeMap<String, Split>, ConfigErrors> {
    let err = |key: &str, msg: String| ConfigErrors(vec![ConfigError::key(source, key, msg)]);
    let major = majority_class(idx);
    let mut by_class: Vec<Vec<String>> = vec![Vec::new(); idx.spec.classes.len()];
    for (p, c) in &major {
        by_class[*c].push(p.clone());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = BTreeMap::new();
    match cfg.method {
        SplitMethod::Patients => {
            let known: BTreeSet<&str> = major.keys().map(String::as_str).collect();
            let mut errs = Vec::new();
            for (key, list, split) in [
                ("split.train_patients", &cfg.train_patients, Split::Train),
                ("split.valid_patients", &cfg.valid_patients, Split::Valid),
                ("split.test_patients", &cfg.test_patients, Split::Test),
            ] {
                for p in list {
                    if !known.contains(p.as_str()) {
                        errs.push(ConfigError::key(
                            source,
                            key,
                            format!(
                                "patient `{p}` is not in dataset `{}` (patients: {})",
                                idx.spec.name,
                                known.iter().copied().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    } else if let Some(prev) = out.insert(p.clone(), split) {
                        if prev != split {
                            errs.push(ConfigError::key(
                                source,
                                key,
                                format!("patient `{p}` is also in {prev}: leakage"),
                            ));
                        }
                    }
                }
            }
            if !errs.is_empty() {
                return Err(ConfigErrors(errs));
            }
            for p in major.keys() {
                out.entry(p.clone()).or_insert(Split::Excluded);
            }
        }
        SplitMethod::Fraction => {
            for (ci, pats) in by_class.iter_mut().enumerate() {
                if pats.is_empty() {
                    continue;
                }
                pats.shuffle(&mut rng);
                let n = pats.len();
                let take = |f: f64| {
                    if f > 0.0 {
                        ((f * n as f64).round() as usize).max(1)
                    } else {
                        0
                    }
                };
                let (nv, nt) = (take(cfg.valid_fraction), take(cfg.test_fraction));
                if nv + nt >= n {
                    return Err(err(
                        "split.valid_fraction",
                        format!(
                            "class `{}` has {n} patient(s) by majority class: valid_fraction = {} and test_fraction = {} leave none for training",
                            idx.spec.classes[ci], cfg.valid_fraction, cfg.test_fraction
                        ),
                    ));
                }
                for (i, p) in pats.iter().enumerate() {
                    let s = if i < nv {
                        Split::Valid
                    } else if i < nv + nt {
                        Split::Test
                    } else {
                        Split::Train
                    };
                    out.insert(p.clone(), s);
                }
            }
        }
        SplitMethod::Kfold => {
            let mut slot = 0usize;
            for pats in by_class.iter_mut() {
                pats.shuffle(&mut rng);
                for p in pats.iter() {
                    let fold = (slot % cfg.folds as usize) as u32;
                    slot += 1;
                    out.insert(
                        p.clone(),
                        if fold == cfg.fold {
                            Split::Valid
                        } else {
                            Split::Train
                        },
                    );
                }
            }
        }
    }
    let key = match cfg.method {
        SplitMethod::Patients => "split.valid_patients",
        SplitMethod::Kfold => "split.fold",
        SplitMethod::Fraction => "split.valid_fraction",
    };
    let rows = rows(idx, &out);
    let mut errs = Vec::new();
    let used: BTreeSet<Split> = rows.iter().map(|r| r.split).collect();
    for split in [Split::Train, Split::Valid, Split::Test] {
        if split == Split::Test && !used.contains(&Split::Test) {
            continue;
        }
        for c in &idx.spec.classes {
            if !rows.iter().any(|r| r.split == split && &r.class == c) {
                errs.push(ConfigError::key(
                    source,
                    key,
                    format!("the split leaves class `{c}` without images in `{split}`; patients per class (by majority): {}", describe(idx, &major)),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    Ok(out)
}

fn describe(idx: &DatasetIndex, major: &BTreeMap<String, usize>) -> String {
    idx.spec
        .classes
        .iter()
        .enumerate()
        .map(|(ci, c)| format!("{c}: {}", major.values().filter(|&&m| m == ci).count()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The split table: one row per image.
pub fn rows(idx: &DatasetIndex, assign: &BTreeMap<String, Split>) -> Vec<SplitRow> {
    idx.samples
        .iter()
        .map(|s| SplitRow {
            id: s.id.clone(),
            patient: s.patient.clone(),
            class: idx.spec.classes[s.class].clone(),
            split: assign.get(&s.patient).copied().unwrap_or(Split::Excluded),
        })
        .collect()
}

/// Fail if any patient's images fall in more than one split.
pub fn check_no_leakage(rows: &[SplitRow]) -> Result<(), String> {
    let mut seen: BTreeMap<&str, BTreeSet<Split>> = BTreeMap::new();
    for r in rows {
        seen.entry(&r.patient).or_default().insert(r.split);
    }
    let leaks: Vec<String> = seen
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(p, s)| {
            format!(
                "patient `{p}` in {}",
                s.iter()
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            )
        })
        .collect();
    if leaks.is_empty() {
        Ok(())
    } else {
        Err(format!("patient leakage: {}", leaks.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::registry::{DatasetSpec, Layout, MaskEncoding, NegativeMasks};
    use crate::data::scan::Sample;
    use proptest::prelude::*;

    fn idx(patients: &[(&str, usize, usize)]) -> DatasetIndex {
        let mut samples = vec![];
        for (p, c, n) in patients {
            for i in 0..*n {
                samples.push(Sample {
                    id: format!("{p}_{c}_{i}"),
                    image: format!("{p}/{i}.png").into(),
                    mask: None,
                    class: *c,
                    patient: p.to_string(),
                    image_bytes: 1,
                    mask_bytes: 0,
                });
            }
        }
        DatasetIndex {
            spec: DatasetSpec {
                name: "t".into(),
                root: ".".into(),
                classes: vec!["neg".into(), "pos".into()],
                positive: 1,
                mask_encoding: MaskEncoding::Binary,
                negative_masks: NegativeMasks::Background,
                lossy_mask_threshold: None,
                layout: Layout::Folder {
                    images_dir: ".".into(),
                    masks_dir: None,
                    masks_inferred: false,
                    mask_suffix: String::new(),
                },
                synth: None,
                description: String::new(),
            },
            samples,
            fingerprint: String::new(),
            sizes: Vec::new(),
        }
    }

    #[test]
    fn majority_with_mixed_patients() {
        let d = idx(&[("a", 0, 3), ("a", 1, 1), ("b", 1, 2), ("b", 0, 2)]);
        let m = majority_class(&d);
        assert_eq!(m["a"], 0);
        assert_eq!(m["b"], 1, "ties go to the positive class");
    }

    #[test]
    fn explicit_lists_and_unknown_patient() {
        let d = idx(&[
            ("a", 0, 2),
            ("b", 1, 2),
            ("c", 0, 2),
            ("d", 1, 2),
            ("e", 0, 1),
        ]);
        let cfg = SplitConfig {
            method: SplitMethod::Patients,
            train_patients: vec!["a".into(), "b".into()],
            valid_patients: vec!["c".into(), "d".into()],
            ..Default::default()
        };
        let a = assign(&d, &cfg, "m.toml").unwrap();
        assert_eq!(a["a"], Split::Train);
        assert_eq!(a["d"], Split::Valid);
        assert_eq!(a["e"], Split::Excluded);
        let bad = SplitConfig {
            valid_patients: vec!["zz".into()],
            ..cfg
        };
        let e = assign(&d, &bad, "m.toml").unwrap_err().to_string();
        assert!(
            e.contains("m.toml") && e.contains("split.valid_patients") && e.contains("zz"),
            "{e}"
        );
    }

    #[test]
    fn class_without_valid_patients_is_an_error() {
        let d = idx(&[("a", 0, 2), ("b", 1, 2), ("c", 1, 2)]);
        let cfg = SplitConfig {
            valid_fraction: 0.3,
            ..Default::default()
        };
        let e = assign(&d, &cfg, "m.toml").unwrap_err().to_string();
        assert!(
            e.contains("class `neg`") && e.contains("split.valid_fraction"),
            "{e}"
        );
    }

    #[test]
    fn leakage_check_catches_leaks() {
        let mut rows = vec![
            SplitRow {
                id: "1".into(),
                patient: "p".into(),
                class: "a".into(),
                split: Split::Train,
            },
            SplitRow {
                id: "2".into(),
                patient: "p".into(),
                class: "a".into(),
                split: Split::Train,
            },
        ];
        assert!(check_no_leakage(&rows).is_ok());
        rows[1].split = Split::Valid;
        assert!(check_no_leakage(&rows)
            .unwrap_err()
            .contains("patient `p` in train and valid"));
    }

    proptest! {
        #[test]
        fn splits_never_leak_and_are_seeded(n_neg in 2usize..8, n_pos in 2usize..8, seed in 0u64..50, folds in 2u32..4) {
            let pats: Vec<(String, usize, usize)> = (0..n_neg).map(|i| (format!("n{i}"), 0, 1 + i % 3))
                .chain((0..n_pos).map(|i| (format!("p{i}"), 1, 2))).collect();
            let refs: Vec<(&str, usize, usize)> = pats.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
            let d = idx(&refs);
            for cfg in [
                SplitConfig { seed, valid_fraction: 0.3, ..Default::default() },
                SplitConfig { seed, method: SplitMethod::Kfold, folds, fold: seed as u32 % folds, ..Default::default() },
            ] {
                if let Ok(a) = assign(&d, &cfg, "m") {
                    let r = rows(&d, &a);
                    prop_assert!(check_no_leakage(&r).is_ok());
                    prop_assert_eq!(&a, &assign(&d, &cfg, "m").unwrap());
                    prop_assert!(r.iter().any(|x| x.split == Split::Train));
                    prop_assert!(r.iter().any(|x| x.split == Split::Valid));
                }
            }
        }
    }
}
