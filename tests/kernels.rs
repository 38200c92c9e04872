//! The CPU kernels (`crates/kernels`) against independent formulas: the packed GEMM against the
//! three-loop product, and the convolution's forward and both gradients against a direct
//! (seven-loop) convolution and its adjoints, at sizes past every blocking boundary (depth over
//! the 256-deep blocks, rows over the 72- and 96-row blocks, columns over the 16-wide panels,
//! the input gradient split into several bands), the register tiles against each other (the
//! AVX-512 and AVX2 paths give the same bits), and the depthwise convolution against its
//! definition and adjoints.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wsss_kernels::conv::{self, Geom};
use wsss_kernels::depthwise::{self, DwGeom};
use wsss_kernels::sgemm::{self, sgemm, sgemm_on, tile, Isa, Prepacked, Strided, NR};
use wsss_kernels::winograd;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

/// `sgemm` equals the three-loop product (in f64) on every register tile this CPU runs, on
/// shapes around and past the block sizes, with transposed operands, accumulation into `C`, a row stride wider than `n`, and 1–3
/// threads.
#[test]
fn sgemm_equals_the_three_loop_product() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shapes = [
        (1, 1, 1),
        (5, 17, 3),
        (6, 16, 256),
        (7, 33, 257),
        (73, 40, 300),
        (150, 70, 520),
        (13, 3100, 20),
        (64, 100, 0),
    ];
    for (case, &(m, n, k)) in shapes.iter().enumerate() {
        for variant in 0..4 {
            let (at, bt, accumulate) = (variant & 1 == 1, variant & 2 == 2, variant % 3 == 0);
            let threads = 1 + (case + variant) % 3;
            let a = rand_vec(&mut rng, m * k);
            let b = rand_vec(&mut rng, k * n);
            let ldc = n + variant;
            let mut c = rand_vec(&mut rng, m * ldc);
            let av = if at {
                Strided {
                    data: &a,
                    rs: 1,
                    cs: m,
                }
            } else {
                Strided::rows(&a, k)
            };
            let bv = if bt {
                Strided {
                    data: &b,
                    rs: 1,
                    cs: k,
                }
            } else {
                Strided::rows(&b, n)
            };
            let mut want: Vec<f64> = c.iter().map(|&v| v as f64).collect();
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|p| {
                            av.data[i * av.rs + p * av.cs] as f64
                                * bv.data[p * bv.rs + j * bv.cs] as f64
                        })
                        .sum();
                    let w = &mut want[i * ldc + j];
                    *w = if accumulate { *w + s } else { s };
                }
            }
            for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
                let mut c = c.clone();
                sgemm_on(isa, (m, n, k), &mut c, ldc, accumulate, (&av, &bv), threads);
                // Columns past n in each row are untouched.
                let what = format!("{} {m}x{n}x{k} variant {variant}", isa.name());
                assert_close(&c, &want, 1e-5, &what);
            }
            sgemm((m, n, k), &mut c, ldc, accumulate, &av, &bv, threads);
            assert_close(&c, &want, 1e-5, &format!("{m}x{n}x{k} variant {variant}"));
        }
    }
}

/// An `A` packed once ([`Prepacked`]) gives the same bits as packing it in every product, on
/// every tile, across depth blocks (k > 256) and row blocks (m > 96), and refuses a block of
/// another blocking.
#[test]
fn prepacked_a_gives_the_same_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
        for &(m, n, k) in &[(1, 5, 1), (100, 37, 300), (16, 64, 256), (200, 20, 600)] {
            let a = rand_vec(&mut rng, m * k);
            let b = rand_vec(&mut rng, k * n);
            let av = Strided::rows(&a, k);
            let bv = Strided::rows(&b, n);
            let packed = Prepacked::new(isa, &av, m, k);
            let (mut c1, mut c2) = (vec![0f32; m * n], vec![0f32; m * n]);
            sgemm_on(isa, (m, n, k), &mut c1, n, false, (&av, &bv), 2);
            sgemm_on(isa, (m, n, k), &mut c2, n, false, (&packed, &bv), 2);
            assert!(
                c1.iter().zip(&c2).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{} {m}x{n}x{k}",
                isa.name()
            );
        }
    }
    let a = vec![1f32; 8 * 8];
    let packed = Prepacked::new(Isa::Portable, &Strided::rows(&a, 8), 8, 8);
    use wsss_kernels::sgemm::PackA;
    assert!(packed.prepacked(0, 0, 8, 8, 6).is_some());
    assert!(
        packed.prepacked(0, 0, 8, 4, 6).is_none(),
        "another depth block"
    );
    assert!(packed.prepacked(0, 0, 8, 8, 16).is_none(), "another tile");
}

/// Every SIMD register tile this CPU runs equals the portable one (within rounding: the
/// portable tile multiplies and adds separately).
#[test]
fn simd_tiles_equal_the_portable_tile() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut ran = Vec::new();
    for isa in [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.supported())
    {
        let mr = isa.mr();
        for kc in [1, 7, 256] {
            let a = rand_vec(&mut rng, kc * mr);
            let b = rand_vec(&mut rng, kc * NR);
            let (s, p) = (tile(isa, kc, &a, &b), tile(Isa::Portable, kc, &a, &b));
            let p = if mr == Isa::Portable.mr() {
                p
            } else {
                // The portable tile has 6 rows: compare row blocks of 6.
                let a = &a;
                (0..mr)
                    .step_by(6)
                    .flat_map(|i0| {
                        let rows = 6.min(mr - i0);
                        let a6: Vec<f32> = (0..kc)
                            .flat_map(|p| {
                                (0..6).map(move |i| if i < rows { a[p * mr + i0 + i] } else { 0.0 })
                            })
                            .collect();
                        tile(Isa::Portable, kc, &a6, &b)[..rows * NR].to_vec()
                    })
                    .collect()
            };
            for (x, y) in s.iter().zip(&p) {
                assert!((x - y).abs() < 1e-4, "{} kc {kc}: {x} vs {y}", isa.name());
            }
        }
        ran.push(isa.name());
    }
    if ran.is_empty() {
        eprintln!("SKIPPED: no SIMD register tile on this CPU");
    }
}

/// The AVX-512 and AVX2 tiles give the same bits, for the GEMM (edge tiles, several depth
/// blocks, accumulation, 1–3 threads) and for the convolution's forward and both gradients: each
/// element is the same chain of fused multiply-adds in depth order. Needs a CPU with both.
#[test]
fn avx512_and_avx2_paths_give_the_same_bits() {
    if !(Isa::Avx512.supported() && Isa::Avx2.supported()) {
        eprintln!("SKIPPED: this CPU lacks AVX-512F (or AVX2): only one SIMD tile to compare");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (case, &(m, n, k)) in [(1, 1, 1), (17, 35, 300), (100, 70, 513), (64, 2000, 64)]
        .iter()
        .enumerate()
    {
        let a = rand_vec(&mut rng, m * k);
        let b = rand_vec(&mut rng, k * n);
        let c0 = rand_vec(&mut rng, m * n);
        let av = Strided::rows(&a, k);
        let bv = Strided::rows(&b, n);
        let accumulate = case % 2 == 1;
        let run = |isa| {
            let mut c = c0.clone();
            sgemm_on(
                isa,
                (m, n, k),
                &mut c,
                n,
                accumulate,
                (&av, &bv),
                1 + case % 3,
            );
            c
        };
        let (x, y) = (run(Isa::Avx512), run(Isa::Avx2));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{m}x{n}x{k}: the tiles differ"
        );
    }
    // The convolution through the process-wide tile; switching between these two tiles while
    // other tests run is harmless because they agree bit for bit (which this checks).
    let g = Geom::same_3x3(2, 5, (13, 11), 19);
    let x = rand_vec(&mut rng, g.b * g.c * g.h * g.w);
    let w = rand_vec(&mut rng, g.o * g.c * 9);
    let bias = rand_vec(&mut rng, g.o);
    let dy = rand_vec(&mut rng, g.b * g.o * g.h * g.w);
    let run = |isa| {
        sgemm::set_isa(isa).expect("supported");
        let y = conv::forward(&g, false, &x, &w, &bias);
        let gr = conv::backward(&g, (true, true), &dy, &x, &w);
        (y, gr.dx, gr.dw)
    };
    let (p, q) = (run(Isa::Avx512), run(Isa::Avx2));
    sgemm::set_isa(Isa::Avx512).expect("supported");
    let same = |u: &[f32], v: &[f32]| u.iter().zip(v).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same(&p.0, &q.0), "conv forward differs");
    assert!(same(&p.1, &q.1), "conv ∂x differs");
    assert!(same(&p.2, &q.2), "conv ∂W differs");
}

/// The adjoints of [`direct`] in f64, summed tap by tap over every (output, tap) pair that reads
/// an input: `(∂x, ∂w, ∂b)` for the output gradient `dy`.
fn direct_grads(g: &Geom, dy: &[f32], x: &[f32], wt: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = g.out();
    let (b, c, h, w, o, k) = (g.b, g.c, g.h, g.w, g.o, g.kh);
    let (mut dx, mut dw, mut db) = (vec![0f64; x.len()], vec![0f64; wt.len()], vec![0f64; o]);
    for bi in 0..b {
        for oi in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[((bi * o + oi) * ho + oy) * wo + ox] as f64;
                    db[oi] += d;
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx * g.dil) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue;
                                }
                                let xi = ((bi * c + ci) * h + iy as usize) * w + ix as usize;
                                let wi = ((oi * c + ci) * k + ky) * g.kw + kx;
                                dx[xi] += d * wt[wi] as f64;
                                dw[wi] += d * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

/// Direct convolution in f64: `y[b][o][oy][ox] = Σ w[o][c][ky][kx] · x[b][c][iy][ix]`.
fn direct(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f64> {
    let (ho, wo) = g.out();
    let mut y = vec![0f64; g.b * g.o * ho * wo];
    for b in 0..g.b {
        for o in 0..g.o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0f64;
                    for c in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx * g.dil) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                    continue;
                                }
                                let xi = ((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = ((o * g.c + c) * g.kh + ky) * g.kw + kx;
                                s += x[xi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                    y[((b * g.o + o) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    y
}

/// Forward, and both gradients by the adjoint identities of the direct convolution: for the
/// linear map `y = conv(x, w)`, `⟨∂y, conv(e_i, w)⟩ = ∂x_i` — computed here by summing
/// `∂y · w` over every (output, tap) pair that reads `x_i` — and likewise for `∂w`.
#[test]
fn conv_equals_the_direct_convolution_and_its_adjoints() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // (b, c, h, w, o, k, stride, pad, dil, band_bytes)
    let cases = [
        (2, 30, 9, 11, 80, 3, 1, 1, 1, 2_000), // K = 270 > 256, O = 80 > 72, several bands
        (1, 4, 20, 13, 7, 3, 2, 1, 1, 1),      // stride 2, one output row per band, batch 1
        (3, 6, 10, 10, 9, 3, 1, 2, 2, 1 << 20), // dilation 2
        (2, 33, 6, 7, 20, 1, 1, 0, 1, 1 << 20), // 1×1: the input is its own patch matrix
        (2, 5, 12, 40, 3, 5, 1, 2, 1, 50_000), // 5×5, 40 wide: 16-wide panels span rows
        (2, 32, 25, 27, 33, 3, 1, 1, 1, 1 << 20), // Winograd: odd sizes, partial 2×2 blocks
    ];
    for (i, &(b, c, h, w, o, k, stride, pad, dil, band_bytes)) in cases.iter().enumerate() {
        let g = Geom {
            b,
            c,
            h,
            w,
            o,
            kh: k,
            kw: k,
            stride,
            pad,
            dil,
            band_bytes,
        };
        // The last case is the one routed to Winograd's F(2×2, 3×3).
        assert_eq!(winograd::suits(&g), i == cases.len() - 1, "case {i}: route");
        let (ho, wo) = g.out();
        let x = rand_vec(&mut rng, b * c * h * w);
        let wt = rand_vec(&mut rng, o * c * k * k);
        let bias = rand_vec(&mut rng, o);
        let y = conv::forward(&g, false, &x, &wt, &bias);
        let mut want = direct(&g, &x, &wt);
        for (j, v) in want.iter_mut().enumerate() {
            *v += bias[(j / (ho * wo)) % o] as f64;
        }
        assert_close(&y, &want, 1e-5, &format!("case {i}: forward"));

        let dy = rand_vec(&mut rng, b * o * ho * wo);
        let gr = conv::backward(&g, (true, true), &dy, &x, &wt);
        let (dx, dw, db) = direct_grads(&g, &dy, &x, &wt);
        assert_close(&gr.dx, &dx, 1e-5, &format!("case {i}: input gradient"));
        assert_close(&gr.dw, &dw, 1e-5, &format!("case {i}: weight gradient"));
        assert_close(&gr.db, &db, 1e-5, &format!("case {i}: bias gradient"));
        // Without the input gradient nothing of its size is returned; ∂W is unchanged.
        let only_w = conv::backward(&g, (false, true), &dy, &x, &wt);
        assert!(only_w.dx.is_empty());
        assert_close(
            &only_w.dw,
            &dw,
            1e-5,
            &format!("case {i}: weight gradient alone"),
        );
    }
}

/// The conv's outputs and gradients are the same bit for bit on 1, 2 or 3 threads (fixed
/// summation order), so runs reproduce across machines with different core counts.
#[test]
fn conv_results_do_not_depend_on_the_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // 7 images: groups of images side by side; 2: one group, each GEMM split across threads;
    // 3 with 32 channels on 25×31 maps: Winograd's path (bands of tile rows across images).
    for (b, c, h, w, o) in [
        (7, 12, 15, 13, 20),
        (2, 12, 15, 13, 20),
        (3, 32, 25, 31, 40),
    ] {
        let g = Geom {
            band_bytes: 4_000,
            ..Geom::same_3x3(b, c, (h, w), o)
        };
        assert_eq!(winograd::suits(&g), c == 32);
        let (ho, wo) = g.out();
        let x = rand_vec(&mut rng, g.b * g.c * g.h * g.w);
        let w = rand_vec(&mut rng, g.o * g.c * 9);
        let bias = rand_vec(&mut rng, g.o);
        let dy = rand_vec(&mut rng, g.b * g.o * ho * wo);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| {
                let y = conv::forward(&g, true, &x, &w, &bias);
                let gr = conv::backward(&g, (true, true), &dy, &x, &w);
                (y, gr.dx, gr.dw, gr.db)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(
                run(threads) == one,
                "batch {b}: {threads} threads differ from 1"
            );
        }
    }
}

/// Kernel taps that read only padding are dropped (`Geom::dead_taps`), and the results are the
/// same bits as the GEMM path on the full kernel (the dropped terms are exact zeros; ∂W is zero
/// at those taps). Cases worked out by hand: DeepLab V3+'s rate-18 ASPP branch on a 16×16 map
/// keeps only its centre tap; rate 12 reads the map from every tap; a 20-wide map keeps rate
/// 18's side taps alive (tap 0 reads columns −18…1); a 3×3 conv on a 1×1 map is a 1×1 conv; a
/// 5×5 rate-3 kernel padded by 6 on a 5×5 map loses its outer ring (tap 0 reads −6…−2); stride
/// 2 rate 8 on 4×4 (outputs 2×2) loses both side taps (−8…−6 and 8…10), stride 2 rate 4 on 6×6
/// does not (tap 0 reads −4…0).
#[test]
fn dead_taps_are_dropped_without_changing_a_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (h, w, k, dil, pad, stride, dead taps at each edge)
    for (h, w, k, dil, pad, stride, want) in [
        (16, 16, 3, 18, 18, 1, 1),
        (16, 16, 3, 12, 12, 1, 0),
        (16, 20, 3, 18, 18, 1, 0),
        (1, 1, 3, 1, 1, 1, 1),
        (5, 5, 5, 3, 6, 1, 1),
        (4, 4, 3, 8, 8, 2, 1),
        (6, 6, 3, 4, 4, 2, 0),
    ] {
        let g = Geom {
            b: 2,
            c: 5,
            h,
            w,
            o: 7,
            kh: k,
            kw: k,
            stride,
            pad,
            dil,
            band_bytes: conv::BAND_BYTES,
        };
        assert_eq!(
            g.dead_taps(),
            want,
            "{h}×{w} k{k} rate {dil} pad {pad} stride {stride}"
        );
        let (ho, wo) = g.out();
        let x = rand_vec(&mut rng, g.b * g.c * h * w);
        let wt = rand_vec(&mut rng, g.o * g.c * k * k);
        let bias = rand_vec(&mut rng, g.o);
        let dy = rand_vec(&mut rng, g.b * g.o * ho * wo);
        let y = conv::forward(&g, true, &x, &wt, &bias);
        let full = conv::forward_gemm(&g, true, &x, &wt, &bias);
        let gr = conv::backward(&g, (true, true), &dy, &x, &wt);
        let gf = conv::backward_gemm(&g, (true, true), &dy, &x, &wt);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        if sgemm::isa() != Isa::Portable {
            assert_eq!(bits(&y), bits(&full), "forward, {h}×{w} rate {dil}");
            assert_eq!(bits(&gr.dx), bits(&gf.dx), "∂x, {h}×{w} rate {dil}");
            assert_eq!(bits(&gr.db), bits(&gf.db), "∂b, {h}×{w} rate {dil}");
            // ±0 at the dead taps: equal as numbers.
            assert!(gr.dw == gf.dw, "∂W, {h}×{w} rate {dil}");
        }
        let want_y = direct(&g, &x, &wt);
        let relu: Vec<f64> = want_y
            .iter()
            .enumerate()
            .map(|(i, v)| (v + bias[(i / (ho * wo)) % g.o] as f64).max(0.0))
            .collect();
        assert_close(&y, &relu, 1e-5, "forward against the direct convolution");
        let edge = |t: usize| t < want || t >= k - want;
        for (j, v) in gr.dw.iter().enumerate() {
            let (ky, kx) = ((j / k) % k, j % k);
            if edge(ky) || edge(kx) {
                assert_eq!(*v, 0.0, "∂W at dead tap ({ky}, {kx})");
            }
        }
    }
}

/// Winograd's F(2×2, 3×3) path on its own, on every size it can compute (not only those the
/// speed rule routes to it): 1×1 maps, odd heights and widths (partial 2×2 blocks), one
/// channel, more channels than a band's minimum, a batch whose bands span images. Forward with
/// bias and ReLU, the input gradient and the weight gradient, against the direct convolution
/// and its adjoints in f64.
#[test]
fn winograd_equals_the_direct_convolution_on_every_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for &(b, c, h, w, o) in &[
        (1, 1, 1, 1, 1),
        (2, 3, 2, 3, 4),
        (1, 5, 7, 4, 3),
        (3, 2, 5, 5, 17),
        (5, 40, 9, 33, 20),
        (4, 7, 3, 64, 9),
    ] {
        let g = Geom::same_3x3(b, c, (h, w), o);
        assert!(winograd::computable(&g));
        let x = rand_vec(&mut rng, b * c * h * w);
        let wt = rand_vec(&mut rng, o * c * 9);
        let bias = rand_vec(&mut rng, o);
        let want: Vec<f64> = direct(&g, &x, &wt)
            .iter()
            .enumerate()
            .map(|(j, v)| (v + bias[(j / (h * w)) % o] as f64).max(0.0))
            .collect();
        let what = format!("{b}×{c}×{h}×{w} → {o}");
        assert_close(
            &winograd::forward(&g, true, &x, &wt, &bias),
            &want,
            1e-5,
            &what,
        );
        // ∂x of a stride-1 padding-1 conv is the conv of ∂y with the flipped, transposed
        // kernels, ∂W the adjoint of the forward arithmetic: both against the direct adjoints.
        let dy = rand_vec(&mut rng, b * o * h * w);
        let (dx, dw, _) = direct_grads(&g, &dy, &x, &wt);
        let got = winograd::backward_data(&g, &dy, &wt);
        assert_close(&got, &dx, 1e-5, &format!("{what}: input gradient"));
        let got = winograd::backward_filter(&g, &dy, &x);
        assert_close(&got, &dw, 1e-5, &format!("{what}: weight gradient"));
    }
}

/// An empty batch of a shape Winograd's rule would take returns empty results instead of
/// panicking (its bands need at least one image).
#[test]
fn an_empty_batch_is_empty_on_every_path() {
    let g = Geom::same_3x3(0, 32, (32, 32), 32);
    assert!(!winograd::suits(&g));
    let (w, bias) = (vec![0.5f32; 32 * 32 * 9], vec![0f32; 32]);
    assert!(conv::forward(&g, true, &[], &w, &bias).is_empty());
    let gr = conv::backward(&g, (true, true), &[], &[], &w);
    assert!(gr.dx.is_empty());
    assert_eq!(gr.dw, vec![0f32; 32 * 32 * 9]);
}

// Depthwise convolution.
/// The definition, one output element at a time.
fn dw_direct(g: &DwGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.b * g.c * g.ho * g.wo];
    for p in 0..g.b * g.c {
        let c = p % g.c;
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut s = 0f32;
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        let iy = (oy * g.stride + ky * g.dil) as isize - g.pad_t as isize;
                        let ix = (ox * g.stride + kx * g.dil) as isize - g.pad_l as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        s += w[c * g.k * g.k + ky * g.k + kx]
                            * x[p * g.h * g.w + iy as usize * g.w + ix as usize];
                    }
                }
                y[p * g.ho * g.wo + oy * g.wo + ox] = s;
            }
        }
    }
    y
}

fn dw_lcg(n: usize, seed: u64) -> Vec<f32> {
    rand_vec(&mut ChaCha8Rng::seed_from_u64(seed), n)
}

fn dw_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Forward equals the definition, and both gradients satisfy the adjoint identities
/// `⟨∂x, x'⟩ = ⟨gy, conv(x', w)⟩` and `⟨∂W, w'⟩ = ⟨gy, conv(x, w')⟩` (the conv is linear in
/// each argument), over symmetric and "SAME" geometries.
#[test]
fn depthwise_matches_the_definition_and_its_adjoints() {
    let mut n = 0;
    for (i, &(b, c, h, w, k, s, d)) in [
        (1, 1, 5, 5, 3, 1, 1),
        (2, 3, 7, 6, 3, 2, 1),
        (1, 4, 9, 11, 5, 2, 1),
        (3, 2, 8, 8, 5, 1, 2),
        (1, 5, 4, 13, 3, 1, 4),
        (2, 1, 1, 1, 3, 1, 1),
        (1, 2, 10, 3, 3, 3, 2),
        (2, 3, 16, 17, 5, 2, 1),
    ]
    .iter()
    .enumerate()
    {
        for same in [false, true] {
            let g = if same {
                DwGeom::same((b, c, h, w), k, s, d)
            } else {
                DwGeom::symmetric((b, c, h, w), k, s, d, d * (k / 2))
            };
            let x = dw_lcg(b * c * h * w, i as u64);
            let wt = dw_lcg(c * k * k, 100 + i as u64);
            let y = depthwise::forward(&g, &x, &wt);
            let r = dw_direct(&g, &x, &wt);
            for (a, e) in y.iter().zip(&r) {
                assert!((a - e).abs() < 1e-5, "{g:?}: {a} vs {e}");
            }
            let gy = dw_lcg(y.len(), 200 + i as u64);
            let x2 = dw_lcg(x.len(), 300 + i as u64);
            let w2 = dw_lcg(wt.len(), 400 + i as u64);
            let dx = depthwise::backward_input(&g, &gy, &wt);
            let dw = depthwise::backward_weight(&g, &gy, &x);
            let lhs = dw_dot(&dx, &x2);
            let rhs = dw_dot(&gy, &dw_direct(&g, &x2, &wt));
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + rhs.abs()), "{g:?}: ∂x");
            let lhs = dw_dot(&dw, &w2);
            let rhs = dw_dot(&gy, &dw_direct(&g, &x, &w2));
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + rhs.abs()), "{g:?}: ∂W");
            n += 1;
        }
    }
    assert_eq!(n, 16);
}

/// TensorFlow "SAME": 224 → 112 with a 3×3 stride-2 kernel pads 0 above and 1 below;
/// a 5×5 stride-2 kernel on 56 pads 1 and 2; stride 1 pads `dil·(k−1)/2` each side.
#[test]
fn depthwise_same_padding_is_tensorflows() {
    let g = DwGeom::same((1, 1, 224, 224), 3, 2, 1);
    assert_eq!((g.pad_t, g.ho), (0, 112));
    assert_eq!(depthwise::same_padding(224, 3, 2, 1), (1, 112));
    let g = DwGeom::same((1, 1, 56, 56), 5, 2, 1);
    assert_eq!((g.pad_t, g.ho), (1, 28));
    assert_eq!(depthwise::same_padding(56, 5, 2, 1), (3, 28));
    let g = DwGeom::same((1, 1, 14, 14), 5, 1, 2);
    assert_eq!((g.pad_t, g.ho), (4, 14));
    assert_eq!(depthwise::same_padding(15, 3, 2, 1), (2, 8));
}

/// The same result bit for bit on 1 and 3 threads.
#[test]
fn depthwise_results_do_not_depend_on_the_thread_count() {
    let g = DwGeom::same((3, 6, 13, 12), 5, 2, 1);
    let x = dw_lcg(3 * 6 * 13 * 12, 1);
    let w = dw_lcg(6 * 25, 2);
    let gy = dw_lcg(3 * 6 * g.ho * g.wo, 3);
    let run = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
            .install(|| {
                (
                    depthwise::forward(&g, &x, &w),
                    depthwise::backward_input(&g, &gy, &w),
                    depthwise::backward_weight(&g, &gy, &x),
                )
            })
    };
    assert_eq!(run(1), run(3));
}
