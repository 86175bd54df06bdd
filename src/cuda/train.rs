//! Training on a CUDA device: the same step as the CPU loop ([`crate::train::train`]) —
//! sparse layers through SpMM / SDDMM / transposed SpMM, dense ones through cuBLAS, fused
//! bias + activation, fused softmax cross-entropy, SGD or Adam over live weights — with
//! weights, gradients and optimizer state on the device. This module holds the loop, the
//! pieces every network shares and the [`Mlp`]; [`super::cnn`] adds convolutions.
//!
//! Rewiring runs the CPU's methods: at an update step the weights and optimizer state
//! come back, the [`Rewirer`] edits the patterns exactly as on the CPU, and the new
//! patterns, values and state go back to the device. RigL's grow step stays on the
//! device: each layer's dense gradient `dZ·Xᵀ` through cuBLAS and the choice of the `k`
//! largest by radix selection ([`CudaDevice::rigl_grow`]); only the chosen positions
//! cross. Updates are every ΔT steps (100 by default), so the copies cost little.
//!
//! [`Rewirer`]: crate::dst::Rewirer
//!
//! Dropout masks come from a counter-based generator on the device, so a run with
//! dropout does not reproduce the CPU's masks; without dropout the two agree up to
//! floating-point summation order.

use crate::cuda::u32_arg;
use std::time::Instant;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use rand::RngExt;

use super::{cuda_err, CudaDevice, GpuCsr, GrowScratch};
use crate::autograd::{argmax_cols, Act};
use crate::data::Dataset;
use crate::dst::GrowScores;
use crate::error::{Error, Result};
use crate::nn::{Activation, Mlp, Model, ParamId, ParamShape, ParamStore};
use crate::optim::{AdamStep, Optimizer, OptimizerConfig};
use crate::sparse::{seed_rng, CsrPattern, SeedRng};
use crate::train::{check_test_loss, plan_run, progress_bar, EpochReport, RunPlan, TrainConfig};

/// The activation code of `kernels/train.cu`, and leaky ReLU's slope.
fn act_code(act: Act) -> (i32, f32) {
    match act {
        Act::Identity => (0, 0.0),
        Act::Relu => (1, 0.0),
        Act::LeakyRelu(a) => (2, a),
        Act::Tanh => (3, 0.0),
        Act::Sigmoid => (4, 0.0),
    }
}

/// Blocks of 256 threads over `len` elements (the kernels loop grid-stride).
pub(super) fn grid(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads per row (the row-reduction kernels).
pub(super) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One parameter on the device: values, gradient, optimizer state.
pub(super) struct DevParam {
    id: ParamId,
    pub(super) value: CudaSlice<f32>,
    pub(super) grad: CudaSlice<f32>,
    state: Vec<CudaSlice<f32>>,
    decay: bool,
}

impl DevParam {
    pub(super) fn new(
        dev: &CudaDevice,
        params: &ParamStore,
        opt: &Optimizer,
        id: ParamId,
    ) -> Result<Self> {
        let p = params.get(id);
        Ok(DevParam {
            id,
            value: dev.upload(&p.value)?,
            grad: dev.zeros(p.value.len())?,
            state: opt
                .state(id)
                .iter()
                .map(|s| dev.upload(s))
                .collect::<Result<_>>()?,
            decay: p.decay,
        })
    }

    /// Brings values and state back to the host model and optimizer.
    fn download(
        &self,
        dev: &CudaDevice,
        params: &mut ParamStore,
        opt: &mut Optimizer,
    ) -> Result<()> {
        let value = &mut params.get_mut(self.id).value;
        let len = value.len();
        value.copy_from_slice(&dev.download(&self.value)?[..len]);
        for (host, d) in opt.state_mut(self.id).iter_mut().zip(&self.state) {
            let len = host.len();
            host.copy_from_slice(&dev.download(d)?[..len]);
        }
        Ok(())
    }
}

/// A weight `[fan_out × fan_in]` on the device: the parameter and, where it is sparse,
/// its pattern.
pub(super) struct DevWeight {
    pub(super) param: DevParam,
    /// the pattern of a sparse weight (`None`: dense)
    csr: Option<GpuCsr>,
    pub(super) fan_in: usize,
    pub(super) fan_out: usize,
}

impl DevWeight {
    pub(super) fn new(
        dev: &CudaDevice,
        params: &ParamStore,
        opt: &Optimizer,
        id: ParamId,
        fan_in: usize,
        fan_out: usize,
    ) -> Result<Self> {
        let csr = match &params.get(id).shape {
            ParamShape::Sparse { pattern } => Some(GpuCsr::new(dev, pattern)?),
            _ => None,
        };
        Ok(DevWeight {
            param: DevParam::new(dev, params, opt, id)?,
            csr,
            fan_in,
            fan_out,
        })
    }

    /// `z[fan_out × n] = W · x[fan_in × n]`.
    pub(super) fn forward(
        &self,
        dev: &CudaDevice,
        z: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let w = &self.param.value;
        match &self.csr {
            Some(csr) => dev.spmm(z, csr, w, x, n, 1.0, 0.0),
            None => dev.sgemm(
                z,
                w,
                x,
                (self.fan_out, self.fan_in, n),
                (false, false),
                1.0,
                0.0,
            ),
        }
    }

    /// The weight's gradient from `dz[fan_out × n]` and the forward's input `x` (an SDDMM
    /// on a sparse weight), and `dx = Wᵀ·dz` where `dx` is given.
    pub(super) fn backward(
        &mut self,
        dev: &CudaDevice,
        dz: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
        n: usize,
    ) -> Result<()> {
        let (out, fan_in) = (self.fan_out, self.fan_in);
        let p = &mut self.param;
        match &self.csr {
            Some(csr) => {
                dev.sddmm(&mut p.grad, csr, dz, x, n, 1.0, 0.0)?;
                if let Some(dx) = dx {
                    dev.spmm_t(dx, csr, &p.value, dz, n, 1.0, 0.0)?;
                }
            }
            None => {
                dev.sgemm(
                    &mut p.grad,
                    dz,
                    x,
                    (out, n, fan_in),
                    (false, true),
                    1.0,
                    0.0,
                )?;
                if let Some(dx) = dx {
                    dev.sgemm(dx, &p.value, dz, (fan_in, out, n), (true, false), 1.0, 0.0)?;
                }
            }
        }
        Ok(())
    }

    /// Re-uploads the weight where its pattern changed on the host.
    pub(super) fn refresh(
        &mut self,
        dev: &CudaDevice,
        params: &ParamStore,
        opt: &Optimizer,
    ) -> Result<()> {
        let p = params.get(self.param.id);
        if let (Some(csr), Some(pattern)) = (&self.csr, p.pattern()) {
            if csr.version() != pattern.version() {
                self.csr = Some(GpuCsr::new(dev, pattern)?);
                self.param = DevParam::new(dev, params, opt, self.param.id)?;
            }
        }
        Ok(())
    }
}

/// `y[r, j] = act(z[r, j] + bias[r])` over `rows × n`.
pub(super) fn bias_act(
    dev: &CudaDevice,
    (rows, n): (usize, usize),
    z: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    act: Act,
    y: &mut CudaSlice<f32>,
) -> Result<()> {
    let (code, slope) = act_code(act);
    let (rows32, n32) = (u32_arg("rows", rows)?, u32_arg("columns", n)?);
    let f = dev.function("bias_act_f32")?;
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(&rows32)
        .arg(&n32)
        .arg(z)
        .arg(bias)
        .arg(&code)
        .arg(&slope)
        .arg(y);
    // SAFETY: the signature of bias_act_f32; z and y hold rows·n floats, bias rows.
    unsafe { launch.launch(grid(rows * n)) }.map_err(|e| cuda_err("launching bias_act", e))?;
    Ok(())
}

/// `g *= act'(y)` in place over `rows × n`, and `db[r] = Σ_j g[r, j]` (overwritten).
pub(super) fn bias_act_backward(
    dev: &CudaDevice,
    (rows, n): (usize, usize),
    g: &mut CudaSlice<f32>,
    y: &CudaSlice<f32>,
    act: Act,
    db: &mut CudaSlice<f32>,
) -> Result<()> {
    dev.zero(db)?;
    if rows == 0 {
        return Ok(());
    }
    let (code, slope) = act_code(act);
    let (rows32, n32) = (u32_arg("rows", rows)?, u32_arg("columns", n)?);
    let f = dev.function("bias_act_backward_f32")?;
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(&rows32)
        .arg(&n32)
        .arg(g)
        .arg(y)
        .arg(&code)
        .arg(&slope)
        .arg(db);
    // SAFETY: the signature of bias_act_backward_f32; one block of 256 per row.
    unsafe { launch.launch(per_row(rows)) }
        .map_err(|e| cuda_err("launching bias_act_backward", e))?;
    Ok(())
}

/// Inverted dropout of `len` values: `y = x·mask`, the mask drawn from `seed`.
fn dropout(
    dev: &CudaDevice,
    len: usize,
    x: &CudaSlice<f32>,
    mask: &mut CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    p: f32,
    seed: u64,
) -> Result<()> {
    let f = dev.function("dropout_f32")?;
    let len32 = u32_arg("length", len)?;
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(&len32)
        .arg(x)
        .arg(mask)
        .arg(y)
        .arg(&p)
        .arg(&seed);
    // SAFETY: the signature of dropout_f32; all buffers hold len floats.
    unsafe { launch.launch(grid(len)) }.map_err(|e| cuda_err("launching dropout", e))?;
    Ok(())
}

/// `a[i] *= b[i]` over `len` values.
fn mul(dev: &CudaDevice, len: usize, a: &mut CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<()> {
    let f = dev.function("mul_f32")?;
    let len32 = u32_arg("length", len)?;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(&len32).arg(a).arg(b);
    // SAFETY: the signature of mul_f32; both buffers hold len floats.
    unsafe { launch.launch(grid(len)) }.map_err(|e| cuda_err("launching mul", e))?;
    Ok(())
}

/// The dropout of a hidden layer's output `y` (`len` values) into `h`, or a copy where
/// dropout is off (evaluation, or `p = 0`).
#[allow(clippy::too_many_arguments)]
pub(super) fn dropout_or_copy(
    dev: &CudaDevice,
    len: usize,
    y: &CudaSlice<f32>,
    mask: &mut CudaSlice<f32>,
    h: &mut CudaSlice<f32>,
    p: f32,
    on: bool,
    rng: &mut SeedRng,
) -> Result<()> {
    if on && p > 0.0 {
        dropout(dev, len, y, mask, h, p, rng.random::<u64>())
    } else {
        dev.stream()
            .memcpy_dtod(y, h)
            .map_err(|e| cuda_err("copying activations", e))
    }
}

/// The backward of [`dropout_or_copy`] in training: `g *= mask` where dropout was on.
pub(super) fn dropout_backward(
    dev: &CudaDevice,
    len: usize,
    g: &mut CudaSlice<f32>,
    mask: &CudaSlice<f32>,
    p: f32,
) -> Result<()> {
    if p > 0.0 {
        mul(dev, len, g, mask)?;
    }
    Ok(())
}

/// The batch's logits, labels and the buffers of the fused softmax cross-entropy.
pub(super) struct LossBuffers {
    pub(super) labels: CudaSlice<u32>,
    pub(super) probs: CudaSlice<f32>,
    /// per-sample losses
    pub(super) loss: CudaSlice<f32>,
}

impl LossBuffers {
    pub(super) fn new(dev: &CudaDevice, classes: usize, n: usize) -> Result<Self> {
        Ok(LossBuffers {
            labels: dev.upload(&vec![0u32; n])?,
            probs: dev.zeros(classes * n)?,
            loss: dev.zeros(n)?,
        })
    }

    /// Softmax and per-sample cross-entropy of `logits[classes × n]`.
    pub(super) fn forward(
        &mut self,
        dev: &CudaDevice,
        classes: usize,
        n: usize,
        logits: &CudaSlice<f32>,
    ) -> Result<()> {
        let f = dev.function("softmax_ce_f32")?;
        let (c32, n32) = (u32_arg("classes", classes)?, u32_arg("batch", n)?);
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(&c32)
            .arg(&n32)
            .arg(logits)
            .arg(&self.labels)
            .arg(&mut self.probs)
            .arg(&mut self.loss);
        // SAFETY: the signature of softmax_ce_f32; one thread per column.
        unsafe { launch.launch(grid(n)) }.map_err(|e| cuda_err("launching softmax_ce", e))?;
        Ok(())
    }

    /// The gradient of the batch's mean loss at the logits, into `g[classes × n]`.
    pub(super) fn backward(
        &self,
        dev: &CudaDevice,
        classes: usize,
        n: usize,
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let f = dev.function("softmax_ce_backward_f32")?;
        let (c32, n32, scale) = (
            u32_arg("classes", classes)?,
            u32_arg("batch", n)?,
            1.0 / n.max(1) as f32,
        );
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(&c32)
            .arg(&n32)
            .arg(&self.probs)
            .arg(&self.labels)
            .arg(&scale)
            .arg(g);
        // SAFETY: the signature of softmax_ce_backward_f32; probs and g hold classes·n.
        unsafe { launch.launch(grid(classes * n)) }
            .map_err(|e| cuda_err("launching softmax_ce_backward", e))?;
        Ok(())
    }
}

/// One optimizer step over `params` (Adam's step count `adam_t` advances first).
pub(super) fn optimizer_step<'p>(
    dev: &CudaDevice,
    params: impl IntoIterator<Item = &'p mut DevParam>,
    config: &OptimizerConfig,
    lr: f32,
    adam_t: &mut u64,
) -> Result<()> {
    if matches!(config, OptimizerConfig::Adam { .. }) {
        *adam_t += 1;
    }
    let t = *adam_t;
    for p in params {
        let len = u32_arg("parameter length", p.value.len())?;
        if len == 0 {
            continue;
        }
        match *config {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let wd = if p.decay { weight_decay } else { 0.0 };
                let f = dev.function("sgd_f32")?;
                let nest = nesterov as i32;
                let null: u64 = 0;
                let mut launch = dev.stream().launch_builder(&f);
                launch.arg(&len).arg(&mut p.value).arg(&p.grad);
                match p.state.first_mut() {
                    Some(buf) => launch.arg(buf),
                    None => launch.arg(&null),
                };
                launch.arg(&lr).arg(&wd).arg(&momentum).arg(&nest);
                // SAFETY: the signature of sgd_f32; every buffer holds len floats.
                unsafe { launch.launch(grid(len as usize)) }
                    .map_err(|e| cuda_err("launching sgd", e))?;
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let wd = if p.decay { weight_decay } else { 0.0 };
                let h = AdamStep::new(beta1, beta2, eps, wd, decoupled, lr, t);
                let f = dev.function("adam_f32")?;
                let [m, v] = p.state.as_mut_slice() else {
                    return Err(Error::Training("Adam needs two state buffers".into()));
                };
                let mut launch = dev.stream().launch_builder(&f);
                launch
                    .arg(&len)
                    .arg(&mut p.value)
                    .arg(&p.grad)
                    .arg(m)
                    .arg(v)
                    .arg(&h.beta1)
                    .arg(&h.beta2)
                    .arg(&h.eps)
                    .arg(&h.l2)
                    .arg(&h.shrink)
                    .arg(&h.step_size)
                    .arg(&h.bc2_sqrt);
                // SAFETY: the signature of adam_f32; every buffer holds len floats.
                unsafe { launch.launch(grid(len as usize)) }
                    .map_err(|e| cuda_err("launching adam", e))?;
            }
        }
    }
    Ok(())
}

/// What RigL's grow step reads of one weight layer at an update step: the weight, the
/// layer's input `X[fan_in × n]` and the gradient `dZ[fan_out × n]` at its product.
pub(super) struct GrowOperands<'g> {
    pub(super) weight: &'g DevWeight,
    pub(super) x: &'g CudaSlice<f32>,
    pub(super) dz: &'g CudaSlice<f32>,
    pub(super) n: usize,
}

/// A network's device buffers for one batch size `n`: the input, the loss, and the
/// network's own per-layer buffers.
pub(super) struct Batch<L> {
    pub(super) n: usize,
    /// the input `[features × n]`
    pub(super) x: CudaSlice<f32>,
    pub(super) loss: LossBuffers,
    pub(super) layers: L,
}

impl<L> Batch<L> {
    pub(super) fn new(
        dev: &CudaDevice,
        (features, classes, n): (usize, usize, usize),
        layers: L,
    ) -> Result<Self> {
        Ok(Batch {
            n,
            x: dev.zeros(features * n)?,
            loss: LossBuffers::new(dev, classes, n)?,
            layers,
        })
    }
}

/// A network on the device, as the shared loop ([`run`]) drives it.
pub(super) trait DeviceNet {
    /// the host model it mirrors
    type Host: Model + 'static;
    /// the per-layer buffers of one batch size
    type Layers;

    /// The buffers made so far, one per batch size (indexed by `bi` below).
    fn batches(&mut self) -> &mut Vec<Batch<Self::Layers>>;

    /// New buffers for batch size `n`.
    fn new_batch(&self, n: usize) -> Result<Batch<Self::Layers>>;

    /// Forward pass of the batch already in buffers `bi`, through the loss; returns the
    /// logits on the host.
    fn forward(
        &mut self,
        bi: usize,
        model: &Self::Host,
        train: bool,
        rng: &mut SeedRng,
    ) -> Result<Vec<f32>>;

    /// Backward pass of the last (training) forward on buffers `bi`: every parameter's
    /// gradient. Each weight layer's `X` and `dZ` stay in the buffers for RigL.
    fn backward(&mut self, bi: usize, model: &Self::Host) -> Result<()>;

    /// Every parameter, for the optimizer.
    fn params_mut(&mut self) -> Vec<&mut DevParam>;

    /// Copies every parameter and its optimizer state (and any other training state)
    /// back to the host.
    fn download(&self, model: &mut Self::Host, opt: &mut Optimizer) -> Result<()>;

    /// Re-uploads the sparse weights whose pattern changed on the host.
    fn upload_patterns(&mut self, model: &Self::Host, opt: &Optimizer) -> Result<()>;

    /// RigL's operands for weight layer `layer` (an index into [`Model::weight_layers`])
    /// from the last backward on buffers `bi`.
    fn grow_operands(&self, bi: usize, layer: usize) -> Option<GrowOperands<'_>>;
}

/// Downloads `params` into the host store and optimizer.
pub(super) fn download_params<'p>(
    dev: &CudaDevice,
    params: impl IntoIterator<Item = &'p DevParam>,
    host: &mut ParamStore,
    opt: &mut Optimizer,
) -> Result<()> {
    params
        .into_iter()
        .try_for_each(|p| p.download(dev, host, opt))
}

/// Loads the batch `chunk` of `data` into buffers of `gpu` and runs the forward pass:
/// the buffer index, the host logits and the per-sample losses.
#[allow(clippy::too_many_arguments)]
fn forward_batch<N: DeviceNet>(
    dev: &CudaDevice,
    gpu: &mut N,
    model: &N::Host,
    data: &Dataset,
    chunk: &[u32],
    (x, labels): (&mut [f32], &mut [u32]),
    train: bool,
    rng: &mut SeedRng,
) -> Result<(usize, Vec<f32>, Vec<f32>)> {
    let b = chunk.len();
    data.fill_batch(chunk, &mut x[..data.dim * b], &mut labels[..b])?;
    let bi = match gpu.batches().iter().position(|buf| buf.n == b) {
        Some(i) => i,
        None => {
            let buf = gpu.new_batch(b)?;
            gpu.batches().push(buf);
            gpu.batches().len() - 1
        }
    };
    let buf = &mut gpu.batches()[bi];
    dev.upload_into(&x[..data.dim * b], &mut buf.x)?;
    dev.upload_into(&labels[..b], &mut buf.loss.labels)?;
    let logits = gpu.forward(bi, model, train, rng)?;
    let mut losses = dev.download(&gpu.batches()[bi].loss.loss)?;
    losses.truncate(b);
    Ok((bi, logits, losses))
}

/// How many of the `b` samples have their label as the arg-max logit.
fn count_correct(logits: &[f32], labels: &[u32], b: usize) -> Result<usize> {
    let classes = logits.len() / b.max(1);
    Ok(argmax_cols(logits, classes, b)?
        .iter()
        .zip(&labels[..b])
        .filter(|(p, l)| p == l)
        .count())
}

/// Mean loss and accuracy of the device model on `data`.
fn evaluate<N: DeviceNet>(
    dev: &CudaDevice,
    gpu: &mut N,
    model: &N::Host,
    data: &Dataset,
    batch: usize,
) -> Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let mut rng = seed_rng(0);
    let order: Vec<u32> = (0..data.n as u32).collect();
    let batch = batch.clamp(1, data.n.max(1));
    let mut x = vec![0.0f32; data.dim * batch];
    let mut labels = vec![0u32; batch];
    for chunk in order.chunks(batch) {
        let (_, logits, losses) = forward_batch(
            dev,
            gpu,
            model,
            data,
            chunk,
            (&mut x, &mut labels),
            false,
            &mut rng,
        )?;
        loss_sum += losses.iter().map(|&v| v as f64).sum::<f64>();
        correct += count_correct(&logits, &labels, chunk.len())?;
    }
    let n = data.n.max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// RigL's grow choice from the update step's `X` and `dZ`, which stay on the device.
struct DeviceScores<'g, N> {
    dev: &'g CudaDevice,
    gpu: &'g N,
    /// the buffers of the step's batch size
    bi: usize,
    scratch: &'g mut GrowScratch,
}

impl<N: DeviceNet> GrowScores for DeviceScores<'_, N> {
    fn largest(
        &mut self,
        layer: usize,
        pattern: &CsrPattern,
        dropped: &[bool],
        k: usize,
    ) -> Result<(Vec<(u32, u32)>, f64)> {
        let ops = self.gpu.grow_operands(self.bi, layer).ok_or_else(|| {
            Error::Training(format!(
                "RigL update of layer {layer}, which the GPU model lacks"
            ))
        })?;
        let csr = match &ops.weight.csr {
            Some(csr) if csr.version() == pattern.version() => csr,
            _ => {
                return Err(Error::Training(format!(
                    "RigL update of layer {layer}: the device holds another pattern"
                )))
            }
        };
        let grow = self
            .dev
            .rigl_grow(self.scratch, csr, ops.dz, ops.x, ops.n, dropped, k)?;
        let flops = 2.0 * (ops.weight.fan_out * ops.weight.fan_in * ops.n) as f64;
        Ok((grow, flops))
    }
}

/// The training loop shared by every network: `build` puts the model on the device,
/// then the same schedule, methods and reports as [`crate::train::train`]; on return the
/// host model holds the trained weights. `classes` and `activation` are the model's, to
/// check against the data.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<N: DeviceNet>(
    dev: &CudaDevice,
    model: &mut N::Host,
    (classes, activation): (usize, Activation),
    (train, test): (&Dataset, &Dataset),
    cfg: &TrainConfig,
    build: impl FnOnce(&N::Host, &Optimizer) -> Result<N>,
    mut on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let RunPlan {
        steps_per_epoch,
        total,
        batch,
        mut rewirer,
    } = plan_run(&*model, train, test, cfg)?;
    if let Some(d) = [train, test].into_iter().find(|d| d.classes > classes) {
        return Err(Error::shape(
            "train",
            format!(
                "the data has {} classes but the model has {classes} outputs",
                d.classes
            ),
        ));
    }
    if let Activation::LeakyRelu(a) = activation {
        if a.is_nan() || a < 0.0 {
            return Err(Error::arg(
                "activation",
                format!("a leaky ReLU slope must be ≥ 0, got {a}"),
            ));
        }
    }
    let mut opt = Optimizer::new(cfg.optimizer.clone(), model.params())?;
    let mut gpu = build(model, &opt)?;
    let mut adam_t = 0u64;
    let mut grow_scratch = GrowScratch::default();
    let mut rng = seed_rng(cfg.seed ^ 0x5eed);
    let mut x = vec![0.0f32; train.dim * batch];
    let mut labels = vec![0u32; batch];
    let mut reports = Vec::new();
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        if step >= total {
            break;
        }
        let order = train.epoch_order(cfg.seed, epoch);
        let bar = progress_bar(
            cfg.progress,
            steps_per_epoch.min(total - step),
            epoch + 1,
            cfg.epochs,
        );
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen, mut flops, mut steps, mut rewired) =
            (0.0f64, 0usize, 0usize, 0.0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for chunk in order.chunks(cfg.batch_size) {
            if step >= total {
                break;
            }
            let b = chunk.len();
            let update = rewirer.as_ref().is_some_and(|r| r.is_update(step));
            let (bi, logits, losses) = forward_batch(
                dev,
                &mut gpu,
                model,
                train,
                chunk,
                (&mut x, &mut labels),
                true,
                &mut rng,
            )?;
            let lv = losses.iter().map(|&v| v as f64).sum::<f64>() / b.max(1) as f64;
            if !lv.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss became {lv} at epoch {}, step {step} (learning rate {lr}); try a lower learning rate (--lr)",
                    epoch + 1
                )));
            }
            correct += count_correct(&logits, &labels, b)?;
            gpu.backward(bi, model)?;
            lr = cfg.schedule.lr(cfg.lr, step, total, steps_per_epoch);
            match rewirer.as_mut() {
                // as on the CPU: RigL rewires instead of stepping, the others step first
                Some(r) if update => {
                    if !r.replaces_step() {
                        optimizer_step(dev, gpu.params_mut(), &cfg.optimizer, lr, &mut adam_t)?;
                    }
                    gpu.download(model, &mut opt)?;
                    let mut scores = DeviceScores {
                        dev,
                        gpu: &gpu,
                        bi,
                        scratch: &mut grow_scratch,
                    };
                    let rep = r.update_with(step, model, &mut opt, &mut scores)?;
                    rewired += rep.rewired;
                    flops += rep.flops;
                    gpu.upload_patterns(model, &opt)?;
                }
                _ => optimizer_step(dev, gpu.params_mut(), &cfg.optimizer, lr, &mut adam_t)?,
            }
            loss_sum += lv * b as f64;
            seen += b;
            flops += model.train_flops_per_sample() * b as f64;
            steps += 1;
            step += 1;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        dev.synchronize()?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let epoch_s = start.elapsed().as_secs_f64();
        let (test_loss, test_acc) = evaluate(dev, &mut gpu, model, test, cfg.batch_size.max(256))?;
        check_test_loss(test_loss, epoch)?;
        let report = EpochReport {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            test_loss,
            epoch_s,
            live_weights: model.live_weights(),
            dense_weights: model.dense_weights(),
            train_flops: flops,
            steps,
            rewired,
        };
        on_epoch(&report)?;
        reports.push(report);
    }
    gpu.download(model, &mut opt)?;
    Ok(reports)
}

/// One layer of an [`Mlp`] on the device.
struct DevLayer {
    weight: DevWeight,
    bias: DevParam,
}

/// Activations of one batch size: per layer its product `z`, activation `y`, dropout
/// mask and output `h`, and the gradient `g` at its output (`dZ` after the backward).
struct MlpBuffers {
    z: Vec<CudaSlice<f32>>,
    y: Vec<CudaSlice<f32>>,
    mask: Vec<CudaSlice<f32>>,
    h: Vec<CudaSlice<f32>>,
    g: Vec<CudaSlice<f32>>,
}

/// An [`Mlp`] on the device.
struct GpuMlp<'a> {
    dev: &'a CudaDevice,
    layers: Vec<DevLayer>,
    buffers: Vec<Batch<MlpBuffers>>,
}

impl<'a> GpuMlp<'a> {
    fn new(dev: &'a CudaDevice, model: &Mlp, opt: &Optimizer) -> Result<Self> {
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(DevLayer {
                    weight: DevWeight::new(dev, &model.params, opt, l.weight, l.fan_in, l.fan_out)?,
                    bias: DevParam::new(dev, &model.params, opt, l.bias)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(GpuMlp {
            dev,
            layers,
            buffers: Vec::new(),
        })
    }

    /// The activation after layer `l`.
    fn act(&self, model: &Mlp, l: usize) -> Act {
        if l + 1 < self.layers.len() {
            model.config.activation.act()
        } else {
            Act::Identity
        }
    }
}

impl DeviceNet for GpuMlp<'_> {
    type Host = Mlp;
    type Layers = MlpBuffers;

    fn batches(&mut self) -> &mut Vec<Batch<MlpBuffers>> {
        &mut self.buffers
    }

    fn new_batch(&self, n: usize) -> Result<Batch<MlpBuffers>> {
        let dev = self.dev;
        let per_layer = || -> Result<Vec<CudaSlice<f32>>> {
            let outs = self.layers.iter().map(|l| l.weight.fan_out * n);
            outs.map(|len| dev.zeros(len)).collect()
        };
        let layers = MlpBuffers {
            z: per_layer()?,
            y: per_layer()?,
            mask: per_layer()?,
            h: per_layer()?,
            g: per_layer()?,
        };
        let features = self.layers[0].weight.fan_in;
        let classes = self.layers.last().map_or(0, |l| l.weight.fan_out);
        Batch::new(dev, (features, classes, n), layers)
    }

    fn forward(
        &mut self,
        bi: usize,
        model: &Mlp,
        train: bool,
        rng: &mut SeedRng,
    ) -> Result<Vec<f32>> {
        let dev = self.dev;
        let last = self.layers.len() - 1;
        let acts: Vec<Act> = (0..=last).map(|l| self.act(model, l)).collect();
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, rest) = buf.layers.h.split_at_mut(l);
            let input = if l == 0 { &buf.x } else { &before[l - 1] };
            let rows = layer.weight.fan_out;
            layer.weight.forward(dev, &mut buf.layers.z[l], input, n)?;
            bias_act(
                dev,
                (rows, n),
                &buf.layers.z[l],
                &layer.bias.value,
                acts[l],
                &mut buf.layers.y[l],
            )?;
            let p = if l < last { model.config.dropout } else { 0.0 };
            dropout_or_copy(
                dev,
                rows * n,
                &buf.layers.y[l],
                &mut buf.layers.mask[l],
                &mut rest[0],
                p,
                train,
                rng,
            )?;
        }
        let classes = self.layers[last].weight.fan_out;
        buf.loss.forward(dev, classes, n, &buf.layers.y[last])?;
        dev.download(&buf.layers.y[last])
    }

    fn backward(&mut self, bi: usize, model: &Mlp) -> Result<()> {
        let dev = self.dev;
        let last = self.layers.len() - 1;
        let acts: Vec<Act> = (0..=last).map(|l| self.act(model, l)).collect();
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        let classes = self.layers[last].weight.fan_out;
        buf.loss
            .backward(dev, classes, n, &mut buf.layers.g[last])?;
        for l in (0..=last).rev() {
            let layer = &mut self.layers[l];
            let rows = layer.weight.fan_out;
            let (g_before, g_rest) = buf.layers.g.split_at_mut(l);
            let g = &mut g_rest[0];
            if l < last {
                dropout_backward(dev, rows * n, g, &buf.layers.mask[l], model.config.dropout)?;
            }
            bias_act_backward(
                dev,
                (rows, n),
                g,
                &buf.layers.y[l],
                acts[l],
                &mut layer.bias.grad,
            )?;
            let input = if l == 0 { &buf.x } else { &buf.layers.h[l - 1] };
            // the gradient at this layer's input is the previous layer's output gradient
            layer
                .weight
                .backward(dev, g, input, g_before.last_mut(), n)?;
        }
        Ok(())
    }

    fn params_mut(&mut self) -> Vec<&mut DevParam> {
        self.layers
            .iter_mut()
            .flat_map(|l| [&mut l.weight.param, &mut l.bias])
            .collect()
    }

    fn download(&self, model: &mut Mlp, opt: &mut Optimizer) -> Result<()> {
        let params = self.layers.iter().flat_map(|l| [&l.weight.param, &l.bias]);
        download_params(self.dev, params, &mut model.params, opt)
    }

    fn upload_patterns(&mut self, model: &Mlp, opt: &Optimizer) -> Result<()> {
        for layer in &mut self.layers {
            layer.weight.refresh(self.dev, &model.params, opt)?;
        }
        Ok(())
    }

    fn grow_operands(&self, bi: usize, layer: usize) -> Option<GrowOperands<'_>> {
        let buf = &self.buffers[bi];
        Some(GrowOperands {
            weight: &self.layers.get(layer)?.weight,
            x: if layer == 0 {
                &buf.x
            } else {
                &buf.layers.h[layer - 1]
            },
            dz: &buf.layers.g[layer],
            n: buf.n,
        })
    }
}

/// Trains `model` on device `dev` with the same loop, schedule, methods and reports as
/// [`crate::train::train`]; on return the host model holds the trained weights.
pub fn train_mlp(
    dev: &CudaDevice,
    model: &mut Mlp,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let outputs = (model.config.classes, model.config.activation);
    let build = |model: &Mlp, opt: &Optimizer| GpuMlp::new(dev, model, opt);
    run(dev, model, outputs, (train, test), cfg, build, on_epoch)
}
