//! Training an [`Mlp`] on a CUDA device: the same step as the CPU loop
//! ([`crate::train::train`]) — sparse layers through SpMM / SDDMM / transposed SpMM,
//! dense ones through cuBLAS, fused bias + activation, fused softmax cross-entropy,
//! SGD or Adam over live weights — with weights, gradients and optimizer state on the
//! device.
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

use std::time::Instant;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use rand::RngExt;

use super::{cuda_err, CudaDevice, GpuCsr, GrowScratch};
use crate::autograd::{argmax_cols, Act};
use crate::data::Dataset;
use crate::dst::GrowScores;
use crate::error::{Error, Result};
use crate::nn::{Mlp, Model, ParamId, ParamShape};
use crate::optim::{AdamStep, Optimizer, OptimizerConfig};
use crate::sparse::{seed_rng, CsrPattern};
use crate::train::{plan_run, progress_bar, EpochReport, RunPlan, TrainConfig};

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

/// One parameter on the device: values, gradient, optimizer state.
struct DevParam {
    id: ParamId,
    value: CudaSlice<f32>,
    grad: CudaSlice<f32>,
    state: Vec<CudaSlice<f32>>,
    decay: bool,
}

impl DevParam {
    fn new(dev: &CudaDevice, model: &Mlp, opt: &Optimizer, id: ParamId) -> Result<Self> {
        let p = model.params.get(id);
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
    fn download(&self, dev: &CudaDevice, model: &mut Mlp, opt: &mut Optimizer) -> Result<()> {
        let value = &mut model.params.get_mut(self.id).value;
        let len = value.len();
        value.copy_from_slice(&dev.download(&self.value)?[..len]);
        for (host, d) in opt.state_mut(self.id).iter_mut().zip(&self.state) {
            let len = host.len();
            host.copy_from_slice(&dev.download(d)?[..len]);
        }
        Ok(())
    }
}

/// One weight layer on the device.
struct DevLayer {
    weight: DevParam,
    bias: DevParam,
    /// the pattern of a sparse weight (`None`: dense)
    csr: Option<GpuCsr>,
    fan_in: usize,
    fan_out: usize,
}

/// Activations of one batch size: per layer its input `h`, product `z`, output `y`,
/// dropout mask, and the gradient buffers.
struct Buffers {
    n: usize,
    x: CudaSlice<f32>,
    labels: CudaSlice<u32>,
    z: Vec<CudaSlice<f32>>,
    y: Vec<CudaSlice<f32>>,
    mask: Vec<CudaSlice<f32>>,
    h: Vec<CudaSlice<f32>>,
    /// gradient at each layer's output, and at its input
    g: Vec<CudaSlice<f32>>,
    gin: Vec<CudaSlice<f32>>,
    probs: CudaSlice<f32>,
    loss: CudaSlice<f32>,
}

impl Buffers {
    fn new(dev: &CudaDevice, layers: &[DevLayer], n: usize) -> Result<Self> {
        let z = |f: &dyn Fn(&DevLayer) -> usize| -> Result<Vec<CudaSlice<f32>>> {
            layers.iter().map(|l| dev.zeros(f(l) * n)).collect()
        };
        let classes = layers.last().map_or(0, |l| l.fan_out);
        Ok(Buffers {
            n,
            x: dev.zeros(layers[0].fan_in * n)?,
            labels: dev.upload(&vec![0u32; n])?,
            z: z(&|l| l.fan_out)?,
            y: z(&|l| l.fan_out)?,
            mask: z(&|l| l.fan_out)?,
            h: z(&|l| l.fan_out)?,
            g: z(&|l| l.fan_out)?,
            gin: z(&|l| l.fan_in)?,
            probs: dev.zeros(classes * n)?,
            loss: dev.zeros(n)?,
        })
    }
}

fn grid(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The device side of a run.
struct GpuMlp<'a> {
    dev: &'a CudaDevice,
    layers: Vec<DevLayer>,
    buffers: Vec<Buffers>,
    /// Adam's step count on the device
    adam_t: u64,
}

impl<'a> GpuMlp<'a> {
    fn new(dev: &'a CudaDevice, model: &Mlp, opt: &Optimizer) -> Result<Self> {
        let mut layers = Vec::new();
        for l in &model.layers {
            let csr = match &model.params.get(l.weight).shape {
                ParamShape::Sparse { pattern } => Some(GpuCsr::new(dev, pattern)?),
                _ => None,
            };
            layers.push(DevLayer {
                weight: DevParam::new(dev, model, opt, l.weight)?,
                bias: DevParam::new(dev, model, opt, l.bias)?,
                csr,
                fan_in: l.fan_in,
                fan_out: l.fan_out,
            });
        }
        Ok(GpuMlp {
            dev,
            layers,
            buffers: Vec::new(),
            adam_t: 0,
        })
    }

    /// The buffers for batch size `n` (made on first use).
    fn buffers(&mut self, n: usize) -> Result<usize> {
        if let Some(i) = self.buffers.iter().position(|b| b.n == n) {
            return Ok(i);
        }
        self.buffers.push(Buffers::new(self.dev, &self.layers, n)?);
        Ok(self.buffers.len() - 1)
    }

    /// Forward pass of the batch already in buffers `bi`; fills `probs` and `loss` and
    /// returns the logits on the host.
    fn forward(
        &mut self,
        bi: usize,
        model: &Mlp,
        train: bool,
        rng: &mut crate::sparse::SeedRng,
    ) -> Result<Vec<f32>> {
        let dev = self.dev;
        let last = self.layers.len() - 1;
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, rest) = buf.h.split_at_mut(l);
            let input = if l == 0 { &buf.x } else { &before[l - 1] };
            let z = &mut buf.z[l];
            match &layer.csr {
                Some(csr) => dev.spmm(z, csr, &layer.weight.value, input, n, 1.0, 0.0)?,
                None => dev.sgemm(
                    z,
                    &layer.weight.value,
                    input,
                    (layer.fan_out, layer.fan_in, n),
                    (false, false),
                    1.0,
                    0.0,
                )?,
            }
            let act = if l < last {
                model.config.activation.act()
            } else {
                Act::Identity
            };
            let (code, slope) = act_code(act);
            let (rows, n32) = (layer.fan_out as u32, n as u32);
            let f = dev.function("bias_act_f32")?;
            let mut launch = dev.stream().launch_builder(&f);
            launch
                .arg(&rows)
                .arg(&n32)
                .arg(&*z)
                .arg(&layer.bias.value)
                .arg(&code)
                .arg(&slope)
                .arg(&mut buf.y[l]);
            // SAFETY: the signature of bias_act_f32; buffers hold rows·n floats.
            unsafe { launch.launch(grid(layer.fan_out * n)) }
                .map_err(|e| cuda_err("launching bias_act", e))?;
            let out = &mut rest[0];
            if l < last && train && model.config.dropout > 0.0 {
                let f = dev.function("dropout_f32")?;
                let (len, p, seed) = (
                    (layer.fan_out * n) as u32,
                    model.config.dropout,
                    rng.random::<u64>(),
                );
                let mut launch = dev.stream().launch_builder(&f);
                launch
                    .arg(&len)
                    .arg(&buf.y[l])
                    .arg(&mut buf.mask[l])
                    .arg(&mut *out)
                    .arg(&p)
                    .arg(&seed);
                // SAFETY: the signature of dropout_f32; all buffers hold len floats.
                unsafe { launch.launch(grid(len as usize)) }
                    .map_err(|e| cuda_err("launching dropout", e))?;
            } else {
                dev.stream()
                    .memcpy_dtod(&buf.y[l], out)
                    .map_err(|e| cuda_err("copying activations", e))?;
            }
        }
        let classes = self.layers[last].fan_out;
        let f = dev.function("softmax_ce_f32")?;
        let (c32, n32) = (classes as u32, n as u32);
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(&c32)
            .arg(&n32)
            .arg(&buf.y[last])
            .arg(&buf.labels)
            .arg(&mut buf.probs)
            .arg(&mut buf.loss);
        // SAFETY: the signature of softmax_ce_f32; one thread per column.
        unsafe { launch.launch(grid(n)) }.map_err(|e| cuda_err("launching softmax_ce", e))?;
        dev.download(&buf.y[last])
    }

    /// Backward pass of the last forward on buffers `bi`: gradients of every parameter.
    /// Each layer's `dZ` stays in the buffers (RigL's grow step reads it).
    fn backward(&mut self, bi: usize, model: &Mlp, train: bool) -> Result<()> {
        let dev = self.dev;
        let last = self.layers.len() - 1;
        let buf = &mut self.buffers[bi];
        let n = buf.n;
        let classes = self.layers[last].fan_out;
        let f = dev.function("softmax_ce_backward_f32")?;
        let (c32, n32, scale) = (classes as u32, n as u32, 1.0 / n.max(1) as f32);
        let mut launch = dev.stream().launch_builder(&f);
        launch
            .arg(&c32)
            .arg(&n32)
            .arg(&buf.probs)
            .arg(&buf.labels)
            .arg(&scale)
            .arg(&mut buf.g[last]);
        // SAFETY: the signature of softmax_ce_backward_f32.
        unsafe { launch.launch(grid(classes * n)) }
            .map_err(|e| cuda_err("launching softmax_ce_backward", e))?;
        for l in (0..=last).rev() {
            let layer = &mut self.layers[l];
            if l < last {
                // the gradient at this layer's output arrives in gin[l + 1]
                dev.stream()
                    .memcpy_dtod(&buf.gin[l + 1], &mut buf.g[l])
                    .map_err(|e| cuda_err("copying gradients", e))?;
                if train && model.config.dropout > 0.0 {
                    let f = dev.function("mul_f32")?;
                    let len = (layer.fan_out * n) as u32;
                    let mut launch = dev.stream().launch_builder(&f);
                    launch.arg(&len).arg(&mut buf.g[l]).arg(&buf.mask[l]);
                    // SAFETY: the signature of mul_f32.
                    unsafe { launch.launch(grid(len as usize)) }
                        .map_err(|e| cuda_err("launching mul", e))?;
                }
            }
            let act = if l < last {
                model.config.activation.act()
            } else {
                Act::Identity
            };
            let (code, slope) = act_code(act);
            dev.zero(&mut layer.bias.grad)?;
            let f = dev.function("bias_act_backward_f32")?;
            let rows = layer.fan_out as u32;
            let mut launch = dev.stream().launch_builder(&f);
            launch
                .arg(&rows)
                .arg(&n32)
                .arg(&mut buf.g[l])
                .arg(&buf.y[l])
                .arg(&code)
                .arg(&slope)
                .arg(&mut layer.bias.grad);
            let cfg = LaunchConfig {
                grid_dim: (rows, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the signature of bias_act_backward_f32; one block of 256 per row.
            unsafe { launch.launch(cfg) }
                .map_err(|e| cuda_err("launching bias_act_backward", e))?;
            let input = if l == 0 { &buf.x } else { &buf.h[l - 1] };
            match &layer.csr {
                Some(csr) => {
                    dev.sddmm(&mut layer.weight.grad, csr, &buf.g[l], input, n, 1.0, 0.0)?;
                    if l > 0 {
                        dev.spmm_t(
                            &mut buf.gin[l],
                            csr,
                            &layer.weight.value,
                            &buf.g[l],
                            n,
                            1.0,
                            0.0,
                        )?;
                    }
                }
                None => {
                    dev.sgemm(
                        &mut layer.weight.grad,
                        &buf.g[l],
                        input,
                        (layer.fan_out, n, layer.fan_in),
                        (false, true),
                        1.0,
                        0.0,
                    )?;
                    if l > 0 {
                        dev.sgemm(
                            &mut buf.gin[l],
                            &layer.weight.value,
                            &buf.g[l],
                            (layer.fan_in, layer.fan_out, n),
                            (true, false),
                            1.0,
                            0.0,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One optimizer step over every parameter.
    fn step(&mut self, config: &OptimizerConfig, lr: f32) -> Result<()> {
        let dev = self.dev;
        if matches!(config, OptimizerConfig::Adam { .. }) {
            self.adam_t += 1;
        }
        let t = self.adam_t;
        for layer in &mut self.layers {
            for p in [&mut layer.weight, &mut layer.bias] {
                let len = p.value.len() as u32;
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
        }
        Ok(())
    }

    /// Copies every weight and its state back to the host.
    fn download(&self, model: &mut Mlp, opt: &mut Optimizer) -> Result<()> {
        for layer in &self.layers {
            layer.weight.download(self.dev, model, opt)?;
            layer.bias.download(self.dev, model, opt)?;
        }
        Ok(())
    }

    /// Re-uploads the sparse weights whose pattern changed on the host.
    fn upload_patterns(&mut self, model: &Mlp, opt: &Optimizer) -> Result<()> {
        for layer in &mut self.layers {
            let p = model.params.get(layer.weight.id);
            if let (Some(csr), Some(pattern)) = (&layer.csr, p.pattern()) {
                if csr.version() != pattern.version() {
                    layer.csr = Some(GpuCsr::new(self.dev, pattern)?);
                    layer.weight = DevParam::new(self.dev, model, opt, layer.weight.id)?;
                }
            }
        }
        Ok(())
    }
}

/// Mean loss and accuracy of the device model on `data`.
fn evaluate(gpu: &mut GpuMlp, model: &Mlp, data: &Dataset, batch: usize) -> Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let mut rng = seed_rng(0);
    let order: Vec<u32> = (0..data.n as u32).collect();
    let mut x = vec![0.0f32; data.dim * batch];
    let mut labels = vec![0u32; batch];
    for chunk in order.chunks(batch.max(1)) {
        let b = chunk.len();
        data.fill_batch(chunk, &mut x[..data.dim * b], &mut labels[..b])?;
        let bi = gpu.buffers(b)?;
        gpu.dev
            .upload_into(&x[..data.dim * b], &mut gpu.buffers[bi].x)?;
        gpu.dev
            .upload_into(&labels[..b], &mut gpu.buffers[bi].labels)?;
        let logits = gpu.forward(bi, model, false, &mut rng)?;
        let losses = gpu.dev.download(&gpu.buffers[bi].loss)?;
        loss_sum += losses.iter().map(|&v| v as f64).sum::<f64>();
        let classes = logits.len() / b;
        let pred = argmax_cols(&logits, classes, b);
        correct += pred
            .iter()
            .zip(&labels[..b])
            .filter(|(p, l)| p == l)
            .count();
    }
    let n = data.n.max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// RigL's grow choice from the update step's `X` and `dZ`, which stay on the device.
struct DeviceScores<'g, 'a> {
    gpu: &'g GpuMlp<'a>,
    /// the buffers of the step's batch size
    bi: usize,
    scratch: &'g mut GrowScratch,
}

impl GrowScores for DeviceScores<'_, '_> {
    fn largest(
        &mut self,
        layer: usize,
        pattern: &CsrPattern,
        dropped: &[bool],
        k: usize,
    ) -> Result<(Vec<(u32, u32)>, f64)> {
        let gpu = self.gpu;
        let dev_layer = gpu.layers.get(layer).ok_or_else(|| {
            Error::Training(format!(
                "RigL update of layer {layer}, which the GPU model lacks"
            ))
        })?;
        let csr = match &dev_layer.csr {
            Some(csr) if csr.version() == pattern.version() => csr,
            _ => {
                return Err(Error::Training(format!(
                    "RigL update of layer {layer}: the device holds another pattern"
                )))
            }
        };
        let buf = &gpu.buffers[self.bi];
        let x = if layer == 0 {
            &buf.x
        } else {
            &buf.h[layer - 1]
        };
        let grow = gpu
            .dev
            .rigl_grow(self.scratch, csr, &buf.g[layer], x, buf.n, dropped, k)?;
        let flops = 2.0 * (dev_layer.fan_out * dev_layer.fan_in * buf.n) as f64;
        Ok((grow, flops))
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
    mut on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let RunPlan {
        steps_per_epoch,
        total,
        mut rewirer,
    } = plan_run(model, train, cfg)?;
    let classes = model.config.classes;
    if let Some(d) = [train, test].into_iter().find(|d| d.classes > classes) {
        return Err(Error::shape(
            "train",
            format!(
                "the data has {} classes but the model has {classes} outputs",
                d.classes
            ),
        ));
    }
    if let crate::nn::Activation::LeakyRelu(a) = model.config.activation {
        if a.is_nan() || a < 0.0 {
            return Err(Error::arg(
                "activation",
                format!("a leaky ReLU slope must be ≥ 0, got {a}"),
            ));
        }
    }
    let mut opt = Optimizer::new(cfg.optimizer.clone(), &model.params)?;
    let mut gpu = GpuMlp::new(dev, model, &opt)?;
    let mut grow_scratch = GrowScratch::default();
    let mut rng = seed_rng(cfg.seed ^ 0x5eed);
    let mut x = vec![0.0f32; train.dim * cfg.batch_size];
    let mut labels = vec![0u32; cfg.batch_size];
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
            train.fill_batch(chunk, &mut x[..train.dim * b], &mut labels[..b])?;
            let bi = gpu.buffers(b)?;
            dev.upload_into(&x[..train.dim * b], &mut gpu.buffers[bi].x)?;
            dev.upload_into(&labels[..b], &mut gpu.buffers[bi].labels)?;
            let logits = gpu.forward(bi, model, true, &mut rng)?;
            let losses = dev.download(&gpu.buffers[bi].loss)?;
            let lv = losses.iter().map(|&v| v as f64).sum::<f64>() / b.max(1) as f64;
            if !lv.is_finite() {
                return Err(Error::Training(format!(
                    "the loss became {lv} at epoch {}, step {step} (learning rate {lr}); try a lower --lr",
                    epoch + 1
                )));
            }
            let classes = logits.len() / b;
            correct += argmax_cols(&logits, classes, b)
                .iter()
                .zip(&labels[..b])
                .filter(|(p, l)| p == l)
                .count();
            gpu.backward(bi, model, true)?;
            lr = cfg.schedule.lr(cfg.lr, step, total, steps_per_epoch);
            match rewirer.as_mut() {
                Some(r) if update => {
                    gpu.download(model, &mut opt)?;
                    let mut scores = DeviceScores {
                        gpu: &gpu,
                        bi,
                        scratch: &mut grow_scratch,
                    };
                    let rep = r.update_with(step, model, &mut opt, &mut scores)?;
                    rewired += rep.rewired;
                    flops += rep.flops;
                    gpu.upload_patterns(model, &opt)?;
                }
                _ => gpu.step(&cfg.optimizer, lr)?,
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
        let (test_loss, test_acc) = evaluate(&mut gpu, model, test, cfg.batch_size.max(256))?;
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
