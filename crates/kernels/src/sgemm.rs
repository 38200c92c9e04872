//! A blocked f32 matrix product `C (+)= A · B` whose operands are *packed by the caller*: the
//! convolution packs its `B` straight from the image (implicit `im2col`), so the patch matrix
//! is never written out and read back.
//!
//! The loop nest is the classic one (Goto/BLIS): `B` in `KC × NC` blocks packed into panels of
//! [`NR`] columns, `A` in `MC × KC` blocks packed into panels of [`MR`] rows, and a register
//! microkernel computing an `MR × NR` tile with fused multiply-adds. On x86-64 with AVX2 and
//! FMA the microkernel uses them (6 × 16: twelve 8-lane accumulators); elsewhere a portable
//! kernel of the same shape runs (correct, slower; candle's own kernels are no faster there).

use rayon::prelude::*;

/// Rows of the register tile.
pub const MR: usize = 6;
/// Columns of the register tile.
pub const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 72;
const NC: usize = 1024;

/// Fills a packed block of `A`: `(i0, p0, mc, kc, buf)` writes rows `i0..i0+mc`, depths
/// `p0..p0+kc` as `⌈mc/MR⌉` panels, panel `r` at `buf[r·MR·kc..]`, element `(i, p)` of a panel
/// at `p·MR + i`; rows past `mc` zero.
pub trait PackA: Sync {
    /// Pack one block (see the trait).
    fn pack(&self, i0: usize, p0: usize, mc: usize, kc: usize, buf: &mut [f32]);
}

/// Fills a packed block of `B`: `(p0, j0, kc, nc, buf)` writes depths `p0..p0+kc`, columns
/// `j0..j0+nc` as `⌈nc/NR⌉` panels, panel `s` at `buf[s·NR·kc..]`, element `(p, j)` of a panel
/// at `p·NR + j`; columns past `nc` zero.
pub trait PackB: Sync {
    /// Pack one block (see the trait).
    fn pack(&self, p0: usize, j0: usize, kc: usize, nc: usize, buf: &mut [f32]);
}

/// A strided matrix: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl PackA for Strided<'_> {
    fn pack(&self, i0: usize, p0: usize, mc: usize, kc: usize, buf: &mut [f32]) {
        for (r, panel) in buf.chunks_mut(MR * kc).take(mc.div_ceil(MR)).enumerate() {
            let rows = (mc - r * MR).min(MR);
            let panel = &mut panel[..MR * kc];
            if rows < MR {
                panel.fill(0.0);
            }
            let base = |i: usize| (i0 + r * MR + i) * self.rs + p0 * self.cs;
            if self.cs == 1 && rows == MR {
                // Six contiguous rows, read side by side, written in order.
                let src: [&[f32]; MR] = std::array::from_fn(|i| &self.data[base(i)..base(i) + kc]);
                for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    for (d, s) in dst.iter_mut().zip(&src) {
                        *d = s[p];
                    }
                }
            } else if self.rs == 1 && rows == MR {
                // Columns contiguous: each depth's MR rows are adjacent in memory.
                for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    let at = base(0) + p * self.cs;
                    let dst: &mut [f32; MR] = dst.try_into().expect("MR");
                    *dst = self.data[at..at + MR].try_into().expect("MR");
                }
            } else {
                for i in 0..rows {
                    let b = base(i);
                    for p in 0..kc {
                        panel[p * MR + i] = self.data[b + p * self.cs];
                    }
                }
            }
        }
    }
}

/// Depths packed together by the row-major packers: each panel then receives
/// `PACK_ROWS · NR` contiguous values per visit while the source is read as `PACK_ROWS`
/// sequential streams.
pub const PACK_ROWS: usize = 8;

impl PackB for Strided<'_> {
    fn pack(&self, p0: usize, j0: usize, kc: usize, nc: usize, buf: &mut [f32]) {
        let full = nc / NR;
        if self.cs == 1 {
            for q in (0..kc).step_by(PACK_ROWS) {
                let rows = PACK_ROWS.min(kc - q);
                for (s, panel) in buf.chunks_mut(NR * kc).take(full).enumerate() {
                    for p in q..q + rows {
                        let base = (p0 + p) * self.rs + j0 + s * NR;
                        let src: &[f32; NR] = self.data[base..base + NR].try_into().expect("NR");
                        let dst: &mut [f32; NR] =
                            (&mut panel[p * NR..(p + 1) * NR]).try_into().expect("NR");
                        *dst = *src;
                    }
                }
            }
        }
        for (s, panel) in buf.chunks_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
            if self.cs == 1 && s < full {
                continue; // done above
            }
            let cols = (nc - s * NR).min(NR);
            if cols < NR {
                panel.fill(0.0);
            }
            let jb = j0 + s * NR;
            if self.cs == 1 {
                for p in 0..kc {
                    let base = (p0 + p) * self.rs + jb;
                    panel[p * NR..p * NR + cols].copy_from_slice(&self.data[base..base + cols]);
                }
            } else {
                for j in 0..cols {
                    let base = p0 * self.rs + (jb + j) * self.cs;
                    for p in 0..kc {
                        panel[p * NR + j] = self.data[base + p * self.rs];
                    }
                }
            }
        }
    }
}

/// Whether the AVX2 + FMA microkernel can run here.
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SIMD.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C[i][j] (+)= Σ_p a[p·MR + i] · b[p·NR + j]` for a full `MR × NR` tile of `C` at `c` (row
/// stride `ldc`).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` and `b` must hold `kc·MR` and `kc·NR` elements, and
/// `c + i·ldc + j` (`i < MR`, `j < NR`) must be valid for reads and writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    use std::arch::x86_64::*;
    let (mut a, mut b) = (a, b);
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    for _ in 0..kc {
        // SAFETY (all of this block): within the bounds the caller guarantees.
        let (b0, b1) = unsafe { (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))) };
        for i in 0..MR {
            let ai = unsafe { _mm256_broadcast_ss(&*a.add(i)) };
            acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
        }
        unsafe {
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    for i in 0..MR {
        unsafe {
            let row = c.add(i * ldc);
            let (mut lo, mut hi) = (acc[2 * i], acc[2 * i + 1]);
            if add {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(row.add(8)));
            }
            _mm256_storeu_ps(row, lo);
            _mm256_storeu_ps(row.add(8), hi);
        }
    }
}

fn kernel_portable(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    tile.fill(0.0);
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (i, &ai) in ap.iter().enumerate() {
            for (t, &bj) in tile[i * NR..(i + 1) * NR].iter_mut().zip(bp) {
                *t += ai * bj;
            }
        }
    }
}

/// `tile = A_panel · B_panel` (row-major `MR × NR`).
fn kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    let (a, b) = (&a[..kc * MR], &b[..kc * NR]);
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA checked at run time; the slices and the tile are large enough.
        unsafe { kernel_avx2(kc, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), NR, false) };
        return;
    }
    kernel_portable(kc, a, b, tile)
}

/// A raw view of `C` shared by the threads of [`sgemm`]; each writes disjoint columns.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
    ldc: usize,
}
// SAFETY: threads write disjoint column ranges of C (see `sgemm`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Single-threaded product over columns `j_lo..j_hi` of `C`.
#[allow(clippy::too_many_arguments)]
fn sgemm_cols(
    (m, k): (usize, usize),
    (j_lo, j_hi): (usize, usize),
    out: Out,
    accumulate: bool,
    a: &dyn PackA,
    b: &dyn PackB,
) {
    thread_local! {
        static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
            std::cell::RefCell::new((Vec::new(), Vec::new()))
        };
    }
    BUFS.with(|bufs| {
        let (abuf, bbuf) = &mut *bufs.borrow_mut();
        let kc = KC.min(k);
        abuf.resize(MC.min(m).div_ceil(MR) * MR * kc, 0.0);
        bbuf.resize(NC.min(j_hi - j_lo).div_ceil(NR) * NR * kc, 0.0);
        blocks((m, k), (j_lo, j_hi), out, accumulate, a, b, abuf, bbuf);
    });
}

/// The loop nest of [`sgemm_cols`] over its packing buffers.
#[allow(clippy::too_many_arguments)]
fn blocks(
    (m, k): (usize, usize),
    (j_lo, j_hi): (usize, usize),
    out: Out,
    accumulate: bool,
    a: &dyn PackA,
    b: &dyn PackB,
    abuf: &mut [f32],
    bbuf: &mut [f32],
) {
    let mut tile = [0f32; MR * NR];
    for jc in (j_lo..j_hi).step_by(NC) {
        let nc = NC.min(j_hi - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            b.pack(pc, jc, kc, nc, bbuf);
            let add = accumulate || pc > 0;
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                a.pack(ic, pc, mc, kc, abuf);
                for (s, bp) in bbuf.chunks(NR * kc).take(nc.div_ceil(NR)).enumerate() {
                    let j = jc + s * NR;
                    let cols = NR.min(j_hi - j);
                    for (r, ap) in abuf.chunks(MR * kc).take(mc.div_ceil(MR)).enumerate() {
                        let i = ic + r * MR;
                        let rows = MR.min(m - i);
                        let at = i * out.ldc + j;
                        assert!(
                            at + (rows - 1) * out.ldc + cols <= out.len,
                            "sgemm: C out of bounds"
                        );
                        #[cfg(target_arch = "x86_64")]
                        if rows == MR && cols == NR && simd() {
                            let (ap, bp) = (&ap[..kc * MR], &bp[..kc * NR]);
                            // SAFETY: AVX2/FMA checked; the packed panels hold kc·MR and kc·NR
                            // elements; the MR × NR tile at `at` is inside C (asserted) and in
                            // this thread's columns j_lo..j_hi.
                            unsafe {
                                kernel_avx2(
                                    kc,
                                    ap.as_ptr(),
                                    bp.as_ptr(),
                                    out.ptr.add(at),
                                    out.ldc,
                                    add,
                                )
                            };
                            continue;
                        }
                        kernel(kc, ap, bp, &mut tile);
                        for (ti, trow) in tile.chunks(NR).take(rows).enumerate() {
                            // SAFETY: in bounds (asserted); this thread owns columns
                            // j_lo..j_hi of every row, and j..j+cols lies inside them.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(out.ptr.add(at + ti * out.ldc), cols)
                            };
                            if add {
                                dst.iter_mut().zip(trow).for_each(|(d, t)| *d += t);
                            } else {
                                dst.copy_from_slice(&trow[..cols]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `C (m × n, row stride ldc) (+)= A (m × k) · B (k × n)`, with `A` and `B` supplied by their
/// packers; columns split across `threads` threads (1: run on the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    a: &dyn PackA,
    b: &dyn PackB,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= c.len(), "sgemm: C too small");
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let out = Out {
        ptr: c.as_mut_ptr(),
        len: c.len(),
        ldc,
    };
    let parts = threads.clamp(1, n.div_ceil(NR));
    if parts == 1 {
        return sgemm_cols((m, k), (0, n), out, accumulate, a, b);
    }
    let per = n.div_ceil(NR).div_ceil(parts) * NR;
    (0..parts).into_par_iter().for_each(|t| {
        let (lo, hi) = (t * per, ((t + 1) * per).min(n));
        if lo < hi {
            sgemm_cols((m, k), (lo, hi), out, accumulate, a, b);
        }
    });
}

/// One register tile `A_panel · B_panel` over depth `kc` (`a`: `kc × MR` packed, `b`: `kc × NR`
/// packed), with the SIMD kernel if asked and available, else the portable one: lets tests
/// check the two against each other.
#[doc(hidden)]
pub fn tile(kc: usize, a: &[f32], b: &[f32], simd_if_available: bool) -> [f32; MR * NR] {
    let mut t = [0f32; MR * NR];
    if simd_if_available {
        kernel(kc, a, b, &mut t);
    } else {
        kernel_portable(kc, &a[..kc * MR], &b[..kc * NR], &mut t);
    }
    t
}
