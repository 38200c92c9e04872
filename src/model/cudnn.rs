//! Convolutions on the GPU through cuDNN (cargo feature `cudnn`): forward, input gradient
//! (backward-data) and weight gradient (backward-filter) as candle custom ops, the CUDA side of
//! [`super::conv::Conv2d`] as `wsss_kernels::conv` is its CPU side.
//!
//! Why: candle's CUDA convolution backward computes the input gradient with its own
//! transposed-convolution kernel and the weight gradient as a further convolution; cuDNN has
//! dedicated algorithms for both (the ones PyTorch calls). Per thread and device this module
//! keeps one cuDNN handle, the algorithms chosen for each convolution shape (cuDNN's heuristics,
//! `cudnnGetConvolution*Algorithm_v7` — what PyTorch uses with `cudnn.benchmark = False`, its
//! default), asked once per shape and math mode, and one workspace buffer grown to the largest
//! request and reused by every call. No call synchronises the host: every launch is queued on
//! candle's stream.
//!
//! Math: [`set_tf32`] chooses between cuDNN's FMA-only math (`CUDNN_FMA_MATH`, exact fp32) and
//! its default math, which lets Ampere and later GPUs use TF32 tensor cores for fp32 data
//! (PyTorch's default for convolutions, `torch.backends.cudnn.allow_tf32 = True`).
//!
//! Layout: NCHW, contiguous, f32, groups = 1, the same stride, padding and dilation on both
//! axes ([`Geom`]). Bias and ReLU stay candle ops after the convolution.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::safe::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::DeviceId;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};
use wsss_kernels::conv::Geom;

/// Whether cuDNN may use TF32 tensor cores for fp32 convolutions ([`set_tf32`]).
static TF32: AtomicBool = AtomicBool::new(false);

/// Let cuDNN use TF32 for fp32 convolutions (`true`) or keep exact fp32 FMA math (`false`),
/// for every convolution launched afterwards on any thread.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

/// Whether TF32 is currently allowed ([`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// The algorithms cuDNN's heuristics chose for one convolution shape and math mode, and the
/// workspace the largest of them needs (bytes).
#[derive(Clone, Copy)]
struct Algos {
    fwd: sys::cudnnConvolutionFwdAlgo_t,
    bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    workspace: usize,
}

/// A convolution shape and math mode: the algorithm cache's key.
type Key = ([usize; 10], bool);

fn key(g: &Geom, tf32: bool) -> Key {
    (
        [g.b, g.c, g.h, g.w, g.o, g.kh, g.kw, g.stride, g.pad, g.dil],
        tf32,
    )
}

/// One thread's cuDNN state on one device.
struct State {
    handle: Arc<Cudnn>,
    algos: HashMap<Key, Algos>,
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device, as candle keeps its own.
    static STATE: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's state for `dev`, creating the handle on first use.
fn with_state<R>(dev: &CudaDevice, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let st = match s.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(State {
                handle: Cudnn::new(dev.cuda_stream())?,
                algos: HashMap::new(),
                workspace: None,
            }),
        };
        f(st)
    })
}

/// The four descriptors of one convolution.
struct Descs {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
}

fn i(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("cuDNN: {v} exceeds i32")))
}

fn descs(h: &Arc<Cudnn>, g: &Geom, tf32: bool) -> Result<Descs> {
    use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
    let (ho, wo) = g.out();
    let mut conv = h.create_conv2d::<f32>(
        [i(g.pad)?, i(g.pad)?],
        [i(g.stride)?, i(g.stride)?],
        [i(g.dil)?, i(g.dil)?],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(if tf32 {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    })?;
    Ok(Descs {
        conv,
        x: h.create_4d_tensor::<f32>(NCHW, [i(g.b)?, i(g.c)?, i(g.h)?, i(g.w)?])?,
        w: h.create_4d_filter::<f32>(NCHW, [i(g.o)?, i(g.c)?, i(g.kh)?, i(g.kw)?])?,
        y: h.create_4d_tensor::<f32>(NCHW, [i(g.b)?, i(g.o)?, i(ho)?, i(wo)?])?,
    })
}

/// The cached algorithms of `g` (chosen on first use).
fn algos(st: &mut State, g: &Geom, tf32: bool, d: &Descs) -> Result<Algos> {
    let k = key(g, tf32);
    if let Some(a) = st.algos.get(&k) {
        return Ok(*a);
    }
    let fwd = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let bwd_data = ConvBackwardData {
        conv: &d.conv,
        dx: &d.x,
        w: &d.w,
        dy: &d.y,
    };
    let bwd_filter = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let (fa, da, wa) = (
        fwd.pick_algorithm()?,
        bwd_data.pick_algorithm()?,
        bwd_filter.pick_algorithm()?,
    );
    let workspace = fwd
        .get_workspace_size(fa)?
        .max(bwd_data.get_workspace_size(da)?)
        .max(bwd_filter.get_workspace_size(wa)?);
    let a = Algos {
        fwd: fa,
        bwd_data: da,
        bwd_filter: wa,
        workspace,
    };
    st.algos.insert(k, a);
    Ok(a)
}

/// The thread's workspace on `dev`, at least `bytes` long (grown, never shrunk), or `None`
/// when no workspace is needed.
fn workspace<'a>(
    ws: &'a mut Option<CudaSlice<u8>>,
    dev: &CudaDevice,
    bytes: usize,
) -> Result<Option<&'a mut CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    if ws.as_ref().is_none_or(|w| w.len() < bytes) {
        // Drop the old buffer first so the allocator can reuse its memory.
        *ws = None;
        // SAFETY: a workspace is scratch memory cuDNN writes before it reads.
        *ws = Some(unsafe { dev.alloc::<u8>(bytes)? });
    }
    Ok(ws.as_mut())
}

/// The contiguous f32 view of a CUDA storage at its layout's offset.
fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    if !l.is_contiguous() {
        candle_core::bail!("cuDNN conv: {what} must be contiguous");
    }
    let n = l.shape().elem_count();
    let off = l.start_offset();
    Ok(s.as_cuda_slice::<f32>()?.slice(off..off + n))
}

/// Which of the three convolution computations a [`CudnnConv`] runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    /// `(x, w) → y`.
    Forward,
    /// `(∂y, w) → ∂x`.
    BackwardData,
    /// `(∂y, x) → ∂W`.
    BackwardFilter,
}

/// One cuDNN convolution computation of geometry `g` as a candle op of two inputs.
struct CudnnConv {
    g: Geom,
    pass: Pass,
}

impl CudnnConv {
    fn out_shape(&self) -> Shape {
        let g = &self.g;
        let (ho, wo) = g.out();
        match self.pass {
            Pass::Forward => Shape::from((g.b, g.o, ho, wo)),
            Pass::BackwardData => Shape::from((g.b, g.c, g.h, g.w)),
            Pass::BackwardFilter => Shape::from((g.o, g.c, g.kh, g.kw)),
        }
    }
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "cudnn-conv2d",
            Pass::BackwardData => "cudnn-conv2d-backward-data",
            Pass::BackwardFilter => "cudnn-conv2d-backward-filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: a CUDA op, called with CPU tensors", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        let g = self.g;
        let shape = self.out_shape();
        let (ho, wo) = g.out();
        let (x_n, w_n, y_n) = (
            g.b * g.c * g.h * g.w,
            g.o * g.c * g.kh * g.kw,
            g.b * g.o * ho * wo,
        );
        let want = match self.pass {
            Pass::Forward => [x_n, w_n],
            Pass::BackwardData => [y_n, w_n],
            Pass::BackwardFilter => [y_n, x_n],
        };
        if [l1.shape().elem_count(), l2.shape().elem_count()] != want {
            candle_core::bail!("{}: inputs do not fit the convolution {g:?}", self.name());
        }
        if shape.elem_count() == 0 {
            // an empty batch (cuDNN refuses zero-sized tensors)
            let out = dev.alloc_zeros::<f32>(0)?;
            return Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape));
        }
        let tf32 = tf32();
        let a = view(s1, l1, "first input")?;
        let b = view(s2, l2, "second input")?;
        // SAFETY: every algorithm below writes the whole output (β = 0).
        let mut out = unsafe { dev.alloc::<f32>(shape.elem_count())? };
        with_state(dev, |st| {
            let d = descs(&st.handle, &g, tf32)?;
            let al = algos(st, &g, tf32, &d)?;
            let ws = workspace(&mut st.workspace, dev, al.workspace)?;
            // SAFETY: the descriptors describe these buffers (contiguous NCHW f32, shapes of g).
            unsafe {
                match self.pass {
                    Pass::Forward => ConvForward {
                        conv: &d.conv,
                        x: &d.x,
                        w: &d.w,
                        y: &d.y,
                    }
                    .launch(al.fwd, ws, (1.0, 0.0), &a, &b, &mut out)?,
                    Pass::BackwardData => ConvBackwardData {
                        conv: &d.conv,
                        dx: &d.x,
                        w: &d.w,
                        dy: &d.y,
                    }
                    .launch(al.bwd_data, ws, (1.0, 0.0), &mut out, &b, &a)?,
                    Pass::BackwardFilter => ConvBackwardFilter {
                        conv: &d.conv,
                        x: &d.x,
                        dw: &d.w,
                        dy: &d.y,
                    }
                    .launch(al.bwd_filter, ws, (1.0, 0.0), &b, &mut out, &a)?,
                }
            }
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.pass != Pass::Forward {
            candle_core::bail!("{}: no second derivative", self.name());
        }
        let g = self.g;
        let grad = grad.contiguous()?;
        let dx = x
            .track_op()
            .then(|| {
                grad.apply_op2_no_bwd(
                    w,
                    &CudnnConv {
                        g,
                        pass: Pass::BackwardData,
                    },
                )
            })
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| {
                grad.apply_op2_no_bwd(
                    x,
                    &CudnnConv {
                        g,
                        pass: Pass::BackwardFilter,
                    },
                )
            })
            .transpose()?;
        Ok((dx, dw))
    }
}

/// `conv2d(x, w)` of geometry `g` through cuDNN, with both gradients through cuDNN's backward
/// algorithms. `x (B, C, H, W)` and `w (O, C, kh, kw)` on one CUDA device, f32; made contiguous.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, g: Geom) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = CudnnConv {
        g,
        pass: Pass::Forward,
    };
    if x.track_op() || w.track_op() {
        x.apply_op2(&w, op)
    } else {
        x.apply_op2_no_bwd(&w, &op)
    }
}
