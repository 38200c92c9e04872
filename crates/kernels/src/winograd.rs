//! 3×3 stride-1 convolutions (padding 1, no dilation) by Winograd's minimal filtering
//! F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016):
//! each 2×2 block of outputs is `Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A` for the 4×4 input tile `d`, so
//! the products per output fall from 9·C to 4·C (2.25× fewer multiply-adds than the GEMM path).
//!
//! Layout: the weights are transformed once per call into `U` (`16 × O × C`, one `O × C`
//! matrix per position ξ of the 4×4 transformed tile); the input is transformed band by band
//! (a few rows of tiles, 1 MiB of `V` where the channels allow, at least 128 tiles so the
//! products are not too short — 4 MiB at 512 channels) into `V`
//! (`16 × C × T`), then the 16 products `M_ξ = U_ξ · V_ξ` run on the packed GEMM
//! ([`crate::sgemm`]) and the output transform writes the 2×2 blocks, bias and ReLU fused.
//! Bands run in parallel, each on one thread; every output element is computed by one band in
//! a fixed order, so results do not depend on the number of threads.
//!
//! The input gradient of such a convolution is itself one (`∂x = conv(∂y, W′)` with
//! `W′[c][o] = rot180(W[o][c])`, padding 1), so [`backward_data`] is the forward pass on the
//! adjoint weights. The weight gradient ([`backward_filter`]) is the adjoint of the forward
//! arithmetic: `∂U_ξ = Σ_t ∂M_ξ · V_ξᵀ` over the tiles, `∂M = A ∂Y Aᵀ`, `∂W = Gᵀ ∂U G`.
//!
//! Numerics: the transforms add and subtract inputs before the products, so results differ
//! from the direct sum in the last bits (relative error ~1e-6 on random data; tested against
//! the direct convolution in f64).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::conv::Geom;
use crate::sgemm::{isa, sgemm_on, Prepacked, Strided};

/// Floats of one band's transformed input or output (`16 × channels × tiles`): 1 MiB.
const BAND_FLOATS: usize = 1 << 18;
/// Fewest tiles (GEMM columns) of a band when the maps allow.
const MIN_TILES: usize = 128;

/// Whether a convolution runs on this path: 3×3, stride 1, padding 1, no dilation, and a shape
/// where it beats the GEMM path. The rule was measured with the kernels' micro-benchmark
/// (`examples/kernels_bench.rs`; table in `reports/bench.md`), batch 8 on 2 cores: from 32 input
/// and output channels on maps of at least 24×24 pixels (1.1–2.0× faster from 28² up, except the forward of 32→32 @32² at 0.95×; about even at
/// 16², 0.80–1.15×; mostly slower at 8² and below, 0.23–0.86×).
pub fn suits(g: &Geom) -> bool {
    computable(g) && g.c >= 32 && g.o >= 32 && g.h >= 24 && g.w >= 24
}

/// Whether `g` is a convolution this path can compute at all (the arithmetic, not the speed
/// rule of [`suits`]).
pub fn computable(g: &Geom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.dil == 1
        && g.b > 0
        && g.h > 0
        && g.w > 0
}

/// `U = G g Gᵀ` for every 3×3 kernel: `w` is `O × C × 3 × 3`; returns `16 × O × C`. With
/// `adjoint`, the kernels of the input gradient instead: `W′[c][o] = rot180(W[o][c])`, returned
/// as `16 × C × O`.
pub fn transform_weights(w: &[f32], o: usize, c: usize, adjoint: bool) -> Vec<f32> {
    assert_eq!(w.len(), o * c * 9, "winograd: weight size");
    let (rows, cols) = if adjoint { (c, o) } else { (o, c) };
    let mut u = vec![0f32; 16 * rows * cols];
    for oi in 0..o {
        for ci in 0..c {
            let k = &w[(oi * c + ci) * 9..][..9];
            let g: [[f32; 3]; 3] = if adjoint {
                std::array::from_fn(|y| std::array::from_fn(|x| k[(2 - y) * 3 + (2 - x)]))
            } else {
                std::array::from_fn(|y| std::array::from_fn(|x| k[y * 3 + x]))
            };
            // G g: 4 × 3, G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
            let mut gg = [[0f32; 3]; 4];
            for x in 0..3 {
                let (a, b, cc) = (g[0][x], g[1][x], g[2][x]);
                gg[0][x] = a;
                gg[1][x] = 0.5 * (a + b + cc);
                gg[2][x] = 0.5 * (a - b + cc);
                gg[3][x] = cc;
            }
            let (r, s) = if adjoint { (ci, oi) } else { (oi, ci) };
            for (k, row) in gg.iter().enumerate() {
                let (a, b, cc) = (row[0], row[1], row[2]);
                let t = [a, 0.5 * (a + b + cc), 0.5 * (a - b + cc), cc];
                for (l, v) in t.into_iter().enumerate() {
                    u[((k * 4 + l) * rows + r) * cols + s] = v;
                }
            }
        }
    }
    u
}

/// `relu?(conv(x, w) + bias)` for a convolution [`computable`] here: `x` is `B × C × H × W`,
/// `w` is `O × C × 3 × 3`, `bias` has `O` elements; returns `B × O × H × W`.
///
/// # Panics
/// The geometry is not [`computable`], or a slice has the wrong size.
pub fn forward(g: &Geom, relu: bool, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    assert!(
        computable(g),
        "winograd: not a 3×3 stride-1 padding-1 conv: {g:?}"
    );
    assert_eq!(bias.len(), g.o, "winograd: bias size");
    let u = transform_weights(w, g.o, g.c, false);
    run((g.b, g.c, g.o), (g.h, g.w), x, &u, Some(bias), relu)
}

/// The input gradient `∂x` (`B × C × H × W`) of a convolution [`computable`] here, from the
/// output gradient `grad` (`B × O × H × W`, after any ReLU mask) and the weights
/// (`O × C × 3 × 3`).
///
/// # Panics
/// As [`forward`].
pub fn backward_data(g: &Geom, grad: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(
        computable(g),
        "winograd: not a 3×3 stride-1 padding-1 conv: {g:?}"
    );
    let u = transform_weights(w, g.o, g.c, true);
    run((g.b, g.o, g.c), (g.h, g.w), grad, &u, None, false)
}

/// Bands of tile rows (`(first, last)` units, a unit being one tile row of one image) for maps of
/// `h × w` in a batch of `b`, with `channels` the larger channel count: at least [`MIN_TILES`]
/// tiles and at most [`BAND_FLOATS`] floats of `V` per band where the maps allow, and at least
/// `split` bands. The forward pass splits by the thread count (a band's outputs do not depend
/// on the split); the weight gradient, which sums over bands, by the constant [`GROUPS`].
fn bands(b: usize, (h, w): (usize, usize), channels: usize, split: usize) -> Vec<(usize, usize)> {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = (BAND_FLOATS / (16 * channels)).max(MIN_TILES);
    let units = b * th;
    let rows = (tiles / tw).clamp(1, units.div_ceil(split.max(1)));
    (0..units)
        .step_by(rows)
        .map(|u0| (u0, (u0 + rows).min(units)))
        .collect()
}

/// Groups the weight gradient's bands are summed in: a constant, so that the order of the sums
/// (bands in order within a group, then groups in order) does not depend on the thread count.
const GROUPS: usize = 4;

/// The weight gradient `∂W` (`O × C × 3 × 3`) of a convolution [`computable`] here, from the
/// output gradient `grad` (`B × O × H × W`, after any ReLU mask) and the input `x`
/// (`B × C × H × W`): the adjoint of the forward pass's arithmetic, `∂U_ξ = Σ_t ∂M_ξ · V_ξᵀ`
/// with `∂M = A ∂Y Aᵀ` per tile, then `∂W = Gᵀ ∂U G`.
///
/// # Panics
/// As [`forward`].
pub fn backward_filter(g: &Geom, grad: &[f32], x: &[f32]) -> Vec<f32> {
    assert!(
        computable(g),
        "winograd: not a 3×3 stride-1 padding-1 conv: {g:?}"
    );
    let (b, ci, co, h, w) = (g.b, g.c, g.o, g.h, g.w);
    assert_eq!(x.len(), b * ci * h * w, "winograd: input size");
    assert_eq!(grad.len(), b * co * h * w, "winograd: gradient size");
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let bands = bands(b, (h, w), ci.max(co), GROUPS);
    let per = bands.len().div_ceil(GROUPS);
    let isa = isa();
    let partials: Vec<Vec<f32>> = bands
        .par_chunks(per)
        .with_max_len(1)
        .map(|group| {
            let mut du = vec![0f32; 16 * co * ci];
            SCRATCH.with(|s| {
                let s = &mut *s.borrow_mut();
                for &(u0, u1) in group {
                    let nt = (u1 - u0) * tw;
                    s.v.resize(16 * ci * nt, 0.0);
                    s.m.resize(16 * co * nt, 0.0);
                    for u in u0..u1 {
                        let (i, ti) = (u / th, u % th);
                        let at = ((u - u0) * tw, nt);
                        input_transform(&x[i * ci * h * w..][..ci * h * w], ci, (h, w), ti, at, s);
                        let gi = &grad[i * co * h * w..][..co * h * w];
                        gradient_transform(gi, co, (h, w), ti, at, &mut s.m, &mut s.tmp);
                    }
                    for xi_ in 0..16 {
                        let dm = Strided::rows(&s.m[xi_ * co * nt..][..co * nt], nt);
                        let vt = Strided {
                            data: &s.v[xi_ * ci * nt..][..ci * nt],
                            rs: 1,
                            cs: nt,
                        };
                        let d = &mut du[xi_ * co * ci..][..co * ci];
                        sgemm_on(isa, (co, ci, nt), d, ci, true, (&dm, &vt), 1);
                    }
                }
            });
            du
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut du = parts.next().unwrap_or_else(|| vec![0f32; 16 * co * ci]);
    for p in parts {
        du.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    // ∂W = Gᵀ ∂U G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
    let gt = |u: [f32; 4]| {
        [
            u[0] + 0.5 * (u[1] + u[2]),
            0.5 * (u[1] - u[2]),
            0.5 * (u[1] + u[2]) + u[3],
        ]
    };
    let mut dw = vec![0f32; co * ci * 9];
    let plane = co * ci;
    for oc in 0..plane {
        let e = |k: usize, l: usize| du[(k * 4 + l) * plane + oc];
        // Down k for each l, then across l.
        let cols: [[f32; 3]; 4] = std::array::from_fn(|l| gt([e(0, l), e(1, l), e(2, l), e(3, l)]));
        for y in 0..3 {
            let row = gt([cols[0][y], cols[1][y], cols[2][y], cols[3][y]]);
            dw[oc * 9 + y * 3..][..3].copy_from_slice(&row);
        }
    }
    dw
}

/// `∂M = A ∂Y Aᵀ` of tile row `ti` of one image's output gradient `gi` (`co × h × w`) into `dm`
/// (`16 × co × nt`, tile columns `at..at + ⌈w/2⌉`), `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`;
/// outputs outside the map count as zero.
fn gradient_transform(
    gi: &[f32],
    co: usize,
    (h, w): (usize, usize),
    ti: usize,
    (at, nt): (usize, usize),
    dm: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let tw = w.div_ceil(2);
    let plane = co * nt;
    tmp.resize(12 * tw, 0.0);
    for o in 0..co {
        let go = &gi[o * h * w..][..h * w];
        let (cols, rows) = tmp.split_at_mut(4 * tw);
        // Even and odd columns of the tile's two output rows: cols[(2·dy + parity)·tw..].
        for dy in 0..2 {
            let y = 2 * ti + dy;
            let (ev, od) = cols[2 * dy * tw..(2 * dy + 2) * tw].split_at_mut(tw);
            ev.fill(0.0);
            od.fill(0.0);
            if y >= h {
                continue;
            }
            let row = &go[y * w..][..w];
            let pairs = row.chunks_exact(2);
            if let [last] = pairs.remainder() {
                ev[tw - 1] = *last; // w odd: the last column is even, its odd partner is outside
            }
            for ((e, o), pair) in ev.iter_mut().zip(od.iter_mut()).zip(pairs) {
                *e = pair[0];
                *o = pair[1];
            }
        }
        let (e0, o0, e1, o1) = (
            &cols[..tw],
            &cols[tw..2 * tw],
            &cols[2 * tw..3 * tw],
            &cols[3 * tw..],
        );
        // Rows of A ∂Y (A = [[1, 0], [1, 1], [1, −1], [0, −1]]): y0, y0 + y1, y0 − y1, −y1, on
        // the even (rows[2k·tw..]) and the odd (rows[(2k + 1)·tw..]) columns.
        {
            let mut r = rows.chunks_exact_mut(tw);
            let mut next = || r.next().expect("8 rows");
            let (re0, ro0, re1, ro1, re2, ro2, re3, ro3) = (
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
            );
            for j in 0..tw {
                re0[j] = e0[j];
                ro0[j] = o0[j];
                re1[j] = e0[j] + e1[j];
                ro1[j] = o0[j] + o1[j];
                re2[j] = e0[j] - e1[j];
                ro2[j] = o0[j] - o1[j];
                re3[j] = -e1[j];
                ro3[j] = -o1[j];
            }
        }
        let base = o * nt + at;
        for k in 0..4 {
            let (re, ro) = (&rows[2 * k * tw..][..tw], &rows[(2 * k + 1) * tw..][..tw]);
            let at = |l: usize| (k * 4 + l) * plane + base;
            // Columns of (A ∂Y) Aᵀ: e, e + o, e − o, −o.
            for (d, &e) in dm[at(0)..][..tw].iter_mut().zip(re) {
                *d = e;
            }
            for ((d, &e), &o) in dm[at(1)..][..tw].iter_mut().zip(re).zip(ro) {
                *d = e + o;
            }
            for ((d, &e), &o) in dm[at(2)..][..tw].iter_mut().zip(re).zip(ro) {
                *d = e - o;
            }
            for (d, &o) in dm[at(3)..][..tw].iter_mut().zip(ro) {
                *d = -o;
            }
        }
    }
}

/// A raw view of the output shared by the bands; each writes disjoint rows of every plane.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: bands write disjoint (image, row) ranges (see `run`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Out`, which is `Sync`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Per-thread scratch of one band: deinterleaved padded input rows, `V`, `M`, row-stage
/// temporaries.
#[derive(Default)]
struct Scratch {
    rows: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    tmp: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The F(2×2, 3×3) convolution of `x` (`B × ci × H × W`) with transformed weights `u`
/// (`16 × co × ci`), padding 1.
fn run(
    (b, ci, co): (usize, usize, usize),
    (h, w): (usize, usize),
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), b * ci * h * w, "winograd: input size");
    assert_eq!(u.len(), 16 * co * ci, "winograd: transformed weight size");
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let bands = bands(b, (h, w), ci.max(co), crate::threads());
    let mut y = vec![0f32; b * co * h * w];
    let out = Out(y.as_mut_ptr());
    let isa = isa();
    // The 16 U_ξ, packed once for every band's products.
    let packed: Vec<Prepacked> = (0..16)
        .into_par_iter()
        .map(|xi_| {
            let a = Strided::rows(&u[xi_ * co * ci..][..co * ci], ci);
            Prepacked::new(isa, &a, co, ci)
        })
        .collect();
    bands.par_iter().with_max_len(1).for_each(|&(u0, u1)| {
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let nt = (u1 - u0) * tw;
            s.v.resize(16 * ci * nt, 0.0);
            for u in u0..u1 {
                let (i, ti) = (u / th, u % th);
                let xi = &x[i * ci * h * w..][..ci * h * w];
                input_transform(xi, ci, (h, w), ti, ((u - u0) * tw, nt), s);
            }
            s.m.resize(16 * co * nt, 0.0);
            for (xi_, a) in packed.iter().enumerate() {
                let bm = Strided::rows(&s.v[xi_ * ci * nt..][..ci * nt], nt);
                let m = &mut s.m[xi_ * co * nt..][..co * nt];
                sgemm_on(isa, (co, nt, ci), m, nt, false, (a, &bm), 1);
            }
            for u in u0..u1 {
                let (i, ti) = (u / th, u % th);
                let at = ((u - u0) * tw, nt);
                let image = (out, i * co * h * w);
                output_transform(&s.m, co, (h, w), ti, at, (bias, relu), image, &mut s.tmp);
            }
        });
    });
    y
}

/// Tile row `ti` of one image into `V` (`16 × ci × nt`, element `(ξ, c, t)`), at tile columns
/// `at..at + ⌈w/2⌉` of the band.
///
/// Vectorised across the tiles of a tile row: the four input rows are zero-padded and split
/// into even and odd columns (`E_r[j] = d_r[2j]`, `O_r[j] = d_r[2j + 1]` in padded
/// coordinates), `Bᵀ` is applied down the rows on both, and `B` across the columns then reads
/// only contiguous runs: tile `j`'s columns are `E[j], O[j], E[j + 1], O[j + 1]`.
fn input_transform(
    xi: &[f32],
    ci: usize,
    (h, w): (usize, usize),
    ti: usize,
    (at, nt): (usize, usize),
    s: &mut Scratch,
) {
    let tw = w.div_ceil(2);
    let n = tw + 1; // even/odd columns of a padded row of 2·tw + 2
    s.rows.resize(8 * n, 0.0);
    s.tmp.resize(8 * n, 0.0);
    let plane = ci * nt;
    for c in 0..ci {
        let xc = &xi[c * h * w..][..h * w];
        {
            // rows[2r·n..]: E_r, rows[(2r+1)·n..]: O_r; padded column p holds input column p − 1.
            for r in 0..4 {
                let (ev, od) = s.rows[2 * r * n..(2 * r + 2) * n].split_at_mut(n);
                let y = (2 * ti + r) as isize - 1;
                if y < 0 || y as usize >= h {
                    ev.fill(0.0);
                    od.fill(0.0);
                    continue;
                }
                let src = &xc[y as usize * w..][..w];
                // Padded column 2j is input column 2j − 1 (E), 2j + 1 is input column 2j (O):
                // E[0] = 0, O[0] = x[0], then (E[j], O[j]) = (x[2j − 1], x[2j]) pair by pair.
                ev.fill(0.0);
                od.fill(0.0);
                od[0] = src[0];
                let pairs = src[1..].chunks_exact(2);
                let rest = pairs.remainder();
                let (e_rest, o_rest) = (&mut ev[1..], &mut od[1..]);
                for ((e, o), pair) in e_rest.iter_mut().zip(o_rest.iter_mut()).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if let [last] = rest {
                    ev[w / 2] = *last; // w even: x[w − 1] sits at E[w/2]
                }
            }
            // Bᵀ down the rows, on the even and the odd columns: tmp[(2k + p)·n..] for row k of
            // Bᵀ d, parity p; Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
            for p in 0..2 {
                let row = |r: usize| &s.rows[(2 * r + p) * n..][..n];
                let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                let (t0, rest) = s.tmp[p * n..].split_at_mut(n);
                // Rows k of the same parity are 2n apart.
                let (_, rest) = rest.split_at_mut(n);
                let (t1, rest) = rest.split_at_mut(n);
                let (_, rest) = rest.split_at_mut(n);
                let (t2, rest) = rest.split_at_mut(n);
                let (_, rest) = rest.split_at_mut(n);
                let t3 = &mut rest[..n];
                for j in 0..n {
                    t0[j] = d0[j] - d2[j];
                    t1[j] = d1[j] + d2[j];
                    t2[j] = d2[j] - d1[j];
                    t3[j] = d1[j] - d3[j];
                }
            }
            // B across the columns: tile j reads E[j], O[j], E[j + 1], O[j + 1].
            let base = c * nt + at;
            for k in 0..4 {
                let e = &s.tmp[2 * k * n..][..n];
                let o = &s.tmp[(2 * k + 1) * n..][..n];
                let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
                let at = |l: usize| (k * 4 + l) * plane + base;
                let v = &mut s.v;
                for (j, d) in v[at(0)..][..tw].iter_mut().enumerate() {
                    *d = e0[j] - e1[j];
                }
                for (j, d) in v[at(1)..][..tw].iter_mut().enumerate() {
                    *d = o0[j] + e1[j];
                }
                for (j, d) in v[at(2)..][..tw].iter_mut().enumerate() {
                    *d = e1[j] - o0[j];
                }
                for (j, d) in v[at(3)..][..tw].iter_mut().enumerate() {
                    *d = o0[j] - o1[j];
                }
            }
        }
    }
}

/// Writes the 2×2 output blocks of tile row `ti` from `M` (`16 × co × nt`, tile columns
/// `at..at + ⌈w/2⌉`) into one image's output (`co × h × w`, starting `offset` floats into
/// `out`), bias and ReLU applied; vectorised across the tiles like [`input_transform`]. Only
/// output rows `2·ti` and `2·ti + 1` of each plane are touched, each through a slice of that
/// row alone, so bands holding other tile rows of the same image never hold an overlapping
/// reference.
#[allow(clippy::too_many_arguments)]
fn output_transform(
    m: &[f32],
    co: usize,
    (h, w): (usize, usize),
    ti: usize,
    (at, nt): (usize, usize),
    (bias, relu): (Option<&[f32]>, bool),
    (out, offset): (Out, usize),
    tmp: &mut Vec<f32>,
) {
    let tw = w.div_ceil(2);
    let plane = co * nt;
    tmp.resize(12 * tw, 0.0);
    for o in 0..co {
        let bo = bias.map_or(0.0, |b| b[o]);
        {
            let base = o * nt + at;
            let e = |k: usize, l: usize| &m[(k * 4 + l) * plane + base..][..tw];
            // Aᵀ m down the rows: u_l = m0l + m1l + m2l, v_l = m1l − m2l − m3l.
            let (uv, blocks) = tmp.split_at_mut(8 * tw);
            for l in 0..4 {
                let (a, b, c, d) = (e(0, l), e(1, l), e(2, l), e(3, l));
                let (u, v) = uv[2 * l * tw..(2 * l + 2) * tw].split_at_mut(tw);
                for j in 0..tw {
                    u[j] = a[j] + b[j] + c[j];
                    v[j] = b[j] - c[j] - d[j];
                }
            }
            // · A across the columns, bias and ReLU: out[q·tw..] for output (row, col) q.
            let act = |x: f32| {
                let x = x + bo;
                if relu {
                    x.max(0.0)
                } else {
                    x
                }
            };
            for (half, q0) in [(0usize, 0usize), (1, 2)] {
                let r = |l: usize| &uv[(2 * l + half) * tw..][..tw];
                let (a, b, c, d) = (r(0), r(1), r(2), r(3));
                let (left, right) = blocks[q0 * tw..(q0 + 2) * tw].split_at_mut(tw);
                for j in 0..tw {
                    left[j] = act(a[j] + b[j] + c[j]);
                    right[j] = act(b[j] - c[j] - d[j]);
                }
            }
            // Interleave into the two output rows (the last row/column dropped when odd).
            for (dy, q0) in [(0usize, 0usize), (1, 2)] {
                let y = 2 * ti + dy;
                if y >= h {
                    continue;
                }
                // SAFETY: row y of plane o of this image lies inside the output (`run` sized it
                // b·co·h·w and `offset` is an image's start); this unit is the only one writing
                // rows 2·ti and 2·ti + 1 of its image, and no other reference to them exists.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(out.at(offset + (o * h + y) * w), w) };
                let (left, right) = (&blocks[q0 * tw..][..tw], &blocks[(q0 + 1) * tw..][..tw]);
                let mut pairs = row.chunks_exact_mut(2);
                for ((pair, &l), &r) in (&mut pairs).zip(left).zip(right) {
                    pair[0] = l;
                    pair[1] = r;
                }
                if w % 2 == 1 {
                    row[w - 1] = left[tw - 1];
                }
            }
        }
    }
}
