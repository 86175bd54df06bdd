//! Convolutional networks on a CUDA device: launch wrappers for `kernels/cnn.cu`
//! (im2col and col2im, max and average pooling, batch normalisation) and
//! [`train_cnn`], which trains a [`Cnn`] with the loop of [`super::train`].
//!
//! A convolution is im2col followed by the weight product of a linear layer (SpMM for a
//! sparse weight, cuBLAS for a dense one), on the CPU's layout: images `[C][H][W][B]`,
//! the im2col matrix `[C·kh·kw × OH·OW·B]`, so the product `[out][OH][OW][B]` is the
//! next stage's input as it stands and flattening before a linear layer costs nothing.
//! Batch norm keeps its running statistics on the device (updated by every training
//! forward, as `Cnn`'s on the CPU) and copies them to the host model whenever the
//! weights come back, so CPU evaluation after GPU training sees the same model.

use crate::cuda::u32_arg;
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use super::train::{
    bias_act, bias_act_backward, download_params, dropout_backward, dropout_or_copy, grid, per_row,
    run, Batch, DevParam, DevWeight, DeviceNet, GrowOperands,
};
use super::{cuda_err, same_len, CudaDevice};
use crate::autograd::{Act, Conv2dGeom, Pool2dGeom, PoolKind};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::cnn::{unbias_factor, Norm, Stage, BN_EPS, BN_MOMENTUM};
use crate::nn::{Cnn, ParamStore};
use crate::optim::Optimizer;
use crate::sparse::SeedRng;
use crate::train::{EpochReport, TrainConfig};

/// The geometry of a convolution or pooling window as `kernels/cnn.cu` takes it
/// (`struct Geom` there, field for field). Pooling has `kh = kw = k` and `pad = 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KernelGeom {
    channels: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    batch: u32,
    oh: u32,
    ow: u32,
}

// SAFETY: plain u32 fields in C layout, matching `struct Geom` in kernels/cnn.cu.
unsafe impl DeviceRepr for KernelGeom {}

impl KernelGeom {
    fn new(
        [channels, h, w]: [usize; 3],
        [kh, kw, stride, pad]: [usize; 4],
        batch: usize,
        [oh, ow]: [usize; 2],
    ) -> Result<Self> {
        let fields = [channels, h, w, kh, kw, stride, pad, batch, oh, ow];
        // every flat index the kernels form is a size_t; the parts must fit in u32
        let [channels, h, w, kh, kw, stride, pad, batch, oh, ow] = fields.map(|v| v as u32);
        if fields.iter().any(|&v| v > u32::MAX as usize) {
            return Err(Error::arg(
                "cnn",
                format!("a dimension of {fields:?} exceeds the CUDA kernels' 32 bits"),
            ));
        }
        Ok(KernelGeom {
            channels,
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            batch,
            oh,
            ow,
        })
    }

    fn conv(g: &Conv2dGeom, batch: usize) -> Result<Self> {
        g.validate()?;
        Self::new(
            [g.channels, g.h, g.w],
            [g.kh, g.kw, g.stride, g.pad],
            batch,
            [g.out_h(), g.out_w()],
        )
    }

    fn pool(g: &Pool2dGeom, batch: usize) -> Result<Self> {
        g.validate()?;
        Self::new(
            [g.channels, g.h, g.w],
            [g.k, g.k, g.stride, 0],
            batch,
            [g.out_h(), g.out_w()],
        )
    }

    /// Values of the input images.
    fn in_len(&self) -> usize {
        self.channels as usize * self.h as usize * self.w as usize * self.batch as usize
    }

    /// Output positions over the batch: `OH·OW·B`.
    fn cols(&self) -> usize {
        self.oh as usize * self.ow as usize * self.batch as usize
    }
}

/// Per-channel statistics of a batch-norm forward on the device: the mean and (biased)
/// variance it normalised with, and `1/√(var + ε)`.
pub struct BnStats {
    /// per channel mean
    pub mean: CudaSlice<f32>,
    /// per channel variance (biased: over `n`)
    pub var: CudaSlice<f32>,
    /// per channel `1/√(var + ε)`
    pub inv_std: CudaSlice<f32>,
}

impl BnStats {
    /// Zeroed statistics for `channels` channels.
    pub fn new(dev: &CudaDevice, channels: usize) -> Result<Self> {
        Ok(BnStats {
            mean: dev.zeros(channels)?,
            var: dev.zeros(channels)?,
            inv_std: dev.zeros(channels)?,
        })
    }
}

/// Checks that each batch-norm buffer holds `len` floats.
fn same_lens(len: usize, bufs: &[(&'static str, &CudaSlice<f32>)]) -> Result<()> {
    bufs.iter()
        .try_for_each(|(what, buf)| same_len(what, len, buf.len()))
}

impl CudaDevice {
    /// The im2col matrix `col[C·kh·kw × OH·OW·B]` of the images `x[C][H][W][B]` for the
    /// convolution `geom` (zeros where a window reaches into the padding), as
    /// [`crate::autograd::Tape::im2col`].
    pub fn im2col(
        &self,
        col: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        geom: &Conv2dGeom,
        batch: usize,
    ) -> Result<()> {
        let g = KernelGeom::conv(geom, batch)?;
        let len = geom.patch_len() * g.cols();
        same_len("im2col input", g.in_len(), x.len())?;
        same_len("im2col output", len, col.len())?;
        if len == 0 {
            return Ok(());
        }
        let f = self.function("im2col_f32")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&g).arg(x).arg(col);
        // SAFETY: the signature of im2col_f32; x holds C·H·W·B and col C·kh·kw·OH·OW·B
        // floats (checked above), which bound every index the kernel forms.
        unsafe { launch.launch(grid(len)) }.map_err(|e| cuda_err("launching im2col", e))?;
        Ok(())
    }

    /// col2im, the gradient of [`CudaDevice::im2col`]: `dx[C][H][W][B]` (overwritten)
    /// from the gradient `dcol` of the im2col matrix.
    pub fn col2im(
        &self,
        dx: &mut CudaSlice<f32>,
        dcol: &CudaSlice<f32>,
        geom: &Conv2dGeom,
        batch: usize,
    ) -> Result<()> {
        let g = KernelGeom::conv(geom, batch)?;
        same_len("col2im input", geom.patch_len() * g.cols(), dcol.len())?;
        same_len("col2im output", g.in_len(), dx.len())?;
        if g.in_len() == 0 {
            return Ok(());
        }
        let f = self.function("col2im_f32")?;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&g).arg(dcol).arg(dx);
        // SAFETY: the signature of col2im_f32; lengths checked above.
        unsafe { launch.launch(grid(g.in_len())) }.map_err(|e| cuda_err("launching col2im", e))?;
        Ok(())
    }

    /// Max or average pooling of `x[C][H][W][B]` into `y[C][OH][OW][B]`, as
    /// [`crate::autograd::Tape::pool2d`]. Max pooling needs `arg` (one per output): each
    /// maximum's offset `i·k + j` in its window, for the backward.
    pub fn pool2d(
        &self,
        y: &mut CudaSlice<f32>,
        arg: Option<&mut CudaSlice<u32>>,
        x: &CudaSlice<f32>,
        geom: &Pool2dGeom,
        kind: PoolKind,
        batch: usize,
    ) -> Result<()> {
        let g = KernelGeom::pool(geom, batch)?;
        let len = geom.channels * g.cols();
        same_len("pool input", g.in_len(), x.len())?;
        same_len("pool output", len, y.len())?;
        if len == 0 {
            return Ok(());
        }
        let (f, what) = match kind {
            PoolKind::Max => (self.function("maxpool_f32")?, "launching maxpool"),
            PoolKind::Avg => (self.function("avgpool_f32")?, "launching avgpool"),
        };
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&g).arg(x).arg(y);
        if kind == PoolKind::Max {
            let arg = arg.ok_or_else(|| Error::arg("pool2d", "max pooling needs `arg`"))?;
            same_len("pool argmax", len, arg.len())?;
            launch.arg(arg);
        }
        // SAFETY: the signature of maxpool_f32 (with arg) or avgpool_f32; lengths
        // checked above.
        unsafe { launch.launch(grid(len)) }.map_err(|e| cuda_err(what, e))?;
        Ok(())
    }

    /// The gradient of [`CudaDevice::pool2d`]: `dx[C][H][W][B]` (overwritten) from `dy`;
    /// max pooling routes it through the forward's `arg`.
    pub fn pool2d_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        arg: Option<&CudaSlice<u32>>,
        geom: &Pool2dGeom,
        kind: PoolKind,
        batch: usize,
    ) -> Result<()> {
        let g = KernelGeom::pool(geom, batch)?;
        let len = geom.channels * g.cols();
        same_len("pool gradient", len, dy.len())?;
        same_len("pool input gradient", g.in_len(), dx.len())?;
        if g.in_len() == 0 {
            return Ok(());
        }
        let (f, what) = match kind {
            PoolKind::Max => (
                self.function("maxpool_backward_f32")?,
                "launching maxpool_backward",
            ),
            PoolKind::Avg => (
                self.function("avgpool_backward_f32")?,
                "launching avgpool_backward",
            ),
        };
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&g).arg(dy);
        if kind == PoolKind::Max {
            let arg = arg.ok_or_else(|| Error::arg("pool2d", "max pooling needs `arg`"))?;
            same_len("pool argmax", len, arg.len())?;
            launch.arg(arg);
        }
        launch.arg(dx);
        // SAFETY: the signature of maxpool_backward_f32 (dy, arg, dx) or
        // avgpool_backward_f32 (dy, dx); lengths checked above.
        unsafe { launch.launch(grid(g.in_len())) }.map_err(|e| cuda_err(what, e))?;
        Ok(())
    }

    /// Batch norm of the rows of `x[rows × n]` (a channel each), as
    /// [`crate::autograd::Tape::batch_norm`]: with `train` the batch's statistics, written
    /// to `stats`; otherwise the mean and variance already in `stats` (the running ones).
    /// `xhat = (x − mean)/√(var + eps)` and `y = γ·xhat + β`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        y: &mut CudaSlice<f32>,
        xhat: &mut CudaSlice<f32>,
        stats: &mut BnStats,
        x: &CudaSlice<f32>,
        (rows, n): (usize, usize),
        (gamma, beta): (&CudaSlice<f32>, &CudaSlice<f32>),
        eps: f32,
        train: bool,
    ) -> Result<()> {
        if eps.is_nan() || eps <= 0.0 {
            return Err(Error::arg(
                "batch_norm",
                format!("eps must be > 0, got {eps}"),
            ));
        }
        if train && n == 0 {
            return Err(Error::arg("batch_norm", "an empty batch has no statistics"));
        }
        same_lens(
            rows * n,
            &[
                ("batch norm input", x),
                ("batch norm x̂", xhat),
                ("batch norm output", y),
            ],
        )?;
        same_lens(
            rows,
            &[
                ("batch norm gamma", gamma),
                ("batch norm beta", beta),
                ("batch norm mean", &stats.mean),
                ("batch norm variance", &stats.var),
                ("batch norm 1/std", &stats.inv_std),
            ],
        )?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("batch_norm_f32")?;
        let (rows32, n32, train32) = (u32_arg("rows", rows)?, u32_arg("columns", n)?, train as i32);
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&rows32)
            .arg(&n32)
            .arg(x)
            .arg(gamma)
            .arg(beta)
            .arg(&eps)
            .arg(&train32)
            .arg(&mut stats.mean)
            .arg(&mut stats.var)
            .arg(&mut stats.inv_std)
            .arg(xhat)
            .arg(y);
        // SAFETY: the signature of batch_norm_f32; one block of 256 per row; lengths
        // checked above.
        unsafe { launch.launch(per_row(rows)) }.map_err(|e| cuda_err("launching batch_norm", e))?;
        Ok(())
    }

    /// The gradient of a training-mode (`train`) or evaluation-mode
    /// [`CudaDevice::batch_norm`] from the gradient `g` at its output: `dx` (not
    /// overlapping `g`), `dgamma` and `dbeta` (all overwritten). `xhat` and `inv_std`
    /// are the forward's.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        (dgamma, dbeta): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        g: &CudaSlice<f32>,
        xhat: &CudaSlice<f32>,
        (gamma, inv_std): (&CudaSlice<f32>, &CudaSlice<f32>),
        (rows, n): (usize, usize),
        train: bool,
    ) -> Result<()> {
        same_lens(
            rows * n,
            &[
                ("batch norm gradient", g),
                ("batch norm x̂", xhat),
                ("batch norm input gradient", dx),
            ],
        )?;
        same_lens(
            rows,
            &[
                ("batch norm gamma", gamma),
                ("batch norm 1/std", inv_std),
                ("batch norm gamma gradient", dgamma),
                ("batch norm beta gradient", dbeta),
            ],
        )?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("batch_norm_backward_f32")?;
        let (rows32, n32, train32) = (u32_arg("rows", rows)?, u32_arg("columns", n)?, train as i32);
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&rows32)
            .arg(&n32)
            .arg(g)
            .arg(xhat)
            .arg(gamma)
            .arg(inv_std)
            .arg(&train32)
            .arg(dgamma)
            .arg(dbeta)
            .arg(dx);
        // SAFETY: the signature of batch_norm_backward_f32; one block of 256 per row;
        // lengths checked above.
        unsafe { launch.launch(per_row(rows)) }
            .map_err(|e| cuda_err("launching batch_norm_backward", e))?;
        Ok(())
    }

    /// Folds a training forward's `stats` over `n` values per channel into the running
    /// mean and variance, as [`Cnn`] does on the CPU:
    /// `r += momentum·(batch − r)`, the variance unbiased by `n/(n − 1)`.
    pub fn batch_norm_running(
        &self,
        (running_mean, running_var): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        stats: &BnStats,
        (rows, n): (usize, usize),
        momentum: f32,
    ) -> Result<()> {
        same_lens(
            rows,
            &[
                ("running mean", running_mean),
                ("running variance", running_var),
                ("batch norm mean", &stats.mean),
                ("batch norm variance", &stats.var),
            ],
        )?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("batch_norm_running_f32")?;
        let (rows32, unbias) = (u32_arg("rows", rows)?, unbias_factor(n));
        let mut launch = self.stream().launch_builder(&f);
        launch
            .arg(&rows32)
            .arg(&stats.mean)
            .arg(&stats.var)
            .arg(&momentum)
            .arg(&unbias)
            .arg(running_mean)
            .arg(running_var);
        // SAFETY: the signature of batch_norm_running_f32; every buffer holds rows floats.
        unsafe { launch.launch(grid(rows)) }
            .map_err(|e| cuda_err("launching batch_norm_running", e))?;
        Ok(())
    }
}

/// A batch norm on the device: its parameters and running statistics.
struct DevNorm {
    gamma: DevParam,
    beta: DevParam,
    running_mean: CudaSlice<f32>,
    running_var: CudaSlice<f32>,
    /// a zero bias, so the activation after the norm is the fused bias + activation,
    /// and the (unused) gradient its backward writes
    zero: CudaSlice<f32>,
    zero_grad: CudaSlice<f32>,
}

impl DevNorm {
    fn new(
        dev: &CudaDevice,
        params: &ParamStore,
        opt: &Optimizer,
        norm: &Norm,
        channels: usize,
    ) -> Result<Self> {
        let (mean, var) = &*norm.running.lock().unwrap_or_else(|e| e.into_inner());
        Ok(DevNorm {
            gamma: DevParam::new(dev, params, opt, norm.gamma)?,
            beta: DevParam::new(dev, params, opt, norm.beta)?,
            running_mean: dev.upload(mean)?,
            running_var: dev.upload(var)?,
            zero: dev.zeros(channels)?,
            zero_grad: dev.zeros(channels)?,
        })
    }
}

/// One stage of a [`Cnn`] on the device (the host's `Stage`).
enum DevStage {
    Conv {
        geom: Conv2dGeom,
        weight: DevWeight,
        /// the bias, where there is no batch norm
        bias: Option<DevParam>,
        norm: Option<Box<DevNorm>>,
    },
    Pool {
        geom: Pool2dGeom,
        kind: PoolKind,
    },
    Linear {
        weight: DevWeight,
        bias: DevParam,
        last: bool,
    },
}

/// A batch norm's per-batch buffers: `x̂`, the output `γ·x̂ + β`, the gradient at its
/// input (the convolution's `dZ`) and the statistics.
struct NormBuffers {
    xhat: CudaSlice<f32>,
    out: CudaSlice<f32>,
    dz: CudaSlice<f32>,
    stats: BnStats,
}

/// One stage's buffers for one batch size.
struct StageBuffers {
    /// the activation (or pooled image): the next stage's input, except behind dropout
    y: CudaSlice<f32>,
    /// the gradient at the stage's output; the backward turns it into the gradient at
    /// the pre-activation (`dZ` of a convolution without batch norm, or a linear layer)
    g: CudaSlice<f32>,
    /// weight stages: the product `W·X`
    z: Option<CudaSlice<f32>>,
    /// convolutions: the im2col matrix and (past the first stage) its gradient
    col: Option<CudaSlice<f32>>,
    dcol: Option<CudaSlice<f32>>,
    norm: Option<NormBuffers>,
    /// max pooling: each maximum's offset in its window
    arg: Option<CudaSlice<u32>>,
    /// hidden linear layers: the dropout mask and the output (a copy of `y` without
    /// dropout), the next stage's input
    drop: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
}

impl StageBuffers {
    fn new(dev: &CudaDevice, stage: &DevStage, first: bool, n: usize) -> Result<Self> {
        let zeros = |len: usize| dev.zeros(len);
        let some = |len: usize| zeros(len).map(Some);
        let plain = |len: usize| -> Result<Self> {
            Ok(StageBuffers {
                y: zeros(len)?,
                g: zeros(len)?,
                z: None,
                col: None,
                dcol: None,
                norm: None,
                arg: None,
                drop: None,
            })
        };
        Ok(match stage {
            DevStage::Conv {
                geom, weight, norm, ..
            } => {
                let cols = geom.out_h() * geom.out_w() * n;
                let (len, col_len) = (weight.fan_out * cols, geom.patch_len() * cols);
                StageBuffers {
                    z: some(len)?,
                    col: some(col_len)?,
                    dcol: if first { None } else { some(col_len)? },
                    norm: match norm {
                        Some(_) => Some(NormBuffers {
                            xhat: zeros(len)?,
                            out: zeros(len)?,
                            dz: zeros(len)?,
                            stats: BnStats::new(dev, weight.fan_out)?,
                        }),
                        None => None,
                    },
                    ..plain(len)?
                }
            }
            DevStage::Pool { geom, kind } => {
                let len = geom.channels * geom.out_h() * geom.out_w() * n;
                StageBuffers {
                    arg: match kind {
                        PoolKind::Max => Some(dev.upload(&vec![0u32; len])?),
                        PoolKind::Avg => None,
                    },
                    ..plain(len)?
                }
            }
            DevStage::Linear { weight, last, .. } => {
                let len = weight.fan_out * n;
                StageBuffers {
                    z: some(len)?,
                    drop: if *last {
                        None
                    } else {
                        Some((zeros(len)?, zeros(len)?))
                    },
                    ..plain(len)?
                }
            }
        })
    }

    /// The stage's output (the next stage's input) and the gradient there.
    fn output_and_grad(&mut self) -> (&CudaSlice<f32>, &mut CudaSlice<f32>) {
        let out = match &self.drop {
            Some((_, h)) => h,
            None => &self.y,
        };
        (out, &mut self.g)
    }

    fn output(&self) -> &CudaSlice<f32> {
        self.drop.as_ref().map_or(&self.y, |(_, h)| h)
    }
}

/// A [`Cnn`] on the device.
struct GpuCnn<'a> {
    dev: &'a CudaDevice,
    stages: Vec<DevStage>,
    /// the stage of each weight layer ([`crate::nn::Model::weight_layers`] order)
    weight_stages: Vec<usize>,
    input_len: usize,
    classes: usize,
    buffers: Vec<Batch<Vec<StageBuffers>>>,
}

fn missing(what: &str) -> Error {
    Error::Training(format!("GPU CNN: a stage lacks its {what} buffer"))
}

impl<'a> GpuCnn<'a> {
    fn new(dev: &'a CudaDevice, model: &Cnn, opt: &Optimizer) -> Result<Self> {
        let params = &model.params;
        let mut stages = Vec::new();
        let mut weight_stages = Vec::new();
        for (s, stage) in model.stages().iter().enumerate() {
            stages.push(match stage {
                Stage::Conv {
                    geom,
                    weight,
                    out,
                    bias,
                    norm,
                } => {
                    weight_stages.push(s);
                    DevStage::Conv {
                        geom: *geom,
                        weight: DevWeight::new(dev, params, opt, *weight, geom.patch_len(), *out)?,
                        bias: bias
                            .map(|b| DevParam::new(dev, params, opt, b))
                            .transpose()?,
                        norm: norm
                            .as_ref()
                            .map(|n| DevNorm::new(dev, params, opt, n, *out).map(Box::new))
                            .transpose()?,
                    }
                }
                Stage::Pool { geom, kind } => DevStage::Pool {
                    geom: *geom,
                    kind: *kind,
                },
                Stage::Linear {
                    weight,
                    bias,
                    fan_in,
                    out,
                    last,
                } => {
                    weight_stages.push(s);
                    DevStage::Linear {
                        weight: DevWeight::new(dev, params, opt, *weight, *fan_in, *out)?,
                        bias: DevParam::new(dev, params, opt, *bias)?,
                        last: *last,
                    }
                }
            });
        }
        Ok(GpuCnn {
            dev,
            stages,
            weight_stages,
            input_len: model.config.input.iter().product(),
            classes: model.config.classes,
            buffers: Vec::new(),
        })
    }

    /// The activation after stage `s` (pooling: none).
    fn act(&self, model: &Cnn, s: usize) -> Act {
        match &self.stages[s] {
            DevStage::Linear { last: true, .. } | DevStage::Pool { .. } => Act::Identity,
            _ => model.config.activation.act(),
        }
    }
}

impl DeviceNet for GpuCnn<'_> {
    type Host = Cnn;
    type Layers = Vec<StageBuffers>;

    fn batches(&mut self) -> &mut Vec<Batch<Vec<StageBuffers>>> {
        &mut self.buffers
    }

    fn new_batch(&self, n: usize) -> Result<Batch<Vec<StageBuffers>>> {
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(s, st)| StageBuffers::new(self.dev, st, s == 0, n))
            .collect::<Result<_>>()?;
        Batch::new(self.dev, (self.input_len, self.classes, n), stages)
    }

    fn forward(
        &mut self,
        bi: usize,
        model: &Cnn,
        train: bool,
        rng: &mut SeedRng,
    ) -> Result<Vec<f32>> {
        let dev = self.dev;
        let acts: Vec<Act> = (0..self.stages.len()).map(|s| self.act(model, s)).collect();
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        for (s, stage) in self.stages.iter_mut().enumerate() {
            let (before, rest) = buf.layers.split_at_mut(s);
            let input = before.last().map_or(&buf.x, StageBuffers::output);
            let StageBuffers {
                y,
                z,
                col,
                norm: nb,
                arg,
                drop,
                ..
            } = &mut rest[0];
            match stage {
                DevStage::Conv {
                    geom,
                    weight,
                    bias,
                    norm,
                } => {
                    let (col, z) = (
                        col.as_mut().ok_or_else(|| missing("im2col"))?,
                        z.as_mut().ok_or_else(|| missing("product"))?,
                    );
                    let (rows, cols) = (weight.fan_out, geom.out_h() * geom.out_w() * n);
                    dev.im2col(col, input, geom, n)?;
                    weight.forward(dev, z, col, cols)?;
                    match (bias, norm, nb) {
                        (Some(b), _, _) => bias_act(dev, (rows, cols), z, &b.value, acts[s], y)?,
                        (None, Some(norm), Some(nb)) => {
                            if !train {
                                let stream = dev.stream();
                                stream
                                    .memcpy_dtod(&norm.running_mean, &mut nb.stats.mean)
                                    .and_then(|_| {
                                        stream.memcpy_dtod(&norm.running_var, &mut nb.stats.var)
                                    })
                                    .map_err(|e| cuda_err("copying running statistics", e))?;
                            }
                            let affine = (&norm.gamma.value, &norm.beta.value);
                            dev.batch_norm(
                                &mut nb.out,
                                &mut nb.xhat,
                                &mut nb.stats,
                                z,
                                (rows, cols),
                                affine,
                                BN_EPS,
                                train,
                            )?;
                            if train {
                                let running = (&mut norm.running_mean, &mut norm.running_var);
                                dev.batch_norm_running(
                                    running,
                                    &nb.stats,
                                    (rows, cols),
                                    BN_MOMENTUM,
                                )?;
                            }
                            bias_act(dev, (rows, cols), &nb.out, &norm.zero, acts[s], y)?;
                        }
                        _ => return Err(missing("batch norm")),
                    }
                }
                DevStage::Pool { geom, kind } => {
                    dev.pool2d(y, arg.as_mut(), input, geom, *kind, n)?;
                }
                DevStage::Linear { weight, bias, .. } => {
                    let z = z.as_mut().ok_or_else(|| missing("product"))?;
                    weight.forward(dev, z, input, n)?;
                    let rows = weight.fan_out;
                    bias_act(dev, (rows, n), z, &bias.value, acts[s], y)?;
                    if let Some((mask, h)) = drop {
                        let p = model.config.dropout;
                        dropout_or_copy(dev, rows * n, y, mask, h, p, train, rng)?;
                    }
                }
            }
        }
        let logits = &buf.layers.last().ok_or_else(|| missing("output"))?.y;
        buf.loss.forward(dev, self.classes, n, logits)?;
        dev.download(logits)
    }

    fn backward(&mut self, bi: usize, model: &Cnn) -> Result<()> {
        let dev = self.dev;
        let acts: Vec<Act> = (0..self.stages.len()).map(|s| self.act(model, s)).collect();
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        let last = buf.layers.last_mut().ok_or_else(|| missing("output"))?;
        buf.loss.backward(dev, self.classes, n, &mut last.g)?;
        for (s, stage) in self.stages.iter_mut().enumerate().rev() {
            let (before, rest) = buf.layers.split_at_mut(s);
            // the previous stage's output (this stage's input) and the gradient there
            let (input, gin) = match before.last_mut() {
                Some(prev) => {
                    let (out, g) = prev.output_and_grad();
                    (out, Some(g))
                }
                None => (&buf.x, None),
            };
            let StageBuffers {
                y,
                g,
                col,
                dcol,
                norm: nb,
                arg,
                drop,
                ..
            } = &mut rest[0];
            match stage {
                DevStage::Conv {
                    geom,
                    weight,
                    bias,
                    norm,
                } => {
                    let (rows, cols) = (weight.fan_out, geom.out_h() * geom.out_w() * n);
                    let dz: &CudaSlice<f32> = match (bias, norm, nb) {
                        (Some(b), _, _) => {
                            bias_act_backward(dev, (rows, cols), g, y, acts[s], &mut b.grad)?;
                            g
                        }
                        (None, Some(norm), Some(nb)) => {
                            bias_act_backward(
                                dev,
                                (rows, cols),
                                g,
                                y,
                                acts[s],
                                &mut norm.zero_grad,
                            )?;
                            dev.batch_norm_backward(
                                &mut nb.dz,
                                (&mut norm.gamma.grad, &mut norm.beta.grad),
                                g,
                                &nb.xhat,
                                (&norm.gamma.value, &nb.stats.inv_std),
                                (rows, cols),
                                true,
                            )?;
                            &nb.dz
                        }
                        _ => return Err(missing("batch norm")),
                    };
                    let col = col.as_ref().ok_or_else(|| missing("im2col"))?;
                    match (gin, dcol.as_mut()) {
                        (Some(gin), Some(dcol)) => {
                            weight.backward(dev, dz, col, Some(&mut *dcol), cols)?;
                            dev.col2im(gin, dcol, geom, n)?;
                        }
                        _ => weight.backward(dev, dz, col, None, cols)?,
                    }
                }
                DevStage::Pool { geom, kind } => {
                    if let Some(gin) = gin {
                        dev.pool2d_backward(gin, g, arg.as_ref(), geom, *kind, n)?;
                    }
                }
                DevStage::Linear { weight, bias, .. } => {
                    let rows = weight.fan_out;
                    if let Some((mask, _)) = drop {
                        dropout_backward(dev, rows * n, g, mask, model.config.dropout)?;
                    }
                    bias_act_backward(dev, (rows, n), g, y, acts[s], &mut bias.grad)?;
                    weight.backward(dev, g, input, gin, n)?;
                }
            }
        }
        Ok(())
    }

    fn params_mut(&mut self) -> Vec<&mut DevParam> {
        let mut out = Vec::new();
        for stage in &mut self.stages {
            match stage {
                DevStage::Conv {
                    weight, bias, norm, ..
                } => {
                    out.push(&mut weight.param);
                    out.extend(bias.as_mut());
                    if let Some(norm) = norm {
                        out.push(&mut norm.gamma);
                        out.push(&mut norm.beta);
                    }
                }
                DevStage::Pool { .. } => {}
                DevStage::Linear { weight, bias, .. } => {
                    out.push(&mut weight.param);
                    out.push(bias);
                }
            }
        }
        out
    }

    fn download(&self, model: &mut Cnn, opt: &mut Optimizer) -> Result<()> {
        let mut params = Vec::new();
        for stage in &self.stages {
            match stage {
                DevStage::Conv {
                    weight, bias, norm, ..
                } => {
                    params.push(&weight.param);
                    params.extend(bias.as_ref());
                    if let Some(norm) = norm {
                        params.extend([&norm.gamma, &norm.beta]);
                    }
                }
                DevStage::Pool { .. } => {}
                DevStage::Linear { weight, bias, .. } => params.extend([&weight.param, bias]),
            }
        }
        download_params(self.dev, params, &mut model.params, opt)?;
        for (dev_stage, stage) in self.stages.iter().zip(model.stages()) {
            if let (
                DevStage::Conv {
                    norm: Some(dn),
                    weight,
                    ..
                },
                Stage::Conv {
                    norm: Some(norm), ..
                },
            ) = (dev_stage, stage)
            {
                let channels = weight.fan_out;
                let mean = self.dev.download(&dn.running_mean)?;
                let var = self.dev.download(&dn.running_var)?;
                let mut running = norm.running.lock().unwrap_or_else(|e| e.into_inner());
                running.0.copy_from_slice(&mean[..channels]);
                running.1.copy_from_slice(&var[..channels]);
            }
        }
        Ok(())
    }

    fn upload_patterns(&mut self, model: &Cnn, opt: &Optimizer) -> Result<()> {
        for stage in &mut self.stages {
            if let DevStage::Conv { weight, .. } | DevStage::Linear { weight, .. } = stage {
                weight.refresh(self.dev, &model.params, opt)?;
            }
        }
        Ok(())
    }

    fn grow_operands(&self, bi: usize, layer: usize) -> Option<GrowOperands<'_>> {
        let s = *self.weight_stages.get(layer)?;
        let buf = self.buffers.get(bi)?;
        let sb = &buf.layers[s];
        match &self.stages[s] {
            DevStage::Conv { geom, weight, .. } => Some(GrowOperands {
                weight,
                x: sb.col.as_ref()?,
                dz: sb.norm.as_ref().map_or(&sb.g, |nb| &nb.dz),
                n: geom.out_h() * geom.out_w() * buf.n,
            }),
            DevStage::Linear { weight, .. } => Some(GrowOperands {
                weight,
                x: match s {
                    0 => &buf.x,
                    _ => buf.layers[s - 1].output(),
                },
                dz: &sb.g,
                n: buf.n,
            }),
            DevStage::Pool { .. } => None,
        }
    }
}

/// Trains `model` on device `dev` with the same loop, schedule, methods and reports as
/// [`crate::train::train`]; on return the host model holds the trained weights and
/// batch-norm running statistics.
pub fn train_cnn(
    dev: &CudaDevice,
    model: &mut Cnn,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let outputs = (model.config.classes, model.config.activation);
    let build = |model: &Cnn, opt: &Optimizer| GpuCnn::new(dev, model, opt);
    run(dev, model, outputs, (train, test), cfg, build, on_epoch)
}
