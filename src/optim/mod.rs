//! Optimizers with per-live-weight state: SGD (momentum, Nesterov, weight decay) and
//! Adam / AdamW, following PyTorch's update rules.
//!
//! State buffers are values-length and aligned with each parameter's values: entry `k`
//! of a sparse parameter's momentum belongs to its live entry `k`. When a rewiring step
//! changes a pattern, [`Optimizer::remap`] carries the state across: survivors keep
//! theirs, new connections start at zero. A step never allocates.

use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::sparse::{aligned_zeros, AlignedVec, CsrPattern};

/// Which optimizer, with its hyper-parameters (the learning rate is given per step).
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent, PyTorch's `torch.optim.SGD` without dampening.
    Sgd {
        /// momentum factor in `[0, 1)`; 0 disables the momentum buffer
        momentum: f32,
        /// Nesterov momentum (needs `momentum > 0`)
        nesterov: bool,
        /// L2 penalty `≥ 0`, added to the gradient of parameters whose `decay` is set
        weight_decay: f32,
    },
    /// Adam (`decoupled = false`, L2 penalty in the gradient) or AdamW
    /// (`decoupled = true`, decay applied to the weights), as in PyTorch.
    Adam {
        /// decay rate of the first moment, in `[0, 1)`
        beta1: f32,
        /// decay rate of the second moment, in `[0, 1)`
        beta2: f32,
        /// denominator guard, `> 0`
        eps: f32,
        /// weight decay `≥ 0` for parameters whose `decay` is set
        weight_decay: f32,
        /// `true`: AdamW's decoupled decay; `false`: L2 penalty added to the gradient
        decoupled: bool,
    },
}

impl OptimizerConfig {
    /// SGD with PyTorch's defaults apart from the given momentum (no Nesterov, no decay).
    pub fn sgd(momentum: f32) -> Self {
        OptimizerConfig::Sgd {
            momentum,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Adam with PyTorch's defaults (`β = (0.9, 0.999)`, `ε = 1e-8`, no decay).
    pub fn adam() -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults (`β = (0.9, 0.999)`, `ε = 1e-8`) and the given decay.
    pub fn adamw(weight_decay: f32) -> Self {
        OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled: true,
        }
    }

    /// Checks every hyper-parameter's range.
    pub fn validate(&self) -> Result<()> {
        fn unit(name: &'static str, v: f32) -> Result<()> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::arg(name, format!("must lie in [0, 1), got {v}")))
            }
        }
        fn decay(v: f32) -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::arg(
                    "weight_decay",
                    format!("must be finite and >= 0, got {v}"),
                ))
            }
        }
        match *self {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                unit("momentum", momentum)?;
                decay(weight_decay)?;
                if nesterov && momentum <= 0.0 {
                    return Err(Error::arg(
                        "nesterov",
                        "Nesterov momentum needs momentum > 0",
                    ));
                }
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(Error::arg(
                        "eps",
                        format!("must be finite and > 0, got {eps}"),
                    ));
                }
                decay(weight_decay)?;
            }
        }
        Ok(())
    }

    /// Number of state buffers per parameter: 1 for SGD with momentum, 0 without, 2 for Adam.
    pub fn buffers(&self) -> usize {
        match self {
            OptimizerConfig::Sgd { momentum, .. } if *momentum > 0.0 => 1,
            OptimizerConfig::Sgd { .. } => 0,
            OptimizerConfig::Adam { .. } => 2,
        }
    }
}

/// An optimizer bound to the parameters of one [`ParamStore`]: its state buffers follow
/// the store's parameters in id order.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// hyper-parameters
    config: OptimizerConfig,
    /// per parameter: its buffers (momentum, or Adam's `m` and `v`)
    state: Vec<Vec<AlignedVec>>,
    /// per parameter: the value length the state is aligned with
    lens: Vec<usize>,
    /// per parameter: the version of the pattern the state is aligned with (sparse ones)
    versions: Vec<Option<u64>>,
    /// steps taken
    steps: u64,
}

impl Optimizer {
    /// An optimizer for every parameter of `params`, with zero state.
    pub fn new(config: OptimizerConfig, params: &ParamStore) -> Result<Self> {
        config.validate()?;
        let nbuf = config.buffers();
        let mut state = Vec::with_capacity(params.len());
        let mut lens = Vec::with_capacity(params.len());
        let mut versions = Vec::with_capacity(params.len());
        for (_, p) in params.iter() {
            let n = p.value.len();
            state.push((0..nbuf).map(|_| aligned_zeros(n)).collect());
            lens.push(n);
            versions.push(p.pattern().map(|pat| pat.version()));
        }
        Ok(Optimizer {
            config,
            state,
            lens,
            versions,
            steps: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state buffers of parameter `id`: `[momentum]` for SGD with momentum, nothing
    /// for plain SGD, `[m, v]` for Adam. Empty for an id the optimizer does not know.
    pub fn state(&self, id: ParamId) -> &[AlignedVec] {
        self.state.get(id.0).map_or(&[], Vec::as_slice)
    }

    /// The state buffers of parameter `id`, mutably (to bring back state kept elsewhere,
    /// e.g. on a GPU, before a [`remap`](Self::remap)).
    pub fn state_mut(&mut self, id: ParamId) -> &mut [AlignedVec] {
        self.state.get_mut(id.0).map_or(&mut [], Vec::as_mut_slice)
    }

    /// One update of every parameter from its `grad`, with learning rate `lr`.
    ///
    /// Fails, before touching anything, if the store's parameters are not those the
    /// optimizer was built for (count, or a pattern or value length that changed without
    /// [`remap`](Self::remap)), if a gradient's length differs from its values', or if
    /// `lr` is negative or not finite.
    pub fn step(&mut self, params: &mut ParamStore, lr: f32) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::arg(
                "lr",
                format!("must be finite and >= 0, got {lr}"),
            ));
        }
        if params.len() != self.lens.len() {
            return Err(Error::arg(
                "params",
                format!(
                    "the optimizer holds state for {} parameters, the store has {}",
                    self.lens.len(),
                    params.len()
                ),
            ));
        }
        for (((_, p), &len), &version) in params.iter().zip(&self.lens).zip(&self.versions) {
            let pattern_changed = match (p.pattern(), version) {
                (Some(pat), Some(v)) => pat.version() != v,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if pattern_changed {
                return Err(Error::arg(
                    "params",
                    format!(
                        "the pattern of {} changed since the optimizer state was aligned \
                         with it; call Optimizer::remap after changing a pattern",
                        p.name
                    ),
                ));
            }
            if p.value.len() != len {
                return Err(Error::arg(
                    "params",
                    format!(
                        "{} has {} values but the optimizer state has {len}; \
                         call Optimizer::remap after changing its pattern",
                        p.name,
                        p.value.len()
                    ),
                ));
            }
            if p.grad.len() != len {
                return Err(Error::Length {
                    what: "gradient",
                    expected: len,
                    got: p.grad.len(),
                });
            }
        }
        self.steps += 1;
        let t = self.steps;
        for ((_, p), bufs) in params.iter_mut().zip(self.state.iter_mut()) {
            let w: &mut [f32] = &mut p.value;
            let g: &[f32] = &p.grad;
            match self.config {
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } => {
                    let wd = if p.decay { weight_decay } else { 0.0 };
                    match bufs.first_mut() {
                        None => sgd_plain(w, g, lr, wd),
                        Some(buf) => sgd_momentum(w, g, buf, lr, wd, momentum, nesterov),
                    }
                }
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                } => {
                    let [m, v] = bufs.as_mut_slice() else {
                        unreachable!("Adam keeps two buffers per parameter")
                    };
                    let wd = if p.decay { weight_decay } else { 0.0 };
                    let h = AdamStep::new(beta1, beta2, eps, wd, decoupled, lr, t);
                    adam(w, g, m, v, &h);
                }
            }
        }
        Ok(())
    }

    /// Carries the state of parameter `id` from pattern `old` to pattern `new` after a
    /// rewiring step: survivors keep their state, new connections start at zero.
    ///
    /// `old` must be the pattern the state is aligned with (the parameter's pattern when
    /// the optimizer was built or last remapped, or a clone of it: same
    /// [`version`](CsrPattern::version)) and `new` must have the same shape. Afterwards
    /// the state is aligned with `new`, which the parameter must then carry.
    pub fn remap(&mut self, id: ParamId, old: &CsrPattern, new: &CsrPattern) -> Result<()> {
        let Some(&len) = self.lens.get(id.0) else {
            return Err(Error::arg(
                "id",
                format!(
                    "parameter {} is unknown to the optimizer ({} parameters)",
                    id.0,
                    self.lens.len()
                ),
            ));
        };
        if old.nrows() != new.nrows() || old.ncols() != new.ncols() {
            return Err(Error::shape(
                "optimizer remap",
                format!(
                    "patterns are {}×{} and {}×{}",
                    old.nrows(),
                    old.ncols(),
                    new.nrows(),
                    new.ncols()
                ),
            ));
        }
        if let Some(v) = self.versions[id.0] {
            if old.version() != v {
                return Err(Error::arg(
                    "old",
                    format!(
                        "pattern version {} is not the one the optimizer state of parameter \
                         {} is aligned with (version {v})",
                        old.version(),
                        id.0
                    ),
                ));
            }
        }
        if old.nnz() != len {
            return Err(Error::Length {
                what: "optimizer state (old pattern nnz)",
                expected: len,
                got: old.nnz(),
            });
        }
        let bufs = &mut self.state[id.0];
        let mut remapped = Vec::with_capacity(bufs.len());
        for buf in bufs.iter() {
            let mut out = aligned_zeros(new.nnz());
            old.remap_to(buf, new, &mut out, 0.0)?;
            remapped.push(out);
        }
        *bufs = remapped;
        self.lens[id.0] = new.nnz();
        self.versions[id.0] = Some(new.version());
        Ok(())
    }
}

/// `w ← w − lr·(g + wd·w)`.
fn sgd_plain(w: &mut [f32], g: &[f32], lr: f32, wd: f32) {
    for (w, &g) in w.iter_mut().zip(g) {
        let d = g + wd * *w;
        *w -= lr * d;
    }
}

/// PyTorch's SGD with momentum (no dampening). The buffer starts at zero, so the first
/// step gives `buf = g` exactly, as PyTorch's buffer initialisation does.
fn sgd_momentum(
    w: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    lr: f32,
    wd: f32,
    momentum: f32,
    nesterov: bool,
) {
    let it = w.iter_mut().zip(g).zip(buf.iter_mut());
    if nesterov {
        for ((w, &g), b) in it {
            let d = g + wd * *w;
            *b = momentum * *b + d;
            *w -= lr * (d + momentum * *b);
        }
    } else {
        for ((w, &g), b) in it {
            let d = g + wd * *w;
            *b = momentum * *b + d;
            *w -= lr * *b;
        }
    }
}

/// Per-step scalars of an Adam update.
pub(crate) struct AdamStep {
    /// first-moment decay
    pub beta1: f32,
    /// second-moment decay
    pub beta2: f32,
    /// denominator guard
    pub eps: f32,
    /// L2 coefficient added to the gradient (Adam)
    pub l2: f32,
    /// factor applied to the weights before the update (AdamW)
    pub shrink: f32,
    /// `lr / (1 − β1ᵗ)`
    pub step_size: f32,
    /// `sqrt(1 − β2ᵗ)`
    pub bc2_sqrt: f32,
}

impl AdamStep {
    /// The scalars of step `t` (from 1) for a parameter with weight decay `wd`
    /// (0 where it has none): decoupled (AdamW) or as an L2 term (Adam).
    pub(crate) fn new(
        beta1: f32,
        beta2: f32,
        eps: f32,
        wd: f32,
        decoupled: bool,
        lr: f32,
        t: u64,
    ) -> Self {
        let (l2, decoupled_wd) = if decoupled { (0.0, wd) } else { (wd, 0.0) };
        AdamStep {
            beta1,
            beta2,
            eps,
            l2,
            // AdamW: w ← w·(1 − lr·wd), as PyTorch does
            shrink: 1.0 - lr * decoupled_wd,
            // bias corrections in f64, as PyTorch computes them in Python floats
            step_size: (lr as f64 / (1.0 - (beta1 as f64).powf(t as f64))) as f32,
            bc2_sqrt: (1.0 - (beta2 as f64).powf(t as f64)).sqrt() as f32,
        }
    }
}

/// PyTorch's Adam / AdamW update:
/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `w ← w − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + ε)`.
fn adam(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    let (b1, b2) = (h.beta1, h.beta2);
    let (c1, c2) = (1.0 - b1, 1.0 - b2);
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g + h.l2 * *w;
        *w *= h.shrink;
        *m = b1 * *m + c1 * g;
        *v = b2 * *v + c2 * g * g;
        let denom = v.sqrt() / h.bc2_sqrt + h.eps;
        *w -= h.step_size * *m / denom;
    }
}
