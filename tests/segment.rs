//! The segmenter on its own: a tiny DeepLab V3+ must be able to fit a handful of synthetic
//! tiles (mIoU ≥ 0.9 on the images it trained on) — if it cannot, nothing downstream means
//! anything.

use candle_core::{Device, Tensor};
use wsss::config::{Arch, Optimizer as OptKind, SegLoss};
use wsss::data::loader::to_chw;
use wsss::data::registry::{SynthGenerator, SynthParams};
use wsss::data::synth;
use wsss::metrics::segmentation::Confusion;
use wsss::model::deeplab::{DeepLab, DeepLabConfig};
use wsss::model::{init, BackboneSpec};
use wsss::train::optim::Optimizer;
use wsss::train::segment::seg_loss;

#[test]
fn tiny_deeplab_overfits_a_few_synthetic_tiles() {
    // The first generator's solid tumour regions: what is tested is that the model and its
    // loss can fit labels at all (the `tissue` tiles reach mIoU 0.86 in the same 80 steps).
    let params = SynthParams {
        size: 64,
        generator: SynthGenerator::Nuclei,
        ..SynthParams::default()
    };
    let tiles: Vec<_> = (0..4)
        .map(|i| synth::tile(&params, true, "P01", i))
        .collect();
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for (img, mask) in &tiles {
        xs.extend(to_chw(img));
        ys.extend(mask.pixels().map(|p| u8::from(p.0[0] > 0)));
    }
    assert!(ys.contains(&1) && ys.contains(&0));
    let dev = Device::Cpu;
    let x = Tensor::from_vec(xs, (4, 3, 64, 64), &dev).unwrap();
    let vm = candle_nn::VarMap::new();
    let model = DeepLab::new(
        DeepLabConfig {
            encoder: BackboneSpec {
                arch: Arch::Vgg16,
                batch_norm: true,
                width: 0.125,
                output_stride_8: false,
            },
            classes: 2,
            aspp_channels: None,
        },
        init::var_builder(&vm, 3, &dev),
    )
    .unwrap();
    let vars: Vec<_> = vm.data().lock().unwrap().clone().into_iter().collect();
    let mut opt = Optimizer::new(OptKind::Adamw, vars, 3e-3, 0.0, 0.9).unwrap();
    for _ in 0..80 {
        let loss = seg_loss(&model.forward_t(&x, true).unwrap(), &ys, SegLoss::Ce).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let pred: Vec<u8> = model
        .forward_t(&x, false)
        .unwrap()
        .argmax(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let mut c = Confusion::new(2);
    c.add(&ys, &pred);
    let miou = c.scores().miou;
    assert!(miou >= 0.9, "mIoU after overfitting: {miou}");
}
