//! The training loop: minibatches, forward, backward, optimizer step, learning-rate
//! schedule, evaluation, and one report per epoch (also as JSON lines).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::autograd::{argmax_cols, Tape, Var};
use crate::cpu::Par;
use crate::data::Dataset;
use crate::dst::{RewireConfig, Rewirer};
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::sparse::{seed_rng, SeedRng};

pub mod compare;

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// the base rate throughout
    Constant,
    /// cosine decay from the base rate to zero over all steps, after a linear warm-up of
    /// `warmup_epochs`
    Cosine {
        /// epochs of linear warm-up
        warmup_epochs: usize,
    },
    /// multiply by `gamma` every `every` epochs
    Step {
        /// epochs between decays
        every: usize,
        /// factor
        gamma: f32,
    },
}

impl Schedule {
    /// Parses `constant`, `cosine`, `cosine:WARMUP`, `step:EVERY:GAMMA`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::arg(
                "schedule",
                format!("unknown schedule {s:?} (constant, cosine[:warmup], step:every:gamma)"),
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["cosine"] => Ok(Schedule::Cosine { warmup_epochs: 0 }),
            ["cosine", w] => Ok(Schedule::Cosine {
                warmup_epochs: w.parse().map_err(|_| bad())?,
            }),
            ["step", e, g] => Ok(Schedule::Step {
                every: e.parse().map_err(|_| bad())?,
                gamma: g.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    /// The rate at `step` of `total` steps (`steps_per_epoch` per epoch).
    pub fn lr(&self, base: f32, step: usize, total: usize, steps_per_epoch: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine { warmup_epochs } => {
                let warm = warmup_epochs.saturating_mul(steps_per_epoch);
                if step < warm {
                    base * (step + 1) as f32 / warm as f32
                } else {
                    let t = (step - warm) as f32 / (total - warm).max(1) as f32;
                    base * 0.5 * (1.0 + (std::f32::consts::PI * t).cos())
                }
            }
            Schedule::Step { every, gamma } => {
                base * gamma.powi((step / steps_per_epoch.max(1) / every.max(1)) as i32)
            }
        }
    }
}

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// passes over the training set
    pub epochs: usize,
    /// samples per step
    pub batch_size: usize,
    /// base learning rate
    pub lr: f32,
    /// learning-rate schedule
    pub schedule: Schedule,
    /// optimizer and its hyper-parameters
    pub optimizer: OptimizerConfig,
    /// seed of the shuffling and dropout
    pub seed: u64,
    /// stop after this many steps in all (for quick checks)
    pub max_steps: Option<usize>,
    /// show a progress bar during each epoch
    pub progress: bool,
    /// kernel parallelism
    pub par: Par,
    /// the rewiring method of the sparse layers (`None`: static)
    pub rewire: Option<RewireConfig>,
}

impl Default for TrainConfig {
    /// The command line's defaults: 10 epochs of batch 128, SGD with momentum 0.9 and no
    /// weight decay, learning rate 0.05 with cosine decay, seed 0, no progress bar, the
    /// current rayon pool's threads, static sparse (no rewiring).
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 0.05,
            schedule: Schedule::Cosine { warmup_epochs: 0 },
            optimizer: OptimizerConfig::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            seed: 0,
            max_steps: None,
            progress: false,
            par: Par::current(),
            rewire: None,
        }
    }
}

impl TrainConfig {
    /// Steps of a run over `samples` training samples: minibatches per epoch times
    /// epochs, no more than `max_steps`.
    pub fn total_steps(&self, samples: usize) -> usize {
        let steps = samples
            .div_ceil(self.batch_size.max(1))
            .saturating_mul(self.epochs);
        self.max_steps.map_or(steps, |m| m.min(steps))
    }

    /// Checks the settings that depend on neither model nor data: batch size, learning
    /// rate, optimizer and rewiring hyper-parameters. [`train`] checks them first; a
    /// caller planning several runs can check them all before starting any.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(Error::arg(
                "lr",
                format!("must be finite and >= 0, got {}", self.lr),
            ));
        }
        if let Schedule::Step { every, gamma } = self.schedule {
            if every == 0 || !(gamma.is_finite() && gamma >= 0.0) {
                return Err(Error::arg(
                    "schedule",
                    format!(
                        "step:EVERY:GAMMA needs EVERY >= 1 and a finite GAMMA >= 0, got \
                         step:{every}:{gamma}"
                    ),
                ));
            }
        }
        self.optimizer.validate()?;
        if let Some(r) = &self.rewire {
            r.validate()?;
        }
        Ok(())
    }
}

/// What one epoch did.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    /// 1-based epoch
    pub epoch: usize,
    /// learning rate at the end of the epoch
    pub lr: f32,
    /// mean training loss over the epoch's steps
    pub loss: f64,
    /// accuracy on the training batches as they were trained (dropout on)
    pub train_acc: f64,
    /// accuracy on the test set after the epoch
    pub test_acc: f64,
    /// mean loss on the test set
    pub test_loss: f64,
    /// wall time of the epoch's training steps, seconds (evaluation excluded)
    pub epoch_s: f64,
    /// live weights (connections) at the end of the epoch
    pub live_weights: usize,
    /// weights of the dense model of the same shape
    pub dense_weights: usize,
    /// training FLOPs of the epoch (forward and backward of every step)
    pub train_flops: f64,
    /// steps taken in the epoch
    pub steps: usize,
    /// connections dropped and regrown by the rewiring method in the epoch
    pub rewired: usize,
}

/// A recorded forward pass over one batch.
struct BatchForward {
    /// the loss node
    loss: Var,
    /// samples whose arg-max logit is their label
    correct: usize,
}

/// Fills the batch `chunk` of `data` (feature-major) and records the model's forward pass
/// and loss on a fresh tape.
#[allow(clippy::too_many_arguments)]
fn forward_batch(
    model: &dyn Model,
    data: &Dataset,
    chunk: &[u32],
    x: &mut [f32],
    labels: &mut [u32],
    tape: &mut Tape,
    train: bool,
    rng: &mut SeedRng,
    trace: Option<&mut Vec<(Var, Var)>>,
) -> Result<BatchForward> {
    let b = chunk.len();
    data.fill_batch(chunk, &mut x[..data.dim * b], &mut labels[..b])?;
    tape.reset();
    let xv = tape.input(&x[..data.dim * b], data.dim, b, false)?;
    let logits = model.forward_traced(tape, xv, train, rng, trace)?;
    let loss = tape.softmax_cross_entropy(logits, &labels[..b])?;
    let (c, _) = tape.dims(logits);
    let pred = argmax_cols(tape.value(logits), c, b)?;
    let correct = pred
        .iter()
        .zip(&labels[..b])
        .filter(|(p, l)| p == l)
        .count();
    Ok(BatchForward { loss, correct })
}

/// An error where a minibatch of `batch` samples would not fit the memory available,
/// counting per weight layer its input (a convolution's im2col matrix) and three
/// activations of its output's size (the product, normalised and activated), twice with
/// `grads` (a gradient of each): checked before the first step.
fn check_batch_fits(model: &dyn Model, batch: usize, grads: bool) -> Result<()> {
    let per_sample: u64 = model
        .weight_layers()
        .iter()
        .map(|l| {
            let s = l.shape;
            let input = (s.fan_in as u64).saturating_mul((s.kh * s.kw) as u64);
            (l.positions as u64).saturating_mul(input.saturating_add(3 * s.fan_out as u64))
        })
        .fold(0u64, u64::saturating_add);
    let bytes = per_sample
        .saturating_mul(batch as u64)
        .saturating_mul(if grads { 8 } else { 4 });
    crate::error::check_memory(
        "batch_size",
        format_args!("a minibatch of {batch} samples through this model"),
        bytes,
    )
}

/// Mean loss and accuracy of `model` on `data`.
pub fn evaluate(
    model: &dyn Model,
    data: &Dataset,
    batch_size: usize,
    tape: &mut Tape,
) -> Result<(f64, f64)> {
    if data.n == 0 {
        return Err(Error::arg(
            "data",
            "no samples to evaluate on: an accuracy over none would mean nothing",
        ));
    }
    // no bigger than the data: a huge batch size asks for no huge buffer
    let batch_size = batch_size.clamp(1, data.n);
    check_batch_fits(model, batch_size, false)?;
    let mut x = vec![0.0f32; data.dim * batch_size];
    let mut labels = vec![0u32; batch_size];
    let order: Vec<u32> = (0..data.n as u32).collect();
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let mut rng = seed_rng(0);
    for chunk in order.chunks(batch_size.max(1)) {
        let step = forward_batch(
            model,
            data,
            chunk,
            &mut x,
            &mut labels,
            tape,
            false,
            &mut rng,
            None,
        )?;
        loss_sum += tape.value(step.loss)[0] as f64 * chunk.len() as f64;
        correct += step.correct;
    }
    let n = data.n.max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// The checked shape of a training run.
pub(crate) struct RunPlan {
    /// minibatches per epoch
    pub steps_per_epoch: usize,
    /// steps of the whole run (`max_steps` applied), at least 1
    pub total: usize,
    /// samples of the largest minibatch (the batch size, or the whole set if smaller)
    pub batch: usize,
    /// the rewiring method, scheduled over `total` steps
    pub rewirer: Option<Rewirer>,
}

/// Checks a run's settings against the model and data and plans its steps.
pub(crate) fn plan_run(
    model: &dyn Model,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
) -> Result<RunPlan> {
    cfg.validate()?;
    for (name, data) in [("train", train), ("test", test)] {
        if data.n == 0 {
            return Err(Error::arg(name, format!("the {name} set holds no samples")));
        }
        if data.dim != model.input_dim() {
            return Err(Error::shape(
                name,
                format!(
                    "the {name} data has {} features but the model takes {}",
                    data.dim,
                    model.input_dim()
                ),
            ));
        }
    }
    if let Some(r) = cfg.rewire.as_ref().filter(|r| r.kind.is_dense_to_sparse()) {
        if r.target_sparsity > 0.0 && !model.has_sparse_weights() {
            return Err(Error::arg(
                "sparse_storage",
                format!(
                    "{} prunes weights held in sparse storage, and every weight layer of \
                     this model is stored dense: build it with `sparse_storage: true`",
                    r.kind.name()
                ),
            ));
        }
    }
    let steps_per_epoch = train.n.div_ceil(cfg.batch_size);
    let total = cfg.total_steps(train.n);
    if total == 0 {
        return Err(Error::arg(
            "train",
            format!(
                "the run has no training step ({} training samples, {} epochs, max_steps {:?})",
                train.n, cfg.epochs, cfg.max_steps
            ),
        ));
    }
    if let Schedule::Cosine { warmup_epochs } = cfg.schedule {
        if warmup_epochs.saturating_mul(steps_per_epoch) >= total {
            return Err(Error::arg(
                "schedule",
                format!(
                    "a warm-up of {warmup_epochs} epochs is the whole run ({total} steps of \
                     {steps_per_epoch} per epoch)"
                ),
            ));
        }
    }
    let rewirer = cfg
        .rewire
        .clone()
        .map(|r| Rewirer::new(r, total))
        .transpose()?;
    Ok(RunPlan {
        steps_per_epoch,
        total,
        batch: cfg.batch_size.min(train.n),
        rewirer,
    })
}

/// Trains `model` on `train`, evaluating on `test` after each epoch; `on_epoch` sees each
/// report as it is made (to print or log it) and may stop the run with an error.
///
/// The loop runs on a thread of the current rayon pool (moved there when called from
/// outside it): a kernel started from a pool thread shares its work without waking the
/// caller through a lock, which on small sparse layers is a quarter of the step.
pub fn train(
    model: &mut dyn Model,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochReport) -> Result<()> + Send,
) -> Result<Vec<EpochReport>> {
    if rayon::current_thread_index().is_some() {
        train_here(model, train, test, cfg, on_epoch)
    } else {
        rayon::scope(|_| train_here(model, train, test, cfg, on_epoch))
    }
}

fn train_here(
    model: &mut dyn Model,
    train: &Dataset,
    test: &Dataset,
    cfg: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let RunPlan {
        steps_per_epoch,
        total,
        batch,
        mut rewirer,
    } = plan_run(&*model, train, test, cfg)?;
    check_batch_fits(&*model, batch, true)?;
    let mut opt = Optimizer::new(cfg.optimizer.clone(), model.params())?;
    let mut tape = Tape::new(cfg.par);
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
        let (mut loss_sum, mut correct, mut seen, mut flops, mut steps) =
            (0.0f64, 0usize, 0usize, 0.0f64, 0usize);
        let mut lr = cfg.lr;
        let mut rewired = 0usize;
        for chunk in order.chunks(cfg.batch_size) {
            if step >= total {
                break;
            }
            let b = chunk.len();
            let update = rewirer.as_ref().is_some_and(|r| r.is_update(step));
            let traced = rewirer.as_ref().is_some_and(|r| r.needs_trace(step));
            tape.set_retain_linear_grads(traced);
            let fwd = forward_batch(
                model,
                train,
                chunk,
                &mut x,
                &mut labels,
                &mut tape,
                true,
                &mut rng,
                if traced {
                    rewirer.as_mut().map(|r| r.trace_mut())
                } else {
                    None
                },
            )?;
            let (loss, lv) = (fwd.loss, tape.value(fwd.loss)[0]);
            if !lv.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss became {lv} at epoch {}, step {step} (learning rate {lr}); try a lower learning rate (--lr)",
                    epoch + 1
                )));
            }
            correct += fwd.correct;
            model.params_mut().zero_grad();
            tape.backward(loss, model.params_mut())?;
            lr = cfg.schedule.lr(cfg.lr, step, total, steps_per_epoch);
            match rewirer.as_mut() {
                // RigL's update step rewires instead of stepping (as its reference does):
                // the gradients belong to the pattern being replaced; the other methods
                // step, then rewire
                Some(r) if update => {
                    if !r.replaces_step() {
                        opt.step(model.params_mut(), lr)?;
                    }
                    let rep = r.update(step, model, &mut opt, &tape)?;
                    rewired += rep.rewired;
                    flops += rep.flops;
                }
                _ => opt.step(model.params_mut(), lr)?,
            }
            loss_sum += lv as f64 * b as f64;
            seen += b;
            flops += model.train_flops_per_sample() * b as f64;
            steps += 1;
            step += 1;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        let epoch_s = start.elapsed().as_secs_f64();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let (test_loss, test_acc) = evaluate(&*model, test, cfg.batch_size.max(256), &mut tape)?;
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
    Ok(reports)
}

/// A test loss that is not finite means the last steps diverged (the training loss is
/// checked before each step, not after the last): an error, before the epoch is logged
/// or the model saved.
pub(crate) fn check_test_loss(test_loss: f64, epoch: usize) -> Result<()> {
    if test_loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Diverged(format!(
            "the evaluation loss became {test_loss} after epoch {}: the weights diverged; try a \
             lower learning rate (--lr)",
            epoch + 1
        )))
    }
}

pub(crate) fn progress_bar(
    show: bool,
    len: usize,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "epoch {msg} [{bar:40}] {pos}/{len} steps, {elapsed} < {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("{epoch}/{epochs}"));
    Some(bar)
}

/// Appends JSON lines to a log file; each line is written whole and flushed, so a run
/// that stops leaves every finished epoch on disk.
pub struct JsonlLog {
    file: std::fs::File,
    path: String,
}

impl JsonlLog {
    /// Creates (truncates) the log at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonlLog {
            file,
            path: path.display().to_string(),
        })
    }

    /// Writes one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::io(&self.path, e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}
