//! Rewiring methods for the sparse weight layers of a [`Model`]: static (never rewires), SET (Mocanu et al.
//! 2018: drop the weights nearest zero on both signs, regrow at random) and RigL (Evci
//! et al. 2020: drop the smallest magnitudes, regrow where the dense gradient of the
//! current minibatch is largest), on a schedule of update interval ΔT, drop fraction α
//! with cosine decay, and an end step T_end.

use std::collections::HashSet;

use rand::RngExt;
use rayon::prelude::*;

use crate::autograd::{Tape, Var};
use crate::cpu::dense::{gemm_ex, Trans};
use crate::cpu::Accum;
use crate::dst::{apply_edit, Edit};
use crate::error::{Error, Result};
use crate::nn::distribution::layer_densities;
use crate::nn::{Model, ParamId, ParamShape};
use crate::optim::Optimizer;
use crate::sparse::{seed_rng, CsrPattern, SeedRng};

/// Which method rewires the sparse layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// a fixed random pattern
    Static,
    /// Sparse Evolutionary Training
    Set,
    /// Rigged Lottery
    RigL,
    /// Dynamic Sparse Reparameterization (Mostafa & Wang 2019): one global adaptive
    /// magnitude threshold, pruned weights reallocated across layers
    Dsr,
    /// gradual magnitude pruning from dense (Zhu & Gupta 2017, cubic schedule)
    Gmp,
    /// train dense, prune by magnitude to the target once, fine-tune
    PruneFinetune,
}

impl MethodKind {
    /// Parses `static`, `set`, `rigl`, `dsr`, `gmp`, `prune-finetune`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "static" => Ok(MethodKind::Static),
            "set" => Ok(MethodKind::Set),
            "rigl" => Ok(MethodKind::RigL),
            "dsr" => Ok(MethodKind::Dsr),
            "gmp" => Ok(MethodKind::Gmp),
            "prune-finetune" | "ptf" => Ok(MethodKind::PruneFinetune),
            _ => Err(Error::arg(
                "method",
                format!("unknown method {s:?} (static, set, rigl, dsr, gmp, prune-finetune)"),
            )),
        }
    }

    /// The name [`MethodKind::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Static => "static",
            MethodKind::Set => "set",
            MethodKind::RigL => "rigl",
            MethodKind::Dsr => "dsr",
            MethodKind::Gmp => "gmp",
            MethodKind::PruneFinetune => "prune-finetune",
        }
    }
}

/// Settings of a rewiring method.
#[derive(Clone, Debug, PartialEq)]
pub struct RewireConfig {
    /// the method
    pub kind: MethodKind,
    /// steps between updates (ΔT)
    pub delta_t: usize,
    /// initial drop fraction α (ζ for SET)
    pub drop_fraction: f64,
    /// last update at this fraction of the training steps (T_end)
    pub end_fraction: f64,
    /// cosine decay of the drop fraction (RigL); constant otherwise (SET)
    pub cosine: bool,
    /// seed of random regrowth
    pub seed: u64,
    /// dense-to-sparse methods: the sparsity to prune to (layers follow the model's
    /// distribution); the model starts dense (in sparse storage)
    pub target_sparsity: f64,
    /// dense-to-sparse methods: first pruning step, as a fraction of training (for
    /// prune-then-finetune, the one pruning step)
    pub start_fraction: f64,
}

impl MethodKind {
    /// Whether the method starts dense and prunes (no regrowth).
    pub fn is_dense_to_sparse(self) -> bool {
        matches!(self, MethodKind::Gmp | MethodKind::PruneFinetune)
    }
}

impl RewireConfig {
    /// The published defaults of a method: RigL ΔT = 100, α = 0.3 with cosine decay,
    /// T_end = 75%; SET ζ = 0.3, constant; DSR N_p = 0.3 of the live weights.
    ///
    /// SET and DSR stop rewiring at 75% of training as RigL does (the RigL reference
    /// code gives every mask-update method one end step): rewiring to the last steps
    /// would leave up to ζ of the weights freshly zero when the learning rate has
    /// decayed, a handicap their papers avoid (SET's reference code skips the last
    /// epoch's evolution). GMP prunes every ΔT steps from 10% to 75% of training;
    /// prune-then-finetune prunes once at half of training.
    pub fn defaults(kind: MethodKind) -> Self {
        RewireConfig {
            kind,
            delta_t: 100,
            drop_fraction: 0.3,
            end_fraction: 0.75,
            cosine: kind == MethodKind::RigL,
            seed: 0,
            target_sparsity: 0.0,
            start_fraction: match kind {
                MethodKind::Gmp => 0.1,
                MethodKind::PruneFinetune => 0.5,
                _ => 0.0,
            },
        }
    }

    /// Checks every setting's range: fractions in `[0, 1]` (the target sparsity in
    /// `[0, 1)`), `delta_t` at least 1 for the methods that rewire. [`Rewirer::new`]
    /// checks the same first; a caller planning several runs can check them all before
    /// starting any.
    pub fn validate(&self) -> Result<()> {
        let fraction = |name: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::arg(name, format!("must lie in [0, 1], got {v}")))
            }
        };
        fraction("drop_fraction", self.drop_fraction)?;
        fraction("end_fraction", self.end_fraction)?;
        fraction("start_fraction", self.start_fraction)?;
        if self.kind != MethodKind::Static && self.delta_t == 0 {
            return Err(Error::arg("delta_t", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.target_sparsity) {
            return Err(Error::arg(
                "target_sparsity",
                format!("must lie in [0, 1), got {}", self.target_sparsity),
            ));
        }
        if self.kind == MethodKind::Gmp && self.start_fraction > self.end_fraction {
            return Err(Error::arg(
                "end_fraction",
                format!(
                    "gradual pruning must end after it starts: start {} > end {}",
                    self.start_fraction, self.end_fraction
                ),
            ));
        }
        Ok(())
    }
}

/// Update steps and drop fraction over training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateSchedule {
    /// steps between updates
    pub delta_t: usize,
    /// no update before this step
    pub t_start: usize,
    /// no update at or after this step
    pub t_end: usize,
    /// initial drop fraction
    pub alpha: f64,
    /// cosine decay α/2·(1 + cos(πt/T_end)), else constant α
    pub cosine: bool,
}

impl UpdateSchedule {
    /// Whether `step` (0-based, counted over the whole run) is an update step.
    pub fn is_update(&self, step: usize) -> bool {
        self.delta_t > 0
            && step > 0
            && step >= self.t_start
            && step.is_multiple_of(self.delta_t)
            && step < self.t_end
    }

    /// The fraction of each layer's live weights rewired at `step`.
    pub fn drop_fraction(&self, step: usize) -> f64 {
        if self.cosine {
            let t = step as f64 / self.t_end.max(1) as f64;
            self.alpha / 2.0 * (1.0 + (std::f64::consts::PI * t).cos())
        } else {
            self.alpha
        }
    }
}

/// What one update did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateReport {
    /// connections dropped (and as many grown) over all layers
    pub rewired: usize,
    /// floating-point operations spent on the update (RigL's dense gradients)
    pub flops: f64,
}

/// Applies a method to a model at its update steps.
pub struct Rewirer {
    config: RewireConfig,
    schedule: UpdateSchedule,
    rng: SeedRng,
    trace: Vec<(Var, Var)>,
    /// DSR's global magnitude threshold H
    threshold: Option<f32>,
}

impl Rewirer {
    /// A rewirer for a run of `total_steps` steps.
    pub fn new(config: RewireConfig, total_steps: usize) -> Result<Self> {
        config.validate()?;
        let at = |f: f64| (f * total_steps as f64).round() as usize;
        let (delta_t, t_start, t_end) = match config.kind {
            MethodKind::Static => (0, 0, 0),
            // one update, at the pruning step (before the last step, so that it runs)
            MethodKind::PruneFinetune => {
                let t = at(config.start_fraction).clamp(1, total_steps.saturating_sub(1).max(1));
                (t, t, t + 1)
            }
            // the last scheduled step at or before T_end reaches the target; steps run
            // up to `total_steps - 1`, so no later one can be the last
            MethodKind::Gmp => (
                config.delta_t,
                at(config.start_fraction),
                (at(config.end_fraction) + 1).min(total_steps),
            ),
            _ => (config.delta_t, 0, at(config.end_fraction)),
        };
        let schedule = UpdateSchedule {
            delta_t,
            t_start,
            t_end,
            alpha: config.drop_fraction,
            cosine: config.cosine,
        };
        if config.kind.is_dense_to_sparse() {
            // a dense-to-sparse run that never prunes would end dense under a sparse label
            let first = t_start.max(1).next_multiple_of(delta_t.max(1));
            if first >= t_end.min(total_steps) {
                return Err(Error::arg(
                    "delta_t",
                    format!(
                        "{} prunes every {delta_t} steps from step {t_start} to step {t_end}, \
                         but no such step falls within the run's {total_steps} steps: lower \
                         delta_t (--delta-t) or train longer",
                        config.kind.name()
                    ),
                ));
            }
        }
        let rng = seed_rng(config.seed ^ 0xd57);
        Ok(Rewirer {
            config,
            schedule,
            rng,
            trace: Vec::new(),
            threshold: None,
        })
    }

    /// The schedule in use.
    pub fn schedule(&self) -> &UpdateSchedule {
        &self.schedule
    }

    /// The method.
    pub fn kind(&self) -> MethodKind {
        self.config.kind
    }

    /// Whether `step` rewires.
    pub fn is_update(&self, step: usize) -> bool {
        self.schedule.is_update(step)
    }

    /// Whether an update step rewires *instead of* taking the optimizer step. RigL's
    /// does, as in its reference code: the step's gradients chose the new connections
    /// and belong to the pattern being replaced. The other methods take the optimizer
    /// step and then rewire, as their papers' training loops do (SET and DSR rewire
    /// after training steps, gradual pruning masks after the weight update).
    pub fn replaces_step(&self) -> bool {
        self.config.kind == MethodKind::RigL
    }

    /// Whether the forward/backward of `step` must keep each layer's `X` and `dZ`.
    pub fn needs_trace(&self, step: usize) -> bool {
        self.config.kind == MethodKind::RigL && self.is_update(step)
    }

    /// The trace buffer to pass to [`Model::forward_traced`] at a step that needs it.
    pub fn trace_mut(&mut self) -> &mut Vec<(Var, Var)> {
        &mut self.trace
    }

    /// Rewires every sparse layer of `model` at `step`. For RigL, `tape` must hold the
    /// step's forward and backward (with linear gradients retained) recorded with
    /// [`Rewirer::trace_mut`].
    pub fn update(
        &mut self,
        step: usize,
        model: &mut dyn Model,
        opt: &mut Optimizer,
        tape: &Tape,
    ) -> Result<UpdateReport> {
        let trace = std::mem::take(&mut self.trace);
        let mut scores = TapeScores {
            tape,
            trace: &trace,
        };
        let report = self.update_with(step, model, opt, &mut scores);
        self.trace = trace;
        report
    }

    /// [`Rewirer::update`] with RigL's grow choice made by `scores` (for example on a
    /// GPU, where the step's `X` and `dZ` live); the other methods ignore it.
    pub fn update_with(
        &mut self,
        step: usize,
        model: &mut dyn Model,
        opt: &mut Optimizer,
        scores: &mut dyn GrowScores,
    ) -> Result<UpdateReport> {
        if self.config.kind == MethodKind::Dsr {
            return self.dsr_update(model, opt);
        }
        let fraction = self.schedule.drop_fraction(step);
        let mut report = UpdateReport::default();
        let final_density = if self.config.kind.is_dense_to_sparse() {
            layer_densities(
                model.distribution(),
                &model.layer_shapes(),
                self.config.target_sparsity,
            )?
        } else {
            Vec::new()
        };
        for (l, layer) in model.weight_layers().iter().enumerate() {
            let id = layer.weight;
            let param = model.params().get(id);
            let ParamShape::Sparse { pattern } = &param.shape else {
                continue; // dense layers stay dense
            };
            let pattern = pattern.clone();
            if self.config.kind.is_dense_to_sparse() {
                let target = pruning_target(&self.schedule, step, &final_density, l, &pattern);
                if target < pattern.nnz() {
                    let edit = Edit {
                        drop: smallest_magnitudes(&param.value, pattern.nnz() - target),
                        grow: Vec::new(),
                    };
                    report.rewired += apply_edit(model.params_mut(), opt, id, &edit)?.dropped;
                }
                continue;
            }
            // ⌊α·nnz⌋, as the RigL reference code counts (a hair of slack for α·nnz
            // landing just under a whole number in f64)
            let k = (fraction * pattern.nnz() as f64 + 1e-9).floor() as usize;
            if k == 0 {
                continue;
            }
            let edit = match self.config.kind {
                MethodKind::Static
                | MethodKind::Dsr
                | MethodKind::Gmp
                | MethodKind::PruneFinetune => continue,
                MethodKind::Set => set_edit(&pattern, &param.value, fraction, &mut self.rng),
                MethodKind::RigL => {
                    let drop = smallest_magnitudes(&param.value, k);
                    let mut dropped = vec![false; pattern.nnz()];
                    for &p in &drop {
                        dropped[p as usize] = true;
                    }
                    let (grow, flops) = scores.largest(l, &pattern, &dropped, k)?;
                    report.flops += flops;
                    Edit { drop, grow }
                }
            };
            let stats = apply_edit(model.params_mut(), opt, id, &edit)?;
            report.rewired += stats.dropped;
        }
        Ok(report)
    }

    /// DSR: prune every weight below the global threshold H, adapt H towards N_p pruned
    /// weights per update (halve it above 1.1·N_p, double it below 0.9·N_p), and regrow
    /// as many connections at random, spread over the layers in proportion to their
    /// surviving weights. The total number of live weights is kept.
    fn dsr_update(&mut self, model: &mut dyn Model, opt: &mut Optimizer) -> Result<UpdateReport> {
        let layers: Vec<(ParamId, std::sync::Arc<CsrPattern>)> = model
            .weight_layers()
            .iter()
            .filter_map(|l| {
                model
                    .params()
                    .get(l.weight)
                    .pattern()
                    .map(|p| (l.weight, p.clone()))
            })
            .collect();
        let total: usize = layers.iter().map(|(_, p)| p.nnz()).sum();
        if total == 0 {
            // no sparse layer (sparsity 0, or every layer dense by its distribution)
            return Ok(UpdateReport::default());
        }
        let np = ((self.config.drop_fraction * total as f64).round() as usize).max(1);
        let h = match self.threshold {
            Some(h) => h,
            None => {
                // start where N_p weights fall below it
                let mut mags: Vec<f32> = layers
                    .iter()
                    .flat_map(|(id, _)| model.params().get(*id).value.iter().map(|v| v.abs()))
                    .collect();
                let k = np.min(mags.len().saturating_sub(1));
                mags.select_nth_unstable_by(k, f32::total_cmp);
                mags[k]
            }
        };
        let drops: Vec<Vec<u32>> = layers
            .iter()
            .map(|(id, _)| {
                let v = &model.params().get(*id).value;
                (0..v.len() as u32)
                    .filter(|&p| v[p as usize].abs() < h)
                    .collect()
            })
            .collect();
        let pruned: usize = drops.iter().map(Vec::len).sum();
        self.threshold = Some(if pruned as f64 > 1.1 * np as f64 {
            h / 2.0
        } else if (pruned as f64) < 0.9 * np as f64 {
            h * 2.0
        } else {
            h
        });
        // reallocate: shares ∝ survivors, capped by each layer's positions not live
        // after the prune (the free ones and those just pruned)
        let survivors: Vec<usize> = layers
            .iter()
            .zip(&drops)
            .map(|((_, p), d)| p.nnz() - d.len())
            .collect();
        let room: Vec<usize> = layers
            .iter()
            .zip(&survivors)
            .map(|((_, p), s)| p.nrows() * p.ncols() - s)
            .collect();
        let alloc = allocate(pruned, &survivors, &room);
        let mut report = UpdateReport::default();
        for (((id, pattern), drop), n) in layers.iter().zip(drops).zip(alloc) {
            if drop.is_empty() && n == 0 {
                continue; // nothing to edit: keep the pattern (and its cached transpose)
            }
            // As in DSR's reference code, regrowth draws among every position not live
            // after the prune, those just pruned included, and a regrown weight starts
            // at zero: a pruned connection drawn again restarts at zero value and state.
            let grow = random_inactive(pattern, &drop_flags(pattern, &drop), n, &mut self.rng);
            let regrown: Vec<usize> = grow
                .iter()
                .filter_map(|&(i, j)| {
                    let i = i as usize;
                    let q = pattern.row(i).binary_search(&j).ok()?;
                    Some(pattern.row_range(i).start + q)
                })
                .collect();
            let value = &mut model.params_mut().get_mut(*id).value;
            for &p in &regrown {
                value[p] = 0.0;
            }
            for buf in opt.state_mut(*id) {
                for &p in &regrown {
                    buf[p] = 0.0;
                }
            }
            report.rewired += drop.len();
            apply_edit(model.params_mut(), opt, *id, &Edit { drop, grow })?;
        }
        Ok(report)
    }
}

/// Splits `total` over layers in proportion to `weights` (largest remainders), no layer
/// above its `room`; what a full layer cannot take goes to the others.
fn allocate(total: usize, weights: &[usize], room: &[usize]) -> Vec<usize> {
    let mut alloc = vec![0usize; weights.len()];
    let mut left = total.min(room.iter().sum());
    while left > 0 {
        let open: Vec<usize> = (0..weights.len()).filter(|&l| alloc[l] < room[l]).collect();
        let wsum: usize = open.iter().map(|&l| weights[l].max(1)).sum();
        let mut given = 0;
        let mut rema: Vec<(f64, usize)> = Vec::new();
        for &l in &open {
            let exact = left as f64 * weights[l].max(1) as f64 / wsum as f64;
            let take = (exact.floor() as usize).min(room[l] - alloc[l]);
            alloc[l] += take;
            given += take;
            rema.push((exact - exact.floor(), l));
        }
        rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, l) in &rema {
            if given == left {
                break;
            }
            if alloc[l] < room[l] {
                alloc[l] += 1;
                given += 1;
            }
        }
        if given == 0 {
            break;
        }
        left -= given;
    }
    alloc
}

/// Live weights layer `l` keeps after a pruning step: Zhu & Gupta's cubic schedule
/// s_t = s_f·(1 − (1 − τ)³), τ the progress from the first to the last pruning step,
/// applied to the layer's final sparsity `1 − final_density[l]`.
fn pruning_target(
    schedule: &UpdateSchedule,
    step: usize,
    final_density: &[f64],
    l: usize,
    pattern: &CsrPattern,
) -> usize {
    let size = pattern.nrows() * pattern.ncols();
    let last = schedule.t_end.saturating_sub(1);
    // the last update step at or before `last`
    let last_update = last - last % schedule.delta_t.max(1);
    // one pruning step (prune-then-finetune): straight to the target
    let tau = if last_update <= schedule.t_start {
        1.0
    } else {
        let span = (last_update - schedule.t_start) as f64;
        (step.saturating_sub(schedule.t_start) as f64 / span).clamp(0.0, 1.0)
    };
    let final_sparsity = 1.0 - final_density.get(l).copied().unwrap_or(1.0);
    let sparsity = final_sparsity * (1.0 - (1.0 - tau).powi(3));
    (((1.0 - sparsity) * size as f64).round() as usize).clamp(1, size)
}

/// One flag per live entry of `pattern`: whether `drop` lists it.
fn drop_flags(pattern: &CsrPattern, drop: &[u32]) -> Vec<bool> {
    let mut flags = vec![false; pattern.nnz()];
    for &p in drop {
        flags[p as usize] = true;
    }
    flags
}

/// `count` distinct positions drawn uniformly among those inactive once the entries
/// marked in `dropped` (one flag per live entry) are gone: the free positions and the
/// dropped ones (fewer if fewer are inactive). What a dropped connection drawn again
/// keeps is the caller's choice (SET keeps its value, as the RigL reference code does;
/// DSR restarts it at zero).
fn random_inactive(
    pattern: &CsrPattern,
    dropped: &[bool],
    count: usize,
    rng: &mut SeedRng,
) -> Vec<(u32, u32)> {
    let (out, fan_in) = (pattern.nrows(), pattern.ncols());
    debug_assert_eq!(dropped.len(), pattern.nnz(), "one drop flag per live entry");
    let n_dropped = dropped.iter().filter(|&&d| d).count();
    let inactive = out * fan_in - pattern.nnz() + n_dropped;
    // whether column `j` of row `i` is inactive
    let is_inactive = |i: usize, j: u32| match pattern.row(i).binary_search(&j) {
        Err(_) => true,
        Ok(q) => dropped[pattern.row_range(i).start + q],
    };
    let target = count.min(inactive);
    let mut grow = Vec::with_capacity(target);
    if inactive < 4 * target.max(1) {
        // nearly dense: enumerate the inactive positions and pick among them
        let mut all: Vec<(u32, u32)> = Vec::with_capacity(inactive);
        for i in 0..out {
            all.extend(
                (0..fan_in as u32)
                    .filter(|&j| is_inactive(i, j))
                    .map(|j| (i as u32, j)),
            );
        }
        for t in 0..target {
            let pick = rng.random_range(t..all.len());
            all.swap(t, pick);
        }
        grow.extend_from_slice(&all[..target]);
    } else {
        let mut chosen: HashSet<(u32, u32)> = HashSet::with_capacity(target);
        while grow.len() < target {
            let (i, j) = (
                rng.random_range(0..out) as u32,
                rng.random_range(0..fan_in) as u32,
            );
            if is_inactive(i as usize, j) && chosen.insert((i, j)) {
                grow.push((i, j));
            }
        }
    }
    grow
}

/// The `k` entries of smallest magnitude (ties: lower index first).
fn smallest_magnitudes(values: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let key = |&i: &u32| (values[i as usize].abs(), i);
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

/// RigL's grow choice for one sparse layer: the `k` connections that are not live after
/// the drop with the largest |∂L/∂W| = |dZ·Xᵀ| of the update step's minibatch, ties
/// going to the lower row-major position `(row, col)`.
pub trait GrowScores {
    /// The `k` positions `(row, col)` to grow in weight layer `layer` (an index into
    /// [`Model::weight_layers`]) whose live entries are `pattern` minus those flagged in
    /// `dropped` (one flag per entry), and the floating-point operations spent.
    fn largest(
        &mut self,
        layer: usize,
        pattern: &CsrPattern,
        dropped: &[bool],
        k: usize,
    ) -> Result<(Vec<(u32, u32)>, f64)>;
}

/// [`GrowScores`] from a tape holding the step's forward and backward: each layer's `X`
/// and `dZ` as recorded with [`Rewirer::trace_mut`]. The dense gradient is formed in
/// blocks of rows (about 4 MiB at a time), keeping only the best candidates, so that no
/// `out × in` buffer exists for large layers.
pub struct TapeScores<'a> {
    /// the tape of the update step
    pub tape: &'a Tape,
    /// per weight layer, its input `X` and its product `Z` (gradient retained)
    pub trace: &'a [(Var, Var)],
}

impl GrowScores for TapeScores<'_> {
    fn largest(
        &mut self,
        layer: usize,
        pattern: &CsrPattern,
        dropped: &[bool],
        k: usize,
    ) -> Result<(Vec<(u32, u32)>, f64)> {
        if k == 0 {
            return Ok((Vec::new(), 0.0));
        }
        let tape = self.tape;
        let &(x, z) = self
            .trace
            .get(layer)
            .ok_or_else(|| Error::Training("RigL update without a recorded forward pass".into()))?;
        if !(tape.contains(x) && tape.contains(z)) {
            return Err(Error::Training(
                "RigL update with a trace recorded on another tape (or before its reset)".into(),
            ));
        }
        let dz = tape
            .grad(z)
            .ok_or_else(|| Error::Training("RigL update without retained gradients".into()))?;
        let (out, fan_in) = (pattern.nrows(), pattern.ncols());
        let ((z_rows, n), (x_rows, x_cols)) = (tape.dims(z), tape.dims(x));
        if z_rows != out || x_rows != fan_in || x_cols != n {
            return Err(Error::Training(format!(
                "RigL update: weight layer {layer} is {out}×{fan_in} but its trace holds \
                 X {x_rows}×{x_cols} and W·X {z_rows}×{n}"
            )));
        }
        let x = tape.value(x);
        let flops = 2.0 * out as f64 * fan_in as f64 * n as f64;
        // rows per block: about 4 MiB of dense gradient at a time
        let rb = ((1 << 20) / fan_in.max(1)).clamp(1, out.max(1));
        let mut block = vec![0.0f32; rb * fan_in];
        // the scan of each block is split over the threads by rows, each part with its
        // own selection (fed in increasing position order), absorbed into `best` after
        // the block; each part starts the next block at `best`'s floor, so memory stays
        // within `best`'s 3k entries and one block's candidates however many threads
        let parts = tape.par().threads().min(out).max(1);
        let mut best = TopK::new(k);
        let mut scans: Vec<(TopK, Vec<bool>)> = (0..parts)
            .map(|_| (TopK::new(k), vec![false; fan_in]))
            .collect();
        let mut r0 = 0;
        while r0 < out {
            let r1 = (r0 + rb).min(out);
            let rows = r1 - r0;
            let g = &mut block[..rows * fan_in];
            // G[r0..r1, :] = dZ[r0..r1, :] · Xᵀ
            gemm_ex(
                g,
                &dz[r0 * n..r1 * n],
                Trans::No,
                x,
                Trans::Yes,
                rows,
                n,
                fan_in,
                1.0,
                Accum::Replace,
                tape.par(),
            )?;
            let g = &*g;
            let scan = |t: usize, (best, live_row): &mut (TopK, Vec<bool>)| {
                for i in (r0 + rows * t / parts)..(r0 + rows * (t + 1) / parts) {
                    for p in pattern.row_range(i) {
                        live_row[pattern.col_idx()[p] as usize] = !dropped[p];
                    }
                    let grow_row = &g[(i - r0) * fan_in..(i - r0 + 1) * fan_in];
                    for (j, (&gv, &live)) in grow_row.iter().zip(live_row.iter()).enumerate() {
                        if !live {
                            best.offer(gv.abs(), i as u32, j as u32);
                        }
                    }
                    for p in pattern.row_range(i) {
                        live_row[pattern.col_idx()[p] as usize] = false;
                    }
                }
            };
            for (part, _) in scans.iter_mut() {
                part.restart(best.floor);
            }
            if parts == 1 {
                scan(0, &mut scans[0]);
            } else {
                scans
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(t, part)| scan(t, part));
            }
            for (part, _) in scans.iter_mut() {
                best.absorb(part);
            }
            r0 = r1;
        }
        let grow = best.into_positions();
        Ok((grow, flops))
    }
}

/// The `k` best of a stream of scored positions, offered in increasing position order:
/// higher score first, at equal scores the lower position `(row, col)`. Memory stays
/// within `3k` entries; once `k` are held, a score at or below the `k`-th best is
/// turned away with one comparison (it cannot enter: the held ones are better or equal
/// and came earlier), so a long stream costs about one comparison per position.
pub(crate) struct TopK {
    k: usize,
    held: Vec<(f32, u32, u32)>,
    /// the `k`-th best score once known, −∞ before
    floor: f32,
}

impl TopK {
    /// An empty selection of the `k` best.
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            held: Vec::with_capacity(3 * k + 1),
            floor: f32::NEG_INFINITY,
        }
    }

    fn by_score(a: &(f32, u32, u32), b: &(f32, u32, u32)) -> std::cmp::Ordering {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then((a.1, a.2).cmp(&(b.1, b.2)))
    }

    /// Keeps the `k` best of those held.
    fn shrink(&mut self) {
        if self.held.len() > self.k {
            self.held.select_nth_unstable_by(self.k, Self::by_score);
            self.held.truncate(self.k);
        }
    }

    /// Offers position `(row, col)` with `score`; positions must come in increasing order.
    #[inline]
    pub(crate) fn offer(&mut self, score: f32, row: u32, col: u32) {
        // a NaN score is never turned away (`<=` is false for it)
        if self.k == 0 || score <= self.floor {
            return;
        }
        self.held.push((score, row, col));
        if self.held.len() > 3 * self.k {
            self.shrink_to_floor();
        }
    }

    /// Keeps the `k` best and raises the floor to the `k`-th.
    fn shrink_to_floor(&mut self) {
        self.shrink();
        if self.k > 0 && self.held.len() == self.k {
            self.floor =
                self.held
                    .iter()
                    .map(|e| e.0)
                    .fold(f32::INFINITY, |a, b| if b < a { b } else { a });
        }
    }

    /// Empties the selection for a new run of positions, all after those offered to any
    /// selection absorbed so far, turning away scores at or below `floor` (the floor of
    /// the selection that absorbs this one: such a score cannot enter it).
    pub(crate) fn restart(&mut self, floor: f32) {
        self.held.clear();
        self.floor = floor;
    }

    /// Takes in what `other` holds (a selection of the same `k`, fed in increasing
    /// position order), leaving it empty: afterwards this holds the `k` best of both.
    pub(crate) fn absorb(&mut self, other: &mut TopK) {
        debug_assert_eq!(other.k, self.k, "absorbed selections keep the same k");
        self.held.append(&mut other.held);
        if self.held.len() > 3 * self.k {
            self.shrink_to_floor();
        }
    }

    /// The selection of the `k` best of everything offered to `parts` (selections of the
    /// same `k`, each fed in increasing position order, in any order among them).
    #[cfg(test)]
    pub(crate) fn merge(parts: impl IntoIterator<Item = TopK>) -> TopK {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else {
            return TopK::new(0);
        };
        for mut part in parts {
            all.absorb(&mut part);
        }
        all
    }

    /// The `k` best positions (fewer where fewer were offered), sorted.
    pub(crate) fn into_positions(mut self) -> Vec<(u32, u32)> {
        self.shrink();
        let mut out: Vec<(u32, u32)> = self.held.into_iter().map(|(_, i, j)| (i, j)).collect();
        out.sort_unstable();
        out
    }
}

/// SET: drop the fraction `zeta` of the smallest positive weights and of the largest
/// negative weights (zeros too), regrow as many at random positions inactive after the
/// drop. As in the RigL reference code's SET, a connection dropped in this step may be
/// drawn again (it then stays live and keeps its value), so a nearly dense layer keeps
/// its size.
fn set_edit(pattern: &CsrPattern, values: &[f32], zeta: f64, rng: &mut SeedRng) -> Edit {
    let mut pos: Vec<u32> = (0..values.len() as u32)
        .filter(|&p| values[p as usize] > 0.0)
        .collect();
    let mut neg: Vec<u32> = (0..values.len() as u32)
        .filter(|&p| values[p as usize] < 0.0)
        .collect();
    let zeros = (0..values.len() as u32).filter(|&p| values[p as usize] == 0.0);
    let by_mag = |a: &u32, b: &u32| {
        let (x, y) = (values[*a as usize].abs(), values[*b as usize].abs());
        x.partial_cmp(&y)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    pos.sort_unstable_by(by_mag);
    neg.sort_unstable_by(by_mag);
    let kp = (zeta * pos.len() as f64).round() as usize;
    let kn = (zeta * neg.len() as f64).round() as usize;
    let mut drop: Vec<u32> = pos[..kp]
        .iter()
        .chain(&neg[..kn])
        .copied()
        .chain(zeros)
        .collect();
    drop.sort_unstable();
    let grow = random_inactive(pattern, &drop_flags(pattern, &drop), drop.len(), rng);
    Edit { drop, grow }
}

#[cfg(test)]
mod tests {
    use super::{random_inactive, set_edit, TopK};
    use crate::sparse::CsrPattern;
    use rand::{RngExt, SeedableRng};

    /// SET on a layer with every connection live can only regrow what it drops: it
    /// must draw exactly the dropped connections again (before, it dropped nothing).
    #[test]
    fn set_on_a_full_layer_regrows_what_it_drops() {
        let pattern = CsrPattern::full(6, 7).unwrap();
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
        let values: Vec<f32> = (0..42).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let edit = set_edit(&pattern, &values, 0.3, &mut rng);
        assert!(!edit.drop.is_empty());
        let mut dropped: Vec<(u32, u32)> = edit.drop.iter().map(|&p| (p / 7, p % 7)).collect();
        dropped.sort_unstable();
        let mut grown = edit.grow.clone();
        grown.sort_unstable();
        assert_eq!(grown, dropped);
    }

    /// Random regrowth draws only inactive positions (free, or dropped in this step),
    /// reaches the dropped ones as well as the free ones, and never one twice.
    #[test]
    fn random_regrowth_draws_among_free_and_dropped_positions() {
        // rows of 10 columns, 4 live in each; 2 of each row's live entries dropped
        let row_ptr: Vec<u32> = (0..=5).map(|i| 4 * i).collect();
        let col_idx: Vec<u32> = (0..5).flat_map(|_| [1u32, 3, 6, 8]).collect();
        let pattern = CsrPattern::new(5, 10, row_ptr, col_idx).unwrap();
        let dropped: Vec<bool> = (0..20).map(|p| p % 2 == 0).collect();
        let live_kept = |(_, j): (u32, u32)| [3u32, 8].contains(&j);
        let was_dropped = |(_, j): (u32, u32)| [1u32, 6].contains(&j);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(11);
        let (mut saw_dropped, mut saw_free) = (false, false);
        for count in [1, 5, 12, 40, 41, 100] {
            let grow = random_inactive(&pattern, &dropped, count, &mut rng);
            // 50 positions, 10 kept live: 40 inactive
            assert_eq!(grow.len(), count.min(40), "count {count}");
            let mut uniq = grow.clone();
            uniq.sort_unstable();
            uniq.dedup();
            assert_eq!(uniq.len(), grow.len(), "a position drawn twice");
            for &g in &grow {
                assert!(!live_kept(g), "{g:?} is live and was not dropped");
                saw_dropped |= was_dropped(g);
                saw_free |= !was_dropped(g);
            }
        }
        assert!(saw_dropped && saw_free);
    }

    /// The streaming selection against a full sort, with many tied scores.
    #[test]
    fn top_k_matches_a_sort() {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        for &(rows, cols, levels) in &[(1, 1, 1), (7, 13, 3), (40, 50, 5), (64, 300, 1000)] {
            let scores: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(0..levels) as f32 * 0.5)
                .collect();
            for k in [0, 1, 2, 5, 17, 100, rows * cols, rows * cols + 3] {
                let mut top = TopK::new(k);
                for (p, &sc) in scores.iter().enumerate() {
                    top.offer(sc, (p / cols) as u32, (p % cols) as u32);
                }
                let mut all: Vec<(f32, u32, u32)> = scores
                    .iter()
                    .enumerate()
                    .map(|(p, &sc)| (sc, (p / cols) as u32, (p % cols) as u32))
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
                let mut want: Vec<(u32, u32)> =
                    all.iter().take(k).map(|&(_, i, j)| (i, j)).collect();
                want.sort_unstable();
                assert_eq!(
                    top.into_positions(),
                    want,
                    "{rows}×{cols}, {levels} levels, k = {k}"
                );
                // three selections over interleaved runs of rows, merged
                let mut parts: Vec<TopK> = (0..3).map(|_| TopK::new(k)).collect();
                for (p, &sc) in scores.iter().enumerate() {
                    let row = p / cols;
                    parts[(row / 4) % 3].offer(sc, row as u32, (p % cols) as u32);
                }
                assert_eq!(
                    TopK::merge(parts).into_positions(),
                    want,
                    "merged: {rows}×{cols}, {levels} levels, k = {k}"
                );
            }
        }
    }
}
