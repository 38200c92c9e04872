//! A blocked f32 matrix product `C (+)= A · B` whose operands are *packed by the caller*: the
//! convolution packs its `B` straight from the image (implicit `im2col`), so the patch matrix
//! is never written out and read back.
//!
//! The loop nest is the classic one (Goto/BLIS): `B` in `KC × NC` blocks packed into panels of
//! [`NR`] columns, `A` in `MC × KC` blocks packed into panels of `MR` rows, and a register
//! microkernel computing an `MR × NR` tile with fused multiply-adds. The tile is chosen once
//! per process by [`isa`] (see [`Isa`]): on x86-64 with AVX-512F a 16 × 16 tile (sixteen
//! 16-lane accumulators, the `A` values broadcast straight from memory), with AVX2 and FMA a
//! 6 × 16 tile (twelve 8-lane accumulators), elsewhere a portable kernel of the AVX2 tile's
//! shape (correct, slower). Only `MR` (and the block size `MC`, a multiple of it) changes with
//! the tile; `B`'s panels are [`NR`] = 16 wide for all of them, so the convolution's packers
//! do not depend on the CPU.
//!
//! Every SIMD tile computes each element of `C` as the same sequence of single-rounding
//! fused multiply-adds over the depth, in depth order, from zero, then adds it to `C`: the
//! AVX-512 and AVX2 paths give the same bits (tested), and so does any split across threads.

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

/// Rows of the largest register tile (the AVX-512 one); see [`Isa::mr`].
pub const MR_MAX: usize = 16;
/// Columns of the register tile (every [`Isa`]).
pub const NR: usize = 16;
const KC: usize = 256;
const NC: usize = 1024;

/// The instruction set the GEMM's register tile uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 AVX-512F: a 16 × 16 tile.
    Avx512,
    /// x86-64 AVX2 + FMA: a 6 × 16 tile.
    Avx2,
    /// Plain Rust, any CPU: a 6 × 16 tile (separate multiply and add, so its results differ
    /// from the SIMD tiles' in the last bits).
    Portable,
}

impl Isa {
    /// Every tile, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Its name, as `WSSS_CPU_KERNELS` spells it and `run.json` records it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// The tile of a name ([`Isa::name`]).
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Rows of its register tile.
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 6,
        }
    }

    /// Rows of one packed block of `A` (a multiple of [`Isa::mr`]; `MC × KC` floats stay in
    /// the L2 cache).
    fn mc(self) -> usize {
        match self {
            Isa::Avx512 => 96,
            Isa::Avx2 | Isa::Portable => 72,
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Avx512 => 1,
            Isa::Avx2 => 2,
            Isa::Portable => 3,
        }
    }
}

/// The tile every [`sgemm`] of this process uses: set by [`set_isa`], else the fastest this
/// CPU supports.
static ISA: AtomicU8 = AtomicU8::new(0);

/// The register tile in use (see [`set_isa`]).
pub fn isa() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Avx512,
        2 => Isa::Avx2,
        3 => Isa::Portable,
        _ => {
            let best = Isa::ALL
                .into_iter()
                .find(|i| i.supported())
                .unwrap_or(Isa::Portable);
            ISA.store(best.code(), Ordering::Relaxed);
            best
        }
    }
}

/// Use `isa`'s register tile from now on in this process (benchmarks force the AVX2 path on an
/// AVX-512 machine with it). Set it before any GEMM runs: products running at that moment may
/// use either tile.
///
/// # Errors
/// The CPU cannot run it (nothing is changed).
pub fn set_isa(isa: Isa) -> Result<(), String> {
    if !isa.supported() {
        return Err(format!("this CPU cannot run the `{}` kernels", isa.name()));
    }
    ISA.store(isa.code(), Ordering::Relaxed);
    Ok(())
}

/// Fills a packed block of `A` for a tile of `mr` rows: `(i0, p0, mc, kc, mr, buf)` writes
/// rows `i0..i0+mc`, depths `p0..p0+kc` as `⌈mc/mr⌉` panels, panel `r` at `buf[r·mr·kc..]`,
/// element `(i, p)` of a panel at `p·mr + i`; rows past `mc` zero.
pub trait PackA: Sync {
    /// Pack one block (see the trait).
    fn pack(&self, i0: usize, p0: usize, mc: usize, kc: usize, mr: usize, buf: &mut [f32]);
    /// The block already packed, if this operand holds it (see [`Prepacked`]); the GEMM then
    /// reads it in place instead of calling [`PackA::pack`].
    fn prepacked(
        &self,
        _i0: usize,
        _p0: usize,
        _mc: usize,
        _kc: usize,
        _mr: usize,
    ) -> Option<&[f32]> {
        None
    }
}

/// An `A` operand packed once for every block of the GEMM's loop nest on one register tile, so
/// that many products with the same `A` (Winograd's 16 per band of tiles, over every band) do
/// not pack it again each time.
pub struct Prepacked {
    isa: Isa,
    m: usize,
    k: usize,
    /// Blocks in (depth block, row block) order; each `⌈mc/mr⌉·mr·kc` floats.
    blocks: Vec<Vec<f32>>,
}

impl Prepacked {
    /// Packs the `m × k` operand `a` for `isa`'s tile.
    pub fn new(isa: Isa, a: &dyn PackA, m: usize, k: usize) -> Self {
        let (mr, mc_max) = (isa.mr(), isa.mc());
        let mut blocks = Vec::new();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                let mut buf = vec![0f32; mc.div_ceil(mr) * mr * kc];
                a.pack(ic, pc, mc, kc, mr, &mut buf);
                blocks.push(buf);
            }
        }
        Self { isa, m, k, blocks }
    }

    fn block(&self, i0: usize, p0: usize, mc: usize, kc: usize, mr: usize) -> Option<&[f32]> {
        let mc_max = self.isa.mc();
        let fits = mr == self.isa.mr()
            && i0.is_multiple_of(mc_max)
            && p0.is_multiple_of(KC)
            && mc == mc_max.min(self.m.saturating_sub(i0))
            && kc == KC.min(self.k.saturating_sub(p0));
        fits.then(|| {
            let per_depth = self.m.div_ceil(mc_max);
            self.blocks[(p0 / KC) * per_depth + i0 / mc_max].as_slice()
        })
    }
}

impl PackA for Prepacked {
    fn pack(&self, i0: usize, p0: usize, mc: usize, kc: usize, mr: usize, buf: &mut [f32]) {
        let block = self
            .block(i0, p0, mc, kc, mr)
            .expect("Prepacked: a block of another tile or blocking than it was packed for");
        buf[..block.len()].copy_from_slice(block);
    }

    fn prepacked(&self, i0: usize, p0: usize, mc: usize, kc: usize, mr: usize) -> Option<&[f32]> {
        self.block(i0, p0, mc, kc, mr)
    }
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

impl<'a> Strided<'a> {
    /// A row-major matrix whose rows are `rs` elements apart (`cs = 1`).
    pub fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// One full panel of `R` contiguous rows (`cs == 1`), read side by side, written in order.
    fn pack_rows<const R: usize>(&self, first: usize, kc: usize, panel: &mut [f32]) {
        let src: [&[f32]; R] = std::array::from_fn(|i| &self.data[first + i * self.rs..][..kc]);
        for (p, dst) in panel.chunks_exact_mut(R).enumerate() {
            for (d, s) in dst.iter_mut().zip(&src) {
                *d = s[p];
            }
        }
    }
}

impl PackA for Strided<'_> {
    fn pack(&self, i0: usize, p0: usize, mc: usize, kc: usize, mr: usize, buf: &mut [f32]) {
        for (r, panel) in buf.chunks_mut(mr * kc).take(mc.div_ceil(mr)).enumerate() {
            let rows = (mc - r * mr).min(mr);
            let panel = &mut panel[..mr * kc];
            if rows < mr {
                panel.fill(0.0);
            }
            let base = |i: usize| (i0 + r * mr + i) * self.rs + p0 * self.cs;
            if self.cs == 1 && rows == mr && mr == 6 {
                self.pack_rows::<6>(base(0), kc, panel);
            } else if self.cs == 1 && rows == mr && mr == 16 {
                self.pack_rows::<16>(base(0), kc, panel);
            } else if self.rs == 1 && rows == mr {
                // Columns contiguous: each depth's mr rows are adjacent in memory.
                for (p, dst) in panel.chunks_exact_mut(mr).enumerate() {
                    let at = base(0) + p * self.cs;
                    dst.copy_from_slice(&self.data[at..at + mr]);
                }
            } else {
                for i in 0..rows {
                    let b = base(i);
                    for p in 0..kc {
                        panel[p * mr + i] = self.data[b + p * self.cs];
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

/// `C[i][j] (+)= Σ_p a[p·6 + i] · b[p·NR + j]` for a full 6 × [`NR`] tile of `C` at `c` (row
/// stride `ldc`).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` and `b` must hold `kc·6` and `kc·NR` elements, and
/// `c + i·ldc + j` (`i < 6`, `j < NR`) must be valid for reads and writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
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

/// `C[i][j] (+)= Σ_p a[p·16 + i] · b[p·NR + j]` for a full 16 × [`NR`] tile of `C` at `c`
/// (row stride `ldc`): one 16-lane accumulator per row, `B`'s row loaded once per depth and
/// each `A` value broadcast from memory into its fused multiply-add (29 of the 32 vector
/// registers in use).
///
/// # Safety
/// The CPU must have AVX-512F; `a` and `b` must hold `kc·16` and `kc·NR` elements, and
/// `c + i·ldc + j` (`i < 16`, `j < NR`) must be valid for reads and writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 16;
    let (mut a, mut b) = (a, b);
    let mut acc = [_mm512_setzero_ps(); MR];
    for _ in 0..kc {
        // SAFETY (all of this block): within the bounds the caller guarantees.
        let b0 = unsafe { _mm512_loadu_ps(b) };
        for (i, acc) in acc.iter_mut().enumerate() {
            let ai = unsafe { _mm512_set1_ps(*a.add(i)) };
            *acc = _mm512_fmadd_ps(ai, b0, *acc);
        }
        unsafe {
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    for (i, &v) in acc.iter().enumerate() {
        unsafe {
            let row = c.add(i * ldc);
            let v = if add {
                _mm512_add_ps(v, _mm512_loadu_ps(row))
            } else {
                v
            };
            _mm512_storeu_ps(row, v);
        }
    }
}

/// The portable tile: `tile[i·NR + j] = Σ_p a[p·mr + i] · b[p·NR + j]`.
fn kernel_portable(kc: usize, mr: usize, a: &[f32], b: &[f32], tile: &mut [f32]) {
    tile.fill(0.0);
    for (ap, bp) in a.chunks_exact(mr).zip(b.chunks_exact(NR)).take(kc) {
        for (i, &ai) in ap.iter().enumerate() {
            for (t, &bj) in tile[i * NR..(i + 1) * NR].iter_mut().zip(bp) {
                *t += ai * bj;
            }
        }
    }
}

/// `C (+)= A_panel · B_panel` for a full `isa.mr() × NR` tile of `C` at `c` (row stride
/// `ldc`), on `isa`'s kernel.
///
/// # Safety
/// `isa` must be supported by this CPU ([`set_isa`] and [`isa`] guarantee it); `a` and `b` must
/// hold `kc·mr` and `kc·NR` elements, and the tile at `c` must be valid for reads and writes.
unsafe fn full_tile(
    isa: Isa,
    kc: usize,
    (a, b): (&[f32], &[f32]),
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let mr = isa.mr();
    let (a, b) = (&a[..kc * mr], &b[..kc * NR]);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: supported (the caller); the panels are long enough (sliced above).
        Isa::Avx512 => unsafe { kernel_avx512(kc, a.as_ptr(), b.as_ptr(), c, ldc, add) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { kernel_avx2(kc, a.as_ptr(), b.as_ptr(), c, ldc, add) },
        _ => {
            let mut tile = [0f32; MR_MAX * NR];
            let tile = &mut tile[..mr * NR];
            kernel_portable(kc, mr, a, b, tile);
            for (i, trow) in tile.chunks_exact(NR).enumerate() {
                // SAFETY: the tile at `c` is valid (the caller).
                let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
                if add {
                    dst.iter_mut().zip(trow).for_each(|(d, t)| *d += t);
                } else {
                    dst.copy_from_slice(trow);
                }
            }
        }
    }
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
    isa: Isa,
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
        abuf.resize(isa.mc().min(m).div_ceil(isa.mr()) * isa.mr() * kc, 0.0);
        bbuf.resize(NC.min(j_hi - j_lo).div_ceil(NR) * NR * kc, 0.0);
        blocks(
            isa,
            (m, k),
            (j_lo, j_hi),
            out,
            accumulate,
            (a, b),
            (abuf, bbuf),
        );
    });
}

/// The loop nest of [`sgemm_cols`] over its packing buffers.
fn blocks(
    isa: Isa,
    (m, k): (usize, usize),
    (j_lo, j_hi): (usize, usize),
    out: Out,
    accumulate: bool,
    (a, b): (&dyn PackA, &dyn PackB),
    (abuf, bbuf): (&mut [f32], &mut [f32]),
) {
    let (mr, mc_max) = (isa.mr(), isa.mc());
    let mut tile = [0f32; MR_MAX * NR];
    for jc in (j_lo..j_hi).step_by(NC) {
        let nc = NC.min(j_hi - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            b.pack(pc, jc, kc, nc, bbuf);
            let add = accumulate || pc > 0;
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                let apacked: &[f32] = match a.prepacked(ic, pc, mc, kc, mr) {
                    Some(block) => block,
                    None => {
                        a.pack(ic, pc, mc, kc, mr, abuf);
                        abuf
                    }
                };
                for (s, bp) in bbuf.chunks(NR * kc).take(nc.div_ceil(NR)).enumerate() {
                    let j = jc + s * NR;
                    let cols = NR.min(j_hi - j);
                    for (r, ap) in apacked.chunks(mr * kc).take(mc.div_ceil(mr)).enumerate() {
                        let i = ic + r * mr;
                        let rows = mr.min(m - i);
                        let at = i * out.ldc + j;
                        assert!(
                            at + (rows - 1) * out.ldc + cols <= out.len,
                            "sgemm: C out of bounds"
                        );
                        if rows == mr && cols == NR {
                            // SAFETY: `isa` is supported (`isa()`/`set_isa` check it); the packed
                            // panels hold kc·mr and kc·NR elements; the mr × NR tile at `at` is
                            // inside C (asserted) and in this thread's columns j_lo..j_hi.
                            unsafe { full_tile(isa, kc, (ap, bp), out.ptr.add(at), out.ldc, add) };
                            continue;
                        }
                        // An edge tile: computed whole into `tile`, then its part inside C
                        // added (the same additions as the full tile's, so the same bits).
                        // SAFETY: as above, with `tile` (MR_MAX × NR) as the output.
                        unsafe { full_tile(isa, kc, (ap, bp), tile.as_mut_ptr(), NR, false) };
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
/// packers; columns split across `threads` threads (1: run on the calling thread); on the
/// register tile of [`isa`].
///
/// # Panics
/// `C` is shorter than `(m − 1)·ldc + n`.
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
    sgemm_on(isa(), (m, n, k), c, ldc, accumulate, (a, b), threads)
}

/// [`sgemm`] on a given register tile, whatever [`isa`] says: lets tests and benchmarks run
/// two tiles side by side in one process.
///
/// # Panics
/// As [`sgemm`]; or the CPU cannot run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_on(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    (a, b): (&dyn PackA, &dyn PackB),
    threads: usize,
) {
    assert!(
        isa.supported(),
        "sgemm: this CPU cannot run `{}`",
        isa.name()
    );
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
        return sgemm_cols(isa, (m, k), (0, n), out, accumulate, a, b);
    }
    let per = n.div_ceil(NR).div_ceil(parts) * NR;
    (0..parts).into_par_iter().for_each(|t| {
        let (lo, hi) = (t * per, ((t + 1) * per).min(n));
        if lo < hi {
            sgemm_cols(isa, (m, k), (lo, hi), out, accumulate, a, b);
        }
    });
}

/// One register tile `A_panel · B_panel` over depth `kc` (`a`: `kc × isa.mr()` packed, `b`:
/// `kc × NR` packed), row-major `isa.mr() × NR`: lets tests check the tiles against each
/// other.
///
/// # Panics
/// The CPU cannot run `isa`, or the panels are shorter than that.
#[doc(hidden)]
pub fn tile(isa: Isa, kc: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    assert!(isa.supported(), "this CPU cannot run `{}`", isa.name());
    let mut t = vec![0f32; isa.mr() * NR];
    // SAFETY: supported (asserted); `full_tile` slices the panels (panicking if short); `t`
    // holds the mr × NR tile.
    unsafe { full_tile(isa, kc, (a, b), t.as_mut_ptr(), NR, false) };
    t
}
