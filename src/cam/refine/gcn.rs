//! Graph convolutional pseudo labels (`cam.refine = "gcn"`): the talk's "do not use CAM: a
//! graph convolutional network", as in Pan et al. (ICME 2021, "Weakly supervised semantic
//! segmentation of histological tissue via attention accumulation and pixel-level contrast
//! learning") and TGAP-Net (JBHI 2025): the CAM only *seeds* a graph of superpixels, and a
//! GCN trained on the seeds labels every superpixel from what it looks like.
//!
//! Per positive image:
//! 1. **Nodes**: the SLIC superpixels of `cam.refine = "slic"` ([`super::slic`]).
//! 2. **Node features**: the classifier's feature map (the block the CAM reads) averaged over
//!    each superpixel's pixels, and the superpixel's CIELAB mean and standard deviation (colour
//!    and texture); each column standardised over the image's nodes, each of the two groups
//!    scaled to unit expected squared norm so neither drowns the other. The CAM is not a
//!    feature: it only chooses the seeds.
//! 3. **Edges**: superpixels that touch (4-neighbourhood), plus each node's `knn` nearest
//!    neighbours in feature space; weight `exp(−‖xᵢ − xⱼ‖² / σ²)` with σ² the mean squared
//!    distance over the edges; `Â = D^{-½}(W + I)D^{-½}` (Kipf & Welling, ICLR 2017).
//! 4. **Seeds**: nodes whose mean normalised CAM is ≥ `cam.threshold` are foreground, below
//!    `cam.gcn.background_seed` background; classes weighted equally in the loss.
//! 5. **Network**: `softmax(Â · ReLU(Â X W₁ + b₁) · W₂ + b₂)`, Glorot-initialised from the
//!    seed, trained full-batch with Adam (`learning_rate`, `epochs`) on the seeds' cross-entropy
//!    plus `weight_decay/2 · ‖W₁‖²`; no dropout, so a run is a pure function of its inputs and
//!    seed. Gradients by hand (checked against finite differences in the tests); the two big
//!    products go through the project's GEMM.
//! 6. **Back to pixels**: every pixel takes its node's foreground probability `p`, mapped onto
//!    the CAM's scale so the threshold rule decides as `p ≥ 0.5` ([`super::to_cam_scale`]).
//!
//! With seeds of one class only the network has nothing to separate: the node's mean CAM is
//! kept (SLIC voting) and the image is reported as a fallback.

use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wsss_kernels::optim::{adamw, AdamW};
use wsss_kernels::sgemm::{sgemm, Strided};

use super::{image_of, slic, to_cam_scale, FeatureMap, Needs, RefineInput, Refined, Refiner};
use crate::config::GcnConfig;
use crate::error::{Error, Result};

/// `cam.refine = "gcn"` behind the [`Refiner`] seam.
pub struct Gcn(pub GcnConfig);

impl Refiner for Gcn {
    fn name(&self) -> &'static str {
        "gcn"
    }
    fn needs(&self) -> Needs {
        Needs {
            image: true,
            features: true,
        }
    }
    fn fallback_note(&self) -> &'static str {
        "kept the superpixel vote: the seeds were of one class only"
    }
    fn refine(&self, input: &RefineInput) -> Result<Refined> {
        let img = image_of(input, self.name())?;
        let feats = input.features.ok_or_else(|| {
            Error::stage(
                "pseudo",
                "cam.refine = \"gcn\" needs the classifier's features",
            )
        })?;
        if feats.data.len() != feats.channels * feats.height * feats.width
            || feats.height == 0
            || feats.width == 0
        {
            return Err(Error::stage(
                "pseudo",
                format!(
                    "feature map of {} values for {}×{}×{}",
                    feats.data.len(),
                    feats.channels,
                    feats.height,
                    feats.width
                ),
            ));
        }
        let (w, h) = img.dimensions();
        let labs = slic::lab_image(img);
        let sp = slic::slic_lab(&labs, (w, h), slic::region_for(w, h), 10.0, 10);
        let g = Graph::new(&labs, (w, h), input.cam, feats, &sp, self.0.knn as usize);
        let seeds = g.seeds(input.threshold, self.0.background_seed);
        let both = seeds.contains(&Some(true)) && seeds.contains(&Some(false));
        let (values, fallback): (Vec<u8>, bool) = if both {
            let p = train(&g, &seeds, &self.0, input.seed);
            (
                p.iter()
                    .map(|&p| to_cam_scale(p, input.threshold))
                    .collect(),
                false,
            )
        } else {
            (
                g.mean_cam
                    .iter()
                    .map(|&c| (c * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect(),
                true,
            )
        };
        let raw = g.node.iter().map(|&k| values[k as usize]).collect();
        let map = GrayImage::from_raw(w, h, raw)
            .ok_or_else(|| Error::stage("pseudo", "gcn: label map of the wrong size"))?;
        Ok(Refined { map, fallback })
    }
}

/// Symmetric sparse matrix in compressed rows.
#[derive(Debug, Clone)]
pub struct Csr {
    starts: Vec<usize>,
    cols: Vec<u32>,
    vals: Vec<f32>,
}

impl Csr {
    /// `Â · X` for `X` of `n × f` row-major.
    pub fn mul(&self, x: &[f32], f: usize) -> Vec<f32> {
        let n = self.starts.len() - 1;
        let mut out = vec![0f32; n * f];
        for i in 0..n {
            let o = &mut out[i * f..(i + 1) * f];
            for e in self.starts[i]..self.starts[i + 1] {
                let (j, a) = (self.cols[e] as usize, self.vals[e]);
                for (o, v) in o.iter_mut().zip(&x[j * f..(j + 1) * f]) {
                    *o += a * v;
                }
            }
        }
        out
    }

    /// `D^{-½}(W + I)D^{-½}` of weighted undirected edges `(i < j, w)` over `n` nodes.
    pub fn normalised(n: usize, edges: &[(u32, u32, f32)]) -> Self {
        let mut deg = vec![1f32; n];
        let mut rows: Vec<Vec<(u32, f32)>> = (0..n).map(|i| vec![(i as u32, 1.0)]).collect();
        for &(i, j, w) in edges {
            deg[i as usize] += w;
            deg[j as usize] += w;
            rows[i as usize].push((j, w));
            rows[j as usize].push((i, w));
        }
        let mut starts = Vec::with_capacity(n + 1);
        let (mut cols, mut vals) = (vec![], vec![]);
        starts.push(0);
        for (i, mut r) in rows.into_iter().enumerate() {
            r.sort_by_key(|e| e.0);
            for (j, w) in r {
                cols.push(j);
                vals.push(w / (deg[i] * deg[j as usize]).sqrt());
            }
            starts.push(cols.len());
        }
        Self { starts, cols, vals }
    }
}

/// The superpixel graph of one image.
pub struct Graph {
    /// Node of each pixel (row-major).
    pub node: Vec<u32>,
    /// Nodes.
    pub n: usize,
    /// Node features, `n × f` row-major.
    pub x: Vec<f32>,
    /// Feature width.
    pub f: usize,
    /// Mean normalised CAM (`[0, 1]`) of each node.
    pub mean_cam: Vec<f32>,
    /// `Â`.
    pub adj: Csr,
}

impl Graph {
    /// Build the graph (module docs, steps 1–3) of an image in CIELAB (`labs`, row-major,
    /// `(w, h)`) from superpixel labels `sp` (one per pixel).
    pub fn new(
        labs: &[[f32; 3]],
        (w, h): (u32, u32),
        cam: &GrayImage,
        feats: &FeatureMap,
        sp: &[u32],
        knn: usize,
    ) -> Self {
        let (wu, hu) = (w as usize, h as usize);
        // Compact node ids in order of first appearance.
        let mut id = vec![u32::MAX; sp.iter().copied().max().map_or(0, |m| m as usize + 1)];
        let mut node = Vec::with_capacity(sp.len());
        let mut n = 0usize;
        for &s in sp {
            if id[s as usize] == u32::MAX {
                id[s as usize] = n as u32;
                n += 1;
            }
            node.push(id[s as usize]);
        }
        // Colour statistics and mean CAM.
        let mut count = vec![0f64; n];
        let mut lab_sum = vec![[0f64; 6]; n];
        let mut cam_sum = vec![0f64; n];
        for ((&l, c), &k) in labs.iter().zip(cam.as_raw()).zip(&node) {
            let a = &mut lab_sum[k as usize];
            for j in 0..3 {
                a[j] += f64::from(l[j]);
                a[3 + j] += f64::from(l[j]) * f64::from(l[j]);
            }
            cam_sum[k as usize] += f64::from(*c) / 255.0;
            count[k as usize] += 1.0;
        }
        // Classifier features: pixel → grid cell, pooled per node through (node, cell) counts.
        let (fh, fw, ch) = (feats.height, feats.width, feats.channels);
        let cells = fh * fw;
        let mut pairs: Vec<u64> = Vec::with_capacity(sp.len());
        for y in 0..hu {
            let cy = (y * fh / hu).min(fh - 1);
            for x in 0..wu {
                let cx = (x * fw / wu).min(fw - 1);
                pairs.push((u64::from(node[y * wu + x]) << 32) | (cy * fw + cx) as u64);
            }
        }
        pairs.sort_unstable();
        let f = ch + 6;
        let mut xs = vec![0f32; n * f];
        let mut i = 0;
        while i < pairs.len() {
            let key = pairs[i];
            let mut j = i;
            while j < pairs.len() && pairs[j] == key {
                j += 1;
            }
            let (k, cell) = ((key >> 32) as usize, (key & 0xffff_ffff) as usize);
            let wgt = (j - i) as f32 / count[k] as f32;
            let row = &mut xs[k * f..k * f + ch];
            for (c, r) in row.iter_mut().enumerate() {
                *r += wgt * feats.data[c * cells + cell];
            }
            i = j;
        }
        for k in 0..n {
            let (a, m) = (&lab_sum[k], count[k]);
            for j in 0..3 {
                let mean = a[j] / m;
                xs[k * f + ch + j] = mean as f32;
                xs[k * f + ch + 3 + j] = (a[3 + j] / m - mean * mean).max(0.0).sqrt() as f32;
            }
        }
        standardise(&mut xs, n, f, ch);
        let mean_cam = cam_sum
            .iter()
            .zip(&count)
            .map(|(s, c)| (s / c) as f32)
            .collect();
        // Edges: touching superpixels and feature-space neighbours.
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for y in 0..hu {
            for x in 0..wu {
                let a = node[y * wu + x];
                for b in [
                    (x + 1 < wu).then(|| node[y * wu + x + 1]),
                    (y + 1 < hu).then(|| node[(y + 1) * wu + x]),
                ]
                .into_iter()
                .flatten()
                {
                    if a != b {
                        pairs.push((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let d2 = sq_distances(&xs, n, f);
        if knn > 0 && n > 1 {
            let mut order: Vec<usize> = Vec::with_capacity(n);
            for i in 0..n {
                order.clear();
                order.extend((0..n).filter(|&j| j != i));
                order.sort_by(|&a, &b| d2[i * n + a].total_cmp(&d2[i * n + b]).then(a.cmp(&b)));
                for &j in order.iter().take(knn) {
                    pairs.push((i.min(j) as u32, i.max(j) as u32));
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let sigma2 = if pairs.is_empty() {
            1.0
        } else {
            let s: f64 = pairs
                .iter()
                .map(|&(i, j)| f64::from(d2[i as usize * n + j as usize]))
                .sum();
            ((s / pairs.len() as f64) as f32).max(1e-6)
        };
        let edges: Vec<(u32, u32, f32)> = pairs
            .iter()
            .map(|&(i, j)| (i, j, (-d2[i as usize * n + j as usize] / sigma2).exp()))
            .collect();
        Self {
            node,
            n,
            x: xs,
            f,
            mean_cam,
            adj: Csr::normalised(n, &edges),
        }
    }

    /// Seed label of each node: `Some(true)` foreground (mean CAM ≥ `fg`), `Some(false)`
    /// background (< `bg`), `None` unlabelled. Compared on the CAM's 8-bit scale like the
    /// threshold rule.
    pub fn seeds(&self, fg: f64, bg: f64) -> Vec<Option<bool>> {
        self.mean_cam
            .iter()
            .map(|&c| {
                let c = f64::from(c);
                if c >= fg - 0.5 / 255.0 {
                    Some(true)
                } else if c < bg - 0.5 / 255.0 {
                    Some(false)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Standardise each column of `x` (`n × f`) over the rows (constant columns become 0), then
/// scale columns `0..split` by `1/√split` and the rest by `1/√(f − split)`.
fn standardise(x: &mut [f32], n: usize, f: usize, split: usize) {
    for c in 0..f {
        let mean = (0..n).map(|k| f64::from(x[k * f + c])).sum::<f64>() / n.max(1) as f64;
        let var = (0..n)
            .map(|k| (f64::from(x[k * f + c]) - mean).powi(2))
            .sum::<f64>()
            / n.max(1) as f64;
        let group = if c < split { split } else { f - split };
        let scale = if var > 1e-12 {
            1.0 / (var.sqrt() * (group as f64).sqrt())
        } else {
            0.0
        };
        for k in 0..n {
            x[k * f + c] = ((f64::from(x[k * f + c]) - mean) * scale) as f32;
        }
    }
}

/// Squared Euclidean distances between the rows of `x` (`n × f`), `n × n`, through the Gram
/// matrix.
fn sq_distances(x: &[f32], n: usize, f: usize) -> Vec<f32> {
    let mut g = vec![0f32; n * n];
    let a = Strided::rows(x, f);
    let b = Strided {
        data: x,
        rs: 1,
        cs: f,
    };
    sgemm((n, n, f), &mut g, n, false, &a, &b, 1);
    let norms: Vec<f32> = (0..n).map(|i| g[i * n + i]).collect();
    for i in 0..n {
        for j in 0..n {
            g[i * n + j] = (norms[i] + norms[j] - 2.0 * g[i * n + j]).max(0.0);
        }
    }
    g
}

/// The two-layer GCN's parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// `f × hidden`.
    pub w1: Vec<f32>,
    /// `hidden`.
    pub b1: Vec<f32>,
    /// `hidden × 2`.
    pub w2: Vec<f32>,
    /// `2`.
    pub b2: Vec<f32>,
}

impl Params {
    /// Glorot-uniform weights, zero biases.
    pub fn init(f: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut glorot = |a: usize, b: usize| {
            let r = (6.0 / (a + b) as f32).sqrt();
            (0..a * b)
                .map(|_| rng.random_range(-r..r))
                .collect::<Vec<f32>>()
        };
        let w1 = glorot(f, hidden);
        let w2 = glorot(hidden, 2);
        Self {
            w1,
            b1: vec![0.0; hidden],
            w2,
            b2: vec![0.0; 2],
        }
    }
}

/// A forward pass's values kept for the backward pass.
struct Forward {
    z1: Vec<f32>,
    q: Vec<f32>,
    /// Foreground probability of each node.
    p: Vec<f32>,
}

fn forward(p_ax: &[f32], adj: &Csr, n: usize, f: usize, w: &Params) -> Forward {
    let hd = w.b1.len();
    let mut z1 = vec![0f32; n * hd];
    let a = Strided::rows(p_ax, f);
    let b = Strided::rows(&w.w1, hd);
    sgemm((n, hd, f), &mut z1, hd, false, &a, &b, 1);
    for row in z1.chunks_mut(hd) {
        row.iter_mut().zip(&w.b1).for_each(|(z, b)| *z += b);
    }
    let h1: Vec<f32> = z1.iter().map(|&v| v.max(0.0)).collect();
    let q = adj.mul(&h1, hd);
    let p = q
        .chunks(hd)
        .map(|qi| {
            let mut z = [w.b2[0], w.b2[1]];
            for (k, &v) in qi.iter().enumerate() {
                z[0] += v * w.w2[k * 2];
                z[1] += v * w.w2[k * 2 + 1];
            }
            1.0 / (1.0 + (z[0] - z[1]).exp())
        })
        .collect();
    Forward { z1, q, p }
}

/// Seed weights: each class's seeds share half the loss.
fn seed_weights(seeds: &[Option<bool>]) -> Vec<f32> {
    let nf = seeds.iter().filter(|s| **s == Some(true)).count().max(1) as f32;
    let nb = seeds.iter().filter(|s| **s == Some(false)).count().max(1) as f32;
    seeds
        .iter()
        .map(|s| match s {
            Some(true) => 0.5 / nf,
            Some(false) => 0.5 / nb,
            None => 0.0,
        })
        .collect()
}

/// One image's training problem: `ÂX` (`n × f`), `Â`, the seeds, their loss weights and the
/// L2 factor.
struct Fit<'a> {
    p_ax: &'a [f32],
    adj: &'a Csr,
    n: usize,
    f: usize,
    seeds: &'a [Option<bool>],
    sw: Vec<f32>,
    wd: f32,
}

impl Fit<'_> {
    fn forward(&self, w: &Params) -> Forward {
        forward(self.p_ax, self.adj, self.n, self.f, w)
    }

    /// Loss (weighted seed cross-entropy + `wd/2 ‖W₁‖²`) and its gradients.
    fn loss_and_grad(&self, w: &Params) -> (f32, Params) {
        let Fit {
            p_ax,
            adj,
            n,
            f,
            seeds,
            ref sw,
            wd,
        } = *self;
        loss_and_grad(p_ax, adj, (n, f), w, seeds, sw, wd)
    }
}

/// [`Fit::loss_and_grad`], unpacked.
fn loss_and_grad(
    p_ax: &[f32],
    adj: &Csr,
    (n, f): (usize, usize),
    w: &Params,
    seeds: &[Option<bool>],
    sw: &[f32],
    wd: f32,
) -> (f32, Params) {
    let hd = w.b1.len();
    let fw = forward(p_ax, adj, n, f, w);
    let mut loss = 0.0f32;
    // dL/dz2 per node: weight · (softmax − one-hot).
    let mut gz2 = vec![0f32; n * 2];
    for i in 0..n {
        if let Some(y) = seeds[i] {
            let pf = fw.p[i];
            let py = if y { pf } else { 1.0 - pf };
            loss -= sw[i] * py.max(1e-12).ln();
            let t = if y { 1.0 } else { 0.0 };
            gz2[i * 2] = sw[i] * ((1.0 - pf) - (1.0 - t));
            gz2[i * 2 + 1] = sw[i] * (pf - t);
        }
    }
    loss += 0.5 * wd * w.w1.iter().map(|v| v * v).sum::<f32>();
    let mut gw2 = vec![0f32; hd * 2];
    let mut gb2 = vec![0f32; 2];
    let mut gq = vec![0f32; n * hd];
    for i in 0..n {
        let (g0, g1) = (gz2[i * 2], gz2[i * 2 + 1]);
        if g0 == 0.0 && g1 == 0.0 {
            continue;
        }
        gb2[0] += g0;
        gb2[1] += g1;
        for k in 0..hd {
            let qk = fw.q[i * hd + k];
            gw2[k * 2] += qk * g0;
            gw2[k * 2 + 1] += qk * g1;
            gq[i * hd + k] = g0 * w.w2[k * 2] + g1 * w.w2[k * 2 + 1];
        }
    }
    // Â is symmetric: dL/dH1 = Â · dL/dQ.
    let mut gz1 = adj.mul(&gq, hd);
    for (g, z) in gz1.iter_mut().zip(&fw.z1) {
        if *z <= 0.0 {
            *g = 0.0;
        }
    }
    let mut gw1 = vec![0f32; f * hd];
    let a = Strided {
        data: p_ax,
        rs: 1,
        cs: f,
    };
    let b = Strided::rows(&gz1, hd);
    sgemm((f, hd, n), &mut gw1, hd, false, &a, &b, 1);
    for (g, v) in gw1.iter_mut().zip(&w.w1) {
        *g += wd * v;
    }
    let mut gb1 = vec![0f32; hd];
    for row in gz1.chunks(hd) {
        gb1.iter_mut().zip(row).for_each(|(g, v)| *g += v);
    }
    (
        loss,
        Params {
            w1: gw1,
            b1: gb1,
            w2: gw2,
            b2: gb2,
        },
    )
}

/// Train on the seeds (module docs, step 5) and return each node's foreground probability.
pub fn train(g: &Graph, seeds: &[Option<bool>], cfg: &GcnConfig, seed: u64) -> Vec<f32> {
    let (n, f) = (g.n, g.f);
    let p_ax = g.adj.mul(&g.x, f);
    let mut w = Params::init(f, cfg.hidden.max(1) as usize, seed);
    let fit = Fit {
        p_ax: &p_ax,
        adj: &g.adj,
        n,
        f,
        seeds,
        sw: seed_weights(seeds),
        wd: cfg.weight_decay as f32,
    };
    let zeros = |p: &Params| Params {
        w1: vec![0.0; p.w1.len()],
        b1: vec![0.0; p.b1.len()],
        w2: vec![0.0; p.w2.len()],
        b2: vec![0.0; p.b2.len()],
    };
    let (mut m, mut v) = (zeros(&w), zeros(&w));
    let (b1, b2) = (0.9f32, 0.999f32);
    for t in 1..=cfg.epochs {
        let (_, gr) = fit.loss_and_grad(&w);
        let h = AdamW {
            lr: cfg.learning_rate as f32,
            beta1: b1,
            beta2: b2,
            eps: 1e-8,
            decay: 0.0,
            correction: (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32)),
        };
        adamw(&mut w.w1, &gr.w1, &mut m.w1, &mut v.w1, &h);
        adamw(&mut w.b1, &gr.b1, &mut m.b1, &mut v.b1, &h);
        adamw(&mut w.w2, &gr.w2, &mut m.w2, &mut v.w2, &h);
        adamw(&mut w.b2, &gr.b2, &mut m.b2, &mut v.b2, &h);
    }
    fit.forward(&w).p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random graph: a ring of `n` nodes plus chords.
    fn ring(n: usize) -> Csr {
        let mut e = vec![];
        for i in 0..n {
            let j = (i + 1) % n;
            e.push((i.min(j) as u32, i.max(j) as u32, 0.5 + (i % 3) as f32 * 0.2));
        }
        e.push((0, (n / 2) as u32, 0.9));
        Csr::normalised(n, &e)
    }

    #[test]
    fn normalised_adjacency_by_hand() {
        // Two nodes, one edge of weight 1: D = diag(2, 2), Â = [[1/2, 1/2], [1/2, 1/2]].
        let a = Csr::normalised(2, &[(0, 1, 1.0)]);
        assert_eq!(a.mul(&[1.0, 0.0, 0.0, 1.0], 2), vec![0.5, 0.5, 0.5, 0.5]);
        // Three nodes in a path with weights 1 and 3: degrees 2, 5, 4.
        let a = Csr::normalised(3, &[(0, 1, 1.0), (1, 2, 3.0)]);
        let e1 = a.mul(&[0.0, 1.0, 0.0], 1);
        let want = [
            1.0 / (2.0f32 * 5.0).sqrt(),
            1.0 / 5.0,
            3.0 / (5.0f32 * 4.0).sqrt(),
        ];
        for (g, w) in e1.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{e1:?}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, f, hd) = (9, 5, 4);
        let adj = ring(n);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..n * f).map(|_| rng.random_range(-1.0..1.0)).collect();
        let p_ax = adj.mul(&x, f);
        let mut w = Params::init(f, hd, 7);
        // Non-zero biases so every ReLU is away from its kink for the difference quotients.
        w.b1 = vec![0.3, -0.2, 0.1, 0.25];
        w.b2 = vec![0.1, -0.1];
        let seeds: Vec<Option<bool>> = (0..n)
            .map(|i| match i % 3 {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            })
            .collect();
        let fit = Fit {
            p_ax: &p_ax,
            adj: &adj,
            n,
            f,
            seeds: &seeds,
            sw: seed_weights(&seeds),
            wd: 0.05,
        };
        let (_, g) = fit.loss_and_grad(&w);
        let loss = |w: &Params| f64::from(fit.loss_and_grad(w).0);
        // Central differences in f32 with a step of 1e-2: truncation and rounding errors are
        // both far below the 1e-3 relative error asserted per parameter tensor.
        let eps = 1e-2f32;
        let check = |name: &str, get: &dyn Fn(&mut Params) -> &mut Vec<f32>, grad: &[f32]| {
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (k, &gk) in grad.iter().enumerate() {
                let mut hi = w.clone();
                get(&mut hi)[k] += eps;
                let mut lo = w.clone();
                get(&mut lo)[k] -= eps;
                let num = (loss(&hi) - loss(&lo)) / (2.0 * f64::from(eps));
                diff += (num - f64::from(gk)).powi(2);
                norm += num.powi(2);
            }
            let rel = (diff / norm).sqrt();
            assert!(rel < 1e-3, "{name}: relative gradient error {rel}");
        };
        check("w1", &|p| &mut p.w1, &g.w1);
        check("b1", &|p| &mut p.b1, &g.b1);
        check("w2", &|p| &mut p.w2, &g.w2);
        check("b2", &|p| &mut p.b2, &g.b2);
    }

    #[test]
    fn training_fits_separable_seeds_and_labels_the_rest_by_feature() {
        // Two clusters in feature space, chained in a path; a few seeds of each.
        let n = 20;
        let x: Vec<f32> = (0..n)
            .flat_map(|i| if i < 10 { [1.0, 0.0] } else { [0.0, 1.0] })
            .collect();
        let e: Vec<(u32, u32, f32)> = (0..n - 1).map(|i| (i as u32, i as u32 + 1, 1.0)).collect();
        let g = Graph {
            node: vec![],
            n,
            x,
            f: 2,
            mean_cam: vec![0.0; n],
            adj: Csr::normalised(n, &e),
        };
        let mut seeds = vec![None; n];
        seeds[0] = Some(true);
        seeds[3] = Some(true);
        seeds[15] = Some(false);
        seeds[19] = Some(false);
        let cfg = GcnConfig::default();
        let p = train(&g, &seeds, &cfg, 0);
        for (i, &pi) in p.iter().enumerate() {
            assert_eq!(pi >= 0.5, i < 10, "node {i}: {pi}");
        }
        // Deterministic with the seed.
        assert_eq!(p, train(&g, &seeds, &cfg, 0));
    }
}
