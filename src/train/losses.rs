//! Classification losses, selected by `loss.variant`.
//!
//! All take logits `(B, K)` and one-hot (or soft) targets `(B, K)` as `f32` tensors and return
//! a scalar mean over the batch. The evidence-aware variants also read class activation maps
//! `(B, K, h, w)`, so that *where* the classifier looks is part of the objective — the talk's
//! "evidence accuracy is as important as classification accuracy".

use candle_core::{Result, Tensor, D};
use candle_nn::ops::log_softmax;

/// Softmax cross-entropy: `L = −Σ_k y_k log softmax(z)_k`.
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    (log_softmax(logits, D::Minus1)? * target)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()
}

/// Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016):
/// cross-entropy against `y' = (1 − ε) y + ε / K`.
pub fn label_smoothing(logits: &Tensor, target: &Tensor, eps: f64) -> Result<Tensor> {
    let k = target.dim(D::Minus1)? as f64;
    let soft = ((target * (1.0 - eps))? + eps / k)?;
    cross_entropy(logits, &soft)
}

/// Binary cross-entropy with one sigmoid per class:
/// `L = −mean_k [y_k log σ(z_k) + (1 − y_k) log(1 − σ(z_k))]`, computed as
/// `mean_k [max(z, 0) − z·y + log(1 + e^−|z|)]` (PyTorch's `BCEWithLogitsLoss`), which stays
/// finite for any logit. (candle-nn's `binary_cross_entropy_with_logit` takes the log of a
/// sigmoid: past |z| ≈ 17 the sigmoid rounds to 0 or 1 in f32 and `0 · log 0` is NaN — a
/// pretrained classifier reaches such logits within an epoch.)
pub fn bce(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (logits.relu()? - (logits * target)?)?
        .add(&softplus_neg_abs)?
        .mean_all()
}

/// Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017):
/// `L = −α_t (1 − p_t)^γ log p_t`, with `p_t` the softmax probability of the true class and
/// `α_t = α` for the positive class (the last class index, class 1 of a binary task) and
/// `1 − α` otherwise.
pub fn focal(logits: &Tensor, target: &Tensor, gamma: f64, alpha: f64) -> Result<Tensor> {
    let logp = log_softmax(logits, D::Minus1)?;
    let logpt = (&logp * target)?.sum(D::Minus1)?;
    let pt = logpt.exp()?;
    let k = target.dim(D::Minus1)?;
    let mut a = vec![1.0 - alpha; k];
    if k >= 2 {
        a[k - 1] = alpha;
    }
    let alpha_k = Tensor::new(
        a.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        logits.device(),
    )?;
    let alpha_t = target.broadcast_mul(&alpha_k)?.sum(D::Minus1)?;
    let modulating = (1.0 - pt)?.clamp(1e-12f32, 1.0f32)?.powf(gamma)?;
    (alpha_t * modulating * logpt)?.neg()?.mean_all()
}

/// Per-map normalisation used by the evidence terms: `relu(cam) / (max_hw relu(cam) + 1e-5)`.
pub fn normalize_cam(cam: &Tensor) -> Result<Tensor> {
    let r = cam.relu()?;
    let max = r
        .flatten_from(2)?
        .max_keepdim(D::Minus1)?
        .unsqueeze(D::Minus1)?;
    r.broadcast_div(&(max + 1e-5)?)
}

/// CAM area regulariser: the mean normalised activation of the true class's CAM, over images
/// of the positive class (`positive`), i.e. the fraction of the tile the evidence covers.
/// Penalising it keeps the evidence from spreading over the whole tile (the talk's "CAM region
/// too broad"); in the spirit of the area constraints of weakly supervised localisation
/// (e.g. Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", MedIA
/// 2019). Negative images are not penalised: normal tissue may legitimately fill the tile.
pub fn cam_area(cam: &Tensor, target: &Tensor, positive: usize) -> Result<Tensor> {
    let n = normalize_cam(cam)?;
    let area = n.mean((2, 3))?; // (B, K)
    let per_image = (&area * target)?.sum(D::Minus1)?; // true-class area
    let w = target.narrow(D::Minus1, positive, 1)?.squeeze(D::Minus1)?;
    let denom = w.sum_all()?.maximum(1f32)?;
    (per_image * &w)?.sum_all()?.div(&denom)
}

/// Equivariance regulariser (Wang et al., "Self-supervised Equivariant Attention Mechanism for
/// Weakly Supervised Semantic Segmentation" (SEAM), CVPR 2020): for a spatial transform `T`
/// of the input, the CAM of the transformed image should be the transformed CAM,
/// `L = mean |norm(CAM(T x)) − T(norm(CAM(x)))|`. `cam_tx` is `CAM(T x)`, `t_cam_x` is
/// `T(CAM(x))`.
pub fn equivariance(cam_tx: &Tensor, t_cam_x: &Tensor) -> Result<Tensor> {
    (normalize_cam(cam_tx)? - normalize_cam(t_cam_x)?)?
        .abs()?
        .mean_all()
}

/// A transform that is exact on pixel grids, for the equivariance loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridTransform {
    /// Mirror left–right.
    FlipH,
    /// Mirror top–bottom.
    FlipV,
    /// Rotate by 90°.
    Rot90,
    /// Rotate by 180°.
    Rot180,
}

impl GridTransform {
    /// All transforms.
    pub const ALL: [GridTransform; 4] = [Self::FlipH, Self::FlipV, Self::Rot90, Self::Rot180];

    /// Apply to a `(B, C, H, W)` tensor.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::FlipH => x.flip(&[3]),
            Self::FlipV => x.flip(&[2]),
            Self::Rot90 => x.transpose(2, 3)?.contiguous()?.flip(&[3]),
            Self::Rot180 => x.flip(&[2, 3]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }
    fn s(x: Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }
    // log(1 + e^-2), the CE of logits (2, 0) for class 0, worked out by hand.
    const L2: f64 = 0.126_928_011_042_972_6;

    #[test]
    fn losses_by_hand() {
        let z = t(&[2.0, 0.0], &[1, 2]);
        let y0 = t(&[1.0, 0.0], &[1, 2]);
        assert!((s(cross_entropy(&z, &y0).unwrap()) - L2).abs() < 1e-6);
        // ε = 0.1, K = 2 → targets (0.95, 0.05): 0.95·L2 + 0.05·(2 + L2).
        assert!(
            (s(label_smoothing(&z, &y0, 0.1).unwrap()) - (0.95 * L2 + 0.05 * (2.0 + L2))).abs()
                < 1e-6
        );
        // BCE: mean(log(1+e^-2), log 2).
        assert!((s(bce(&z, &y0).unwrap()) - (L2 + std::f64::consts::LN_2) / 2.0).abs() < 1e-6);
        // Confident logits stay finite (candle-nn's formula gave NaN past |z| ≈ 17): right
        // with margin 30 → log(1 + e^-30), and 1 + 9.4e-14 is 1 in f32, so exactly 0; wrong by
        // 100 → 100 + log(1 + e^-100) = 100.
        let conf = t(&[30.0, -30.0], &[1, 2]);
        assert_eq!(s(bce(&conf, &y0).unwrap()), 0.0);
        let wrong = t(&[-100.0, 100.0], &[1, 2]);
        assert_eq!(s(bce(&wrong, &y0).unwrap()), 100.0);
        let v = Var::from_tensor(&conf).unwrap();
        let g = bce(v.as_tensor(), &y0).unwrap().backward().unwrap();
        let dz = g.get(v.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // ∂L/∂z = (σ(z) − y) / 2: finite, ≈ ∓4.7e-14.
        assert!(
            dz[0][0].is_finite() && dz[0][0] <= 0.0 && dz[0][0] > -1e-12,
            "{dz:?}"
        );
        assert!(
            dz[0][1].is_finite() && dz[0][1] >= 0.0 && dz[0][1] < 1e-12,
            "{dz:?}"
        );
        // Focal, class 0 (negative): α_t = 1 − α = 0.75, p_t = σ(2).
        let pt = 1.0 / (1.0 + (-2.0f64).exp());
        let want = 0.75 * (1.0 - pt).powi(2) * L2;
        assert!((s(focal(&z, &y0, 2.0, 0.25).unwrap()) - want).abs() < 1e-7);
        // γ = 0 and α = 0.5 is half the cross-entropy.
        assert!((s(focal(&z, &y0, 0.0, 0.5).unwrap()) - L2 / 2.0).abs() < 1e-6);
    }

    #[test]
    fn evidence_terms_by_hand() {
        // One image, class 1 (positive): its CAM is [[0, 1], [2, 3]] → normalised [0, 1/3, 2/3, 1].
        let cam = t(&[5.0, 5.0, 5.0, 5.0, 0.0, 1.0, 2.0, 3.0], &[1, 2, 2, 2]);
        let y1 = t(&[0.0, 1.0], &[1, 2]);
        assert!((s(cam_area(&cam, &y1, 1).unwrap()) - 0.5).abs() < 1e-4);
        let y0 = t(&[1.0, 0.0], &[1, 2]);
        assert_eq!(
            s(cam_area(&cam, &y0, 1).unwrap()),
            0.0,
            "negative images are not penalised"
        );
        assert_eq!(s(equivariance(&cam, &cam).unwrap()), 0.0);
        // Flipping class 1's map: |[0,1/3,2/3,1] − [1/3,0,1,2/3]| = 1/3 each; class 0 flat → 0.
        let f = GridTransform::FlipH.apply(&cam).unwrap();
        assert!((s(equivariance(&cam, &f).unwrap()) - (4.0 / 3.0) / 8.0).abs() < 1e-4);
    }

    #[test]
    fn rot90_is_a_quarter_turn() {
        let x = t(&[1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2]);
        let r = GridTransform::Rot90
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, [3.0, 1.0, 4.0, 2.0]);
        let four = (0..4)
            .try_fold(x.clone(), |a, _| GridTransform::Rot90.apply(&a))
            .unwrap();
        assert_eq!(
            four.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
    }

    /// Seeded uniform tensor (candle's CPU `rand` cannot be seeded).
    fn seeded(seed: u64, lo: f32, hi: f32, shape: &[usize]) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        t(&v, shape)
    }

    /// Gradient descent on a toy CAM model `cam = w · f + P` (class weights `w` over fixed
    /// features, plus a free positional map `P`): adding the area term leaves a smaller
    /// positive CAM than CE alone, adding the equivariance term leaves a smaller equivariance
    /// error than CE alone. Checked over several seeded starting points.
    #[test]
    fn evidence_losses_move_the_cam_the_intended_way() {
        for seed in 0..4u64 {
            evidence_losses_case(seed);
        }
    }

    fn evidence_losses_case(seed: u64) {
        let feats = seeded(seed, 0.0, 1.0, &[4, 6, 8, 8]);
        let y = t(&[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0], &[4, 2]);
        let w0 = seeded(seed + 100, -0.5, 0.5, &[2, 6]);
        let p0 = seeded(seed + 200, 0.0, 1.0, &[1, 2, 8, 8]);
        let run = |area_w: f64, eq_w: f64| -> (f64, f64) {
            let w = Var::from_tensor(&w0).unwrap();
            let p = Var::from_tensor(&p0).unwrap();
            let cam_of = |x: &Tensor| -> Tensor {
                let (b, c, h, ww) = x.dims4().unwrap();
                let flat = x.reshape((b, c, h * ww)).unwrap();
                let wt = w
                    .as_tensor()
                    .unsqueeze(0)
                    .unwrap()
                    .broadcast_as((b, 2, c))
                    .unwrap()
                    .contiguous()
                    .unwrap();
                wt.matmul(&flat)
                    .unwrap()
                    .reshape((b, 2, h, ww))
                    .unwrap()
                    .broadcast_add(p.as_tensor())
                    .unwrap()
            };
            for _ in 0..200 {
                let cam = cam_of(&feats);
                let logits = cam.mean((2, 3)).unwrap();
                let mut loss = cross_entropy(&logits, &y).unwrap();
                if area_w > 0.0 {
                    loss = (loss + (cam_area(&cam, &y, 1).unwrap() * area_w).unwrap()).unwrap();
                }
                if eq_w > 0.0 {
                    let tx = GridTransform::FlipH;
                    let e = equivariance(
                        &cam_of(&tx.apply(&feats).unwrap()),
                        &tx.apply(&cam).unwrap(),
                    )
                    .unwrap();
                    loss = (loss + (e * eq_w).unwrap()).unwrap();
                }
                let g = loss.backward().unwrap();
                for v in [&w, &p] {
                    let step = (g.get(v).unwrap() * 0.5).unwrap();
                    v.set(&(v.as_tensor() - step).unwrap()).unwrap();
                }
            }
            let cam = cam_of(&feats);
            let area = s(cam_area(&cam, &y, 1).unwrap());
            let tx = GridTransform::FlipH;
            let eq = s(equivariance(
                &cam_of(&tx.apply(&feats).unwrap()),
                &tx.apply(&cam).unwrap(),
            )
            .unwrap());
            (area, eq)
        };
        let (area_ce, eq_ce) = run(0.0, 0.0);
        let (area_reg, _) = run(1.0, 0.0);
        let (_, eq_eq) = run(0.0, 1.0);
        assert!(
            area_reg < area_ce * 0.8,
            "seed {seed}: area: CE {area_ce:.3} vs CE+area {area_reg:.3}"
        );
        assert!(
            eq_eq < eq_ce * 0.8,
            "seed {seed}: equivariance error: CE {eq_ce:.3} vs CE+equivariance {eq_eq:.3}"
        );
    }
}
