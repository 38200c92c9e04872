//! The GPU path against the CPU kernels (feature `cudnn`): cuDNN's convolution forward, input
//! gradient and weight gradient, through the model's `Conv2d`, equal the CPU GEMM kernels within
//! tolerance on random shapes, strides, paddings and dilations — in exact fp32 (cuDNN's FMA
//! math) and in TF32 (looser: 10-bit mantissa products).
//!
//! Runs where a CUDA device is present; elsewhere it prints SKIPPED (a failure when
//! `WSSS_REQUIRE_GPU` is set, as on a lent GPU machine). CI compiles it without a GPU
//! (`cargo check --features cudnn --test gpu`).
#![cfg(feature = "cudnn")]

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use rand::{Rng, SeedableRng};
use wsss::model::conv::Conv2d;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var_os("WSSS_REQUIRE_GPU").is_some() {
                panic!("WSSS_REQUIRE_GPU is set but no CUDA device: {e}");
            }
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}

/// Uniform draws in [−1, 1) on the CPU from a seeded generator (candle's CPU generator cannot
/// be seeded), so both devices see the same numbers and a failing case can be rerun.
fn uniform(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Largest |a − b| over max |b| (relative to the reference's scale).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Output, ∂x, ∂W and ∂b of `sum(conv(x) · r)` (a random projection of the output, so every
/// output element has its own gradient) on `dev`.
fn conv_and_grads(
    dev: &Device,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    r: &Tensor,
    cfg: Conv2dConfig,
) -> [Tensor; 4] {
    let x = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
    let w = Var::from_tensor(&w.to_device(dev).unwrap()).unwrap();
    let b = Var::from_tensor(&b.to_device(dev).unwrap()).unwrap();
    let conv = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg);
    let y = conv.forward(x.as_tensor()).unwrap();
    let loss = (&y * r.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    [
        cpu(&y),
        cpu(g.get(x.as_tensor()).unwrap()),
        cpu(g.get(w.as_tensor()).unwrap()),
        cpu(g.get(b.as_tensor()).unwrap()),
    ]
}

fn compare(tf32: bool, tol: f32) {
    let Some(dev) = gpu() else {
        return;
    };
    wsss::model::cudnn::set_tf32(tf32);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut worst = [0f32; 4];
    for case in 0..40u64 {
        let b: usize = rng.random_range(1..4);
        let c = [1, 3, 8, 32, 64][rng.random_range(0..5)];
        let o = [1, 5, 16, 48][rng.random_range(0..4)];
        let k: usize = [1, 3, 5][rng.random_range(0..3)];
        let stride: usize = rng.random_range(1..3);
        let dilation: usize = rng.random_range(1..4);
        let padding = rng.random_range(0..(dilation * (k / 2) + 2));
        let (h, w) = (
            rng.random_range(k * dilation..40),
            rng.random_range(k * dilation..40),
        );
        let cfg = Conv2dConfig {
            padding,
            stride,
            dilation,
            groups: 1,
            ..Default::default()
        };
        // Seeded draws, so a failing case can be rerun from its parameters.
        let seed = 1000 * case;
        let (x, wt, bias) = (
            uniform(seed, &[b, c, h, w]),
            uniform(seed + 1, &[o, c, k, k]),
            uniform(seed + 2, &[o]),
        );
        let ho = (h + 2 * padding - dilation * (k - 1) - 1) / stride + 1;
        let wo = (w + 2 * padding - dilation * (k - 1) - 1) / stride + 1;
        let r = uniform(seed + 3, &[b, o, ho, wo]);
        let want = conv_and_grads(&Device::Cpu, &x, &wt, &bias, &r, cfg);
        let got = conv_and_grads(&dev, &x, &wt, &bias, &r, cfg);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dims(), w.dims(), "case {case} output {i}");
            let e = rel_err(g, w);
            worst[i] = worst[i].max(e);
            assert!(
                e < tol,
                "case {case} (b {b}, {c}→{o}, {k}×{k}, stride {stride}, pad {padding}, dil {dilation}, {h}×{w}), \
                 output {i} [y, ∂x, ∂W, ∂b]: relative error {e} ≥ {tol}"
            );
        }
    }
    eprintln!("tf32 = {tf32}: worst relative errors y, ∂x, ∂W, ∂b = {worst:?}");
}

/// fp32 (cuDNN's FMA math) within 10⁻³ of the largest reference value (any error of layout,
/// padding or gradient routing is of order 1); then TF32, which rounds each product's operands
/// to 10 mantissa bits (relative 2⁻¹¹ ≈ 4.9·10⁻⁴ each) over sums of up to 64·25 products (∂W:
/// 3·40·40) with fp32 accumulation: within 1 %. One test, as the math mode is process-wide.
#[test]
fn cudnn_conv_and_gradients_equal_the_cpu_kernels() {
    compare(false, 1e-3);
    compare(true, 1e-2);
    wsss::model::cudnn::set_tf32(false);
}

/// AdamW's one-kernel GPU update equals the CPU's fused pass: three steps on a matrix (weight
/// decay applies) and a vector (none), from the same start and gradients (`sum(p² · r)`), the
/// same formula in the same order, so within a few fp32 ulps (10⁻⁵ relative).
#[test]
fn adamw_kernel_equals_the_cpu_update() {
    use wsss::config::Optimizer as Kind;
    use wsss::train::optim::Optimizer;
    let Some(dev) = gpu() else {
        return;
    };
    let run = |dev: &Device| -> Vec<Vec<f32>> {
        let shapes: [&[usize]; 2] = [&[64, 33], &[1000]];
        let vars: Vec<(String, Var)> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let t = uniform(k as u64, s).to_device(dev).unwrap();
                (format!("p{k}"), Var::from_tensor(&t).unwrap())
            })
            .collect();
        let mut o = Optimizer::new(Kind::Adamw, vars.clone(), 0.01, 0.1, 0.9).unwrap();
        for step in 0..3u64 {
            let mut loss = Tensor::zeros((), candle_core::DType::F32, dev).unwrap();
            for (k, (_, v)) in vars.iter().enumerate() {
                let r = uniform(100 + 10 * step + k as u64, v.dims())
                    .to_device(dev)
                    .unwrap();
                let term = (v.as_tensor().sqr().unwrap() * r)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
            }
            o.step(&loss.backward().unwrap()).unwrap();
        }
        vars.iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let cpu = Device::Cpu;
    let want = run(&cpu);
    let got = run(&dev);
    for (g, w) in got.iter().zip(&want) {
        let t = |v: &Vec<f32>| Tensor::new(v.as_slice(), &cpu).unwrap();
        let e = rel_err(&t(g), &t(w));
        assert!(e < 1e-5, "AdamW GPU vs CPU: relative error {e}");
    }
}
