//! Throughput of the CAM → pseudo label → segmenter side, on the CPU or (`--device cuda`) a GPU:
//! - CAM generation (CAM and Grad-CAM) with VGG-16 (torchvision widths) at 224², batch 8,
//!   including upsampling to a 775×522 GlaS tile and 8-bit quantisation: images/s;
//! - the pseudo-label + metric pass (threshold rule and confusion matrix) over 775×522 maps:
//!   megapixels/s;
//! - data loading: decoding 775×522 PNG tiles and making augmented 224² training views
//!   (random resized crop, flips, rotations, colour and stain jitter): images/s;
//! - DeepLab V3+ (ResNet-18 encoder at torchvision widths, OS16): one AdamW training step and
//!   inference at 256², batch 8: images/s; and sliding-window inference of one 775×522 tile
//!   with 256² windows: seconds.
//!
//! Run: `cargo run --release --example bench_segment [-- --reps N] [--device D]`. Medians over N
//! timed repetitions after one warm-up. When `python3` can import `torch`, the DeepLab V3+ rows
//! also show PyTorch's median on the same device (`bench/torch_reference.py`) and the ratio
//! (`--no-torch` to skip). A benchmark, not a test: nothing asserts on time.

mod common;

use candle_core::Tensor;
use image::{GrayImage, RgbImage};
use wsss::cam::{self, CamSettings};
use wsss::config::{Arch, CamMethod, CamNorm, Optimizer as OptKind, SegBlend, SegLoss};
use wsss::metrics::segmentation::Confusion;
use wsss::model::deeplab::{DeepLab, DeepLabConfig};
use wsss::model::{init, Backbone, BackboneSpec};
use wsss::train::optim::Optimizer;
use wsss::train::segment::{seg_loss, Inference, Segmenter};

const BATCH: usize = 8;

fn tile() -> RgbImage {
    RgbImage::from_fn(775, 522, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    wsss::util::alloc::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let reps = common::flag(&args, "--reps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3usize);
    let (dev, dev_name) = common::device(&args)?;
    let (torch, about) = common::torch_reference(&args, "segment", &dev_name, reps, &[]);
    println!(
        "{dev_name} ({} kernels), {} CPU threads, median of {reps} repetitions after one warm-up",
        common::kernels(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{about}\n");
    println!("| workload | median s | throughput | PyTorch s | wsss / PyTorch |");
    println!("|---|---|---|---|---|");
    let none = common::ratio_cells(0.0, None);

    let vm = candle_nn::VarMap::new();
    let clf = Backbone::new(
        BackboneSpec {
            arch: Arch::Vgg16,
            batch_norm: false,
            width: 1.0,
            output_stride_8: false,
        },
        2,
        init::var_builder(&vm, 0, &dev),
    )?;
    let img = tile();
    let imgs: Vec<&RgbImage> = (0..BATCH).map(|_| &img).collect();
    for method in [CamMethod::Cam, CamMethod::Gradcam] {
        let s = CamSettings {
            method,
            layer: 4,
            tta: false,
            normalize: CamNorm::Minmax,
            size: 224,
            class: 1,
            contrast: false,
        };
        let (t, _, _) = common::time(&dev, reps, || {
            cam::cams(&clf, &imgs, &s, &dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(())
        })?;
        println!(
            "| {method:?} maps, VGG-16 224², batch {BATCH}, to 775×522 | {t:.3} | {:.2} images/s | {none} |",
            BATCH as f64 / t
        );
    }

    // Data loading: 16 PNG tiles on disk, decoded every time (no cache), augmented to 224².
    let dir = tempfile::tempdir()?;
    let samples: Vec<wsss::data::Sample> = (0..16)
        .map(|i| {
            let path = dir.path().join(format!("t{i}.png"));
            img.save(&path)?;
            Ok(wsss::data::Sample {
                id: format!("t{i}"),
                image: path,
                mask: None,
                class: 0,
                patient: "P".into(),
                image_bytes: 0,
                mask_bytes: 0,
            })
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let images = wsss::data::loader::Images::new(&samples, u64::MAX);
    let items: Vec<usize> = (0..samples.len()).collect();
    let aug = wsss::data::loader::Augment::default();
    let (t, _, _) = common::time(&dev, reps, || {
        wsss::data::loader::batch(&images, &items, 224, Some(&aug), 7, &dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(())
    })?;
    println!(
        "| data loading: decode 16 PNG tiles of 775×522 + augment to 224² | {t:.3} | {:.1} images/s | {none} |",
        samples.len() as f64 / t
    );

    let cam_map = GrayImage::from_fn(775, 522, |x, y| image::Luma([((x + y) % 256) as u8]));
    let truth = GrayImage::from_fn(775, 522, |x, _| image::Luma([u8::from(x > 300)]));
    let n = 20;
    let (t, _, _) = common::time(&dev, reps, || {
        for _ in 0..n {
            let l = cam::pseudo_label(&cam_map, 0.7, 0.3, true);
            let mut c = Confusion::new(2);
            c.add(truth.as_raw(), l.as_raw());
            std::hint::black_box(c.scores());
        }
        Ok(())
    })?;
    println!(
        "| pseudo label + confusion, {n} maps of 775×522 | {t:.3} | {:.1} megapixels/s | {none} |",
        n as f64 * 775.0 * 522.0 / 1e6 / t
    );

    let cfg = DeepLabConfig {
        encoder: BackboneSpec {
            arch: Arch::Resnet18,
            batch_norm: true,
            width: 1.0,
            output_stride_8: false,
        },
        classes: 2,
        aspp_channels: None,
    };
    let vm = candle_nn::VarMap::new();
    let model = DeepLab::new(cfg, init::var_builder(&vm, 0, &dev))?;
    let vars: Vec<_> = vm
        .data()
        .lock()
        .map(|d| d.clone().into_iter().collect())
        .unwrap_or_default();
    let mut opt = Optimizer::new(OptKind::Adamw, vars, 1e-4, 1e-4, 0.9)?;
    let x = Tensor::randn(0f32, 1.0, (BATCH, 3, 256, 256), &dev)?;
    let y: Vec<u8> = (0..BATCH * 256 * 256)
        .map(|i| u8::from(i % 512 > 200))
        .collect();
    let (t, _, _) = common::time(&dev, reps, || {
        let l = seg_loss(&model.forward_t(&x, true)?, &y, SegLoss::Ce)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        opt.step(&l.backward()?)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(())
    })?;
    println!(
        "| DeepLab V3+ (ResNet-18, OS16) train step 256², batch {BATCH} | {t:.3} | {:.2} images/s | {} |",
        BATCH as f64 / t,
        common::ratio_cells(t, torch.get("deeplab train 256"))
    );
    let (t, _, _) = common::time(&dev, reps, || {
        std::hint::black_box(model.forward_t(&x, false)?);
        Ok(())
    })?;
    println!(
        "| DeepLab V3+ (ResNet-18, OS16) inference 256², batch {BATCH} | {t:.3} | {:.2} images/s | {} |",
        BATCH as f64 / t,
        common::ratio_cells(t, torch.get("deeplab forward 256"))
    );
    let seg = Segmenter { model, vars: vm };
    let (t, _, _) = common::time(&dev, reps, || {
        let inf = Inference {
            crop: 256,
            scale: 1.0,
            tta: false,
            blend: SegBlend::Mean,
            batch: BATCH,
        };
        seg.predict(&img, &inf, &dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(())
    })?;
    println!(
        "| sliding window, one 775×522 tile, 256² windows (15) | {t:.3} | {:.2} tiles/s | {none} |",
        1.0 / t
    );
    Ok(())
}
