//! CAM methods: where in the image the classifier found evidence for a class.
//!
//! All return non-negative maps `(B, h, w)` at the resolution of the block they read:
//! - **CAM** (Zhou et al., CVPR 2016): `M = Σ_k w_k^c A_k` with the head's class weights, on
//!   the last block only (where the head reads). Negative evidence is clipped by the caller's
//!   ReLU, as in the peers.
//! - **Grad-CAM** (Selvaraju et al., ICCV 2017): `relu(Σ_k α_k A_k)`, `α_k = mean_ij ∂y^c/∂A_k`.
//!   For a GAP-linear head `∂y^c/∂A_kij = w_k^c / (hw)`, so Grad-CAM = relu(CAM)/(hw): equal
//!   up to scale, which a test checks.
//! - **Grad-CAM++** (Chattopadhay et al., WACV 2018): `α_k = Σ_ij a_kij relu(g_kij)` with
//!   `a = g² / (2g² + Σ_ij A·g³)` (the closed form for an exponential score).
//! - **LayerCAM** (Jiang et al., TIP 2021): `relu(Σ_k relu(g_kij) A_kij)`, pixel-wise weights,
//!   which keep boundary detail on shallower blocks.
//!
//! With `contrast` every method maps the class's logit minus the mean of the other logits
//! instead of the class's logit alone (see [`class_maps`]).
//!
//! Gradient methods may read any block (`backbone.cam_layer`): the network is resumed from the
//! block's output held as a variable, so its gradient is available without hooks.

use candle_core::{Tensor, Var, D};

use crate::config::CamMethod;
use crate::error::{Error, Result};
use crate::model::backbone::{Backbone, BLOCKS};

/// Raw class maps `(B, h, w)` of `class` for a batch `x`, read at block `layer` (0-based;
/// `BLOCKS − 1` is the last). Batch norm runs in inference mode. With `contrast`, the map is
/// of the class's logit *minus the mean of the other classes' logits* (for CAM: the head's
/// weight difference), i.e. the evidence that decides a softmax between the classes; evidence
/// every class shares (tissue that benign and malignant tiles both show) cancels.
pub fn class_maps(
    model: &Backbone,
    x: &Tensor,
    class: usize,
    method: CamMethod,
    layer: usize,
    contrast: bool,
) -> Result<Tensor> {
    class_maps_of(model, x, &[class], method, layer, contrast)?
        .pop()
        .ok_or_else(|| Error::stage("cam", "no class map"))
}

/// The score whose evidence is mapped: row `class` of `w` (`(k, …)`, a head weight or the
/// logits transposed), or under `contrast` that row minus the mean of the others.
fn score_row(w: &Tensor, class: usize, contrast: bool) -> Result<Tensor> {
    let row = w.narrow(0, class, 1)?;
    let k = w.dim(0)?;
    if !contrast || k < 2 {
        return Ok(row);
    }
    let others = ((w.sum_keepdim(0)? - &row)? / (k - 1) as f64)?;
    Ok((row - others)?)
}

/// [`class_maps`] of several classes from one forward pass (one backward pass per class for
/// the gradient methods), in the order of `classes`.
pub fn class_maps_of(
    model: &Backbone,
    x: &Tensor,
    classes: &[usize],
    method: CamMethod,
    layer: usize,
    contrast: bool,
) -> Result<Vec<Tensor>> {
    if layer >= BLOCKS {
        return Err(Error::Usage(format!(
            "backbone.cam_layer = {layer}: blocks are numbered 0 to {}",
            BLOCKS - 1
        )));
    }
    let blocks = model.features.blocks(x, false)?;
    if method == CamMethod::Cam {
        if layer != BLOCKS - 1 {
            return Err(Error::Usage(format!(
                "cam.method = \"cam\" reads the last block (the head's input); backbone.cam_layer = {layer} needs a gradient method (gradcam, gradcam++, layercam)"
            )));
        }
        let a = &blocks[layer];
        let (b, c, h, ww) = a.dims4()?;
        let flat = a.reshape((b, c, h * ww))?;
        return classes
            .iter()
            .map(|&class| {
                let w = score_row(model.head_weight(), class, contrast)?; // (1, C)
                let m = w.broadcast_as((b, 1, c))?.contiguous()?.matmul(&flat)?;
                Ok(m.reshape((b, h, ww))?)
            })
            .collect();
    }
    let a = Var::from_tensor(&blocks[layer].detach())?;
    let feats = if layer == BLOCKS - 1 {
        a.as_tensor().clone()
    } else {
        model
            .features
            .blocks_from(a.as_tensor(), layer + 1, false)?
            .pop()
            .ok_or_else(|| Error::stage("cam", "no feature blocks"))?
    };
    let logits = model.head_logits(&feats)?;
    classes
        .iter()
        .map(|&class| {
            let score = score_row(&logits.t()?, class, contrast)?.sum_all()?;
            let grads = score.backward()?;
            let g = grads
                .get(a.as_tensor())
                .ok_or_else(|| Error::stage("cam", "no gradient reached the CAM layer"))?
                .clone();
            gradient_map(a.as_tensor(), &g, method)
        })
        .collect()
}

/// A gradient method's map from the activations `a` and their gradient `g`.
fn gradient_map(a: &Tensor, g: &Tensor, method: CamMethod) -> Result<Tensor> {
    let m = match method {
        CamMethod::Gradcam => {
            let alpha = g.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
            a.broadcast_mul(&alpha)?.sum(1)?
        }
        CamMethod::GradcamPlusPlus => {
            let g2 = g.sqr()?;
            let g3 = (&g2 * g)?;
            let sum_a = a.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
            let denom = ((&g2 * 2.0)? + g3.broadcast_mul(&sum_a)?)?;
            // a = g² / denom where denom ≠ 0, else 0.
            let safe = denom
                .abs()?
                .ge(1e-12f64)?
                .where_cond(&denom, &denom.ones_like()?)?;
            let coef = (g2 / safe)?;
            let coef = denom
                .abs()?
                .ge(1e-12f64)?
                .where_cond(&coef, &coef.zeros_like()?)?;
            let alpha = (coef * g.relu()?)?
                .sum_keepdim(D::Minus1)?
                .sum_keepdim(D::Minus2)?;
            a.broadcast_mul(&alpha)?.sum(1)?
        }
        CamMethod::Layercam => (g.relu()? * a)?.sum(1)?,
        CamMethod::Cam => unreachable!("handled above"),
    };
    Ok(m.relu()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;
    use crate::model::BackboneSpec;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn model(arch: Arch) -> Backbone {
        let vm = VarMap::new();
        let vb = crate::model::init::var_builder(&vm, 7, &Device::Cpu);
        Backbone::new(
            BackboneSpec {
                arch,
                batch_norm: false,
                width: 0.125,
                output_stride_8: false,
            },
            2,
            vb,
        )
        .unwrap()
    }

    fn input() -> Tensor {
        let v: Vec<f32> = (0..2 * 3 * 48 * 48)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (2, 3, 48, 48), &Device::Cpu).unwrap()
    }

    /// Grad-CAM of a GAP → linear head is relu(CAM) / (h·w), exactly.
    #[test]
    fn gradcam_equals_cam_up_to_scale() {
        for arch in [Arch::Vgg16, Arch::Resnet18] {
            let m = model(arch);
            let x = input();
            for class in 0..2 {
                let cam = class_maps(&m, &x, class, CamMethod::Cam, BLOCKS - 1, false).unwrap();
                let gc = class_maps(&m, &x, class, CamMethod::Gradcam, BLOCKS - 1, false).unwrap();
                let (_, h, w) = cam.dims3().unwrap();
                let expect = (cam.relu().unwrap() / (h * w) as f64).unwrap();
                let diff = (&gc - &expect)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let scale = expect.max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(scale > 0.0, "{arch:?}: CAM is all negative");
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{arch:?} class {class}: {diff}"
                );
            }
        }
    }

    /// The contrast map of a two-class CAM is the difference of the two class maps, and
    /// Grad-CAM of the logit difference is it over h·w (before the ReLU both are linear in the
    /// head's weights).
    #[test]
    fn contrast_is_the_difference_of_class_maps() {
        let m = model(Arch::Vgg16);
        let x = input();
        let maps = class_maps_of(&m, &x, &[0, 1], CamMethod::Cam, BLOCKS - 1, false).unwrap();
        let c1 = class_maps(&m, &x, 1, CamMethod::Cam, BLOCKS - 1, true).unwrap();
        let expect = (&maps[1] - &maps[0]).unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let scale = max_abs(&expect);
        assert!(scale > 0.0);
        assert!(max_abs(&(&c1 - &expect).unwrap()) <= 1e-5 * scale.max(1.0));
        let c0 = class_maps(&m, &x, 0, CamMethod::Cam, BLOCKS - 1, true).unwrap();
        assert!(max_abs(&(&c0 + &expect).unwrap()) <= 1e-5 * scale.max(1.0));
        let gc = class_maps(&m, &x, 1, CamMethod::Gradcam, BLOCKS - 1, true).unwrap();
        let (_, h, w) = c1.dims3().unwrap();
        let gexpect = (c1.relu().unwrap() / (h * w) as f64).unwrap();
        assert!(max_abs(&(&gc - &gexpect).unwrap()) <= 1e-5 * max_abs(&gexpect).max(1.0));
    }

    #[test]
    fn every_method_on_every_block_gives_a_nonnegative_map() {
        let m = model(Arch::Vgg16);
        let x = input();
        for method in [
            CamMethod::Gradcam,
            CamMethod::GradcamPlusPlus,
            CamMethod::Layercam,
        ] {
            for layer in [2, 4] {
                let s = class_maps(&m, &x, 1, method, layer, false).unwrap();
                let side = 48 >> layer.min(4);
                assert_eq!(s.dims(), [2, side, side], "{method:?} {layer}");
                let min = s.min_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(min >= 0.0);
            }
        }
        let e = class_maps(&m, &x, 1, CamMethod::Cam, 2, false).unwrap_err();
        assert!(e.to_string().contains("gradient method"), "{e}");
    }
}
