//! Layer sparsity distributions: how a global sparsity is spread over the weight layers
//! of a network.
//!
//! - [`Distribution::Uniform`]: every layer at density `1 − s` (optionally the first
//!   layer dense, as RigL does);
//! - [`Distribution::Er`]: Erdős–Rényi (Mocanu et al., SET): density ∝
//!   `(fan_in + fan_out) / (fan_in · fan_out)`;
//! - [`Distribution::Erk`]: Erdős–Rényi–Kernel (Evci et al., RigL): density ∝
//!   `(fan_in + fan_out + kh + kw) / (fan_in · fan_out · kh · kw)`.
//!
//! For ER and ERK the scale ε is solved so that the live weights total `(1 − s)·Σ sizes`;
//! a layer that would exceed density 1 is made dense and ε is solved again for the
//! others, exactly as `sparse_utils.get_sparsities` of google-research/rigl does.

use crate::error::{Error, Result};

/// How a global sparsity is spread over layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Every layer at the same density `1 − s`.
    Uniform {
        /// keep the first layer dense (density 1), the others at `1 − s`
        dense_first: bool,
    },
    /// Erdős–Rényi: density ∝ `(fan_in + fan_out) / (fan_in · fan_out)`, kernel dims ignored.
    Er,
    /// Erdős–Rényi–Kernel: density ∝ `(fan_in + fan_out + kh + kw) / (fan_in · fan_out · kh · kw)`.
    Erk,
}

impl Distribution {
    /// Parses `"uniform"`, `"uniform-dense-first"`, `"er"` or `"erk"` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uniform" => Ok(Distribution::Uniform { dense_first: false }),
            "uniform-dense-first" => Ok(Distribution::Uniform { dense_first: true }),
            "er" => Ok(Distribution::Er),
            "erk" => Ok(Distribution::Erk),
            _ => Err(Error::arg(
                "distribution",
                format!(
                    "unknown distribution {s:?}; expected uniform, uniform-dense-first, er or erk"
                ),
            )),
        }
    }

    /// The name [`parse`](Self::parse) accepts for this distribution.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Uniform { dense_first: false } => "uniform",
            Distribution::Uniform { dense_first: true } => "uniform-dense-first",
            Distribution::Er => "er",
            Distribution::Erk => "erk",
        }
    }
}

impl std::str::FromStr for Distribution {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One weight layer as the distribution sees it: `fan_out`, `fan_in`, and kernel dims
/// (1, 1 for linear layers).
#[derive(Clone, Copy, Debug)]
pub struct LayerShape {
    /// outputs (rows of the weight; output channels of a convolution)
    pub fan_out: usize,
    /// inputs (input channels of a convolution)
    pub fan_in: usize,
    /// kernel height (1 for a linear layer)
    pub kh: usize,
    /// kernel width (1 for a linear layer)
    pub kw: usize,
}

impl LayerShape {
    /// A linear layer `fan_in → fan_out`.
    pub fn linear(fan_out: usize, fan_in: usize) -> Self {
        LayerShape {
            fan_out,
            fan_in,
            kh: 1,
            kw: 1,
        }
    }

    /// A convolution with `kh × kw` kernels from `fan_in` to `fan_out` channels.
    pub fn conv(fan_out: usize, fan_in: usize, kh: usize, kw: usize) -> Self {
        LayerShape {
            fan_out,
            fan_in,
            kh,
            kw,
        }
    }

    /// Number of weights, `fan_out · fan_in · kh · kw` (saturating).
    pub fn size(&self) -> usize {
        self.fan_out
            .saturating_mul(self.fan_in)
            .saturating_mul(self.kh)
            .saturating_mul(self.kw)
    }

    /// The unscaled ER / ERK density of this layer (the factor ε multiplies).
    ///
    /// ERK counts the kernel dims only for a layer that has a kernel (`kh · kw > 1`): RigL
    /// sums the dims of the weight's actual shape, which for a linear layer is 2-D, so
    /// ERK equals ER on fully connected layers. (A 1×1 convolution is indistinguishable
    /// from a linear layer here and gets the ER form too.)
    fn raw_density(&self, dist: Distribution) -> f64 {
        let (o, i) = (self.fan_out as f64, self.fan_in as f64);
        let (kh, kw) = (self.kh as f64, self.kw as f64);
        match dist {
            Distribution::Erk if self.kh * self.kw > 1 => (i + o + kh + kw) / (i * o * kh * kw),
            _ => (i + o) / (i * o),
        }
    }
}

/// Density (fraction of live weights) for each layer so that the total number of live
/// weights is `(1 − sparsity)·Σ sizes`.
///
/// Uniform with `dense_first` keeps the first layer dense and the others at `1 − s`, so
/// the total is somewhat denser than the target (as in RigL). ER and ERK hit the target
/// exactly, making dense every layer that would otherwise exceed density 1.
///
/// Errors: `sparsity` outside `[0, 1)` or not finite, no layers, a zero dimension, a layer
/// size that overflows, or a budget that cannot be met.
pub fn layer_densities(
    dist: Distribution,
    layers: &[LayerShape],
    sparsity: f64,
) -> Result<Vec<f64>> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(Error::arg(
            "sparsity",
            format!("must lie in [0, 1), got {sparsity}"),
        ));
    }
    if layers.is_empty() {
        return Err(Error::arg("layers", "no weight layer to distribute over"));
    }
    let mut sizes = Vec::with_capacity(layers.len());
    for (l, s) in layers.iter().enumerate() {
        if s.fan_out == 0 || s.fan_in == 0 || s.kh == 0 || s.kw == 0 {
            return Err(Error::arg(
                "layers",
                format!(
                    "layer {l} has a zero dimension (fan_out {}, fan_in {}, kernel {}×{})",
                    s.fan_out, s.fan_in, s.kh, s.kw
                ),
            ));
        }
        let size = s
            .fan_out
            .checked_mul(s.fan_in)
            .and_then(|n| n.checked_mul(s.kh))
            .and_then(|n| n.checked_mul(s.kw))
            .ok_or(Error::TooLarge {
                what: "layer size",
                value: usize::MAX,
            })?;
        sizes.push(size as f64);
    }
    let density = 1.0 - sparsity;
    if sparsity == 0.0 {
        return Ok(vec![1.0; layers.len()]);
    }
    match dist {
        Distribution::Uniform { dense_first } => {
            let mut d = vec![density; layers.len()];
            if dense_first {
                d[0] = 1.0;
            }
            Ok(d)
        }
        Distribution::Er | Distribution::Erk => erdos_renyi(dist, layers, &sizes, density),
    }
}

/// RigL's iterative ER / ERK solve: `ε = budget / Σ raw·size` over the sparse layers,
/// where the budget is the target live count minus the dense layers' sizes; while
/// `ε · max raw > 1`, the layers with the largest raw density become dense.
fn erdos_renyi(
    dist: Distribution,
    layers: &[LayerShape],
    sizes: &[f64],
    density: f64,
) -> Result<Vec<f64>> {
    let raw: Vec<f64> = layers.iter().map(|s| s.raw_density(dist)).collect();
    let target: f64 = density * sizes.iter().sum::<f64>();
    let mut dense = vec![false; layers.len()];
    let eps = loop {
        let mut budget = target;
        let mut divisor = 0.0;
        let mut max_raw = 0.0f64;
        for l in 0..layers.len() {
            if dense[l] {
                budget -= sizes[l];
            } else {
                divisor += raw[l] * sizes[l];
                max_raw = max_raw.max(raw[l]);
            }
        }
        if divisor <= 0.0 || budget <= 0.0 || !budget.is_finite() {
            return Err(Error::arg(
                "sparsity",
                format!(
                    "cannot reach density {density} with the {} distribution: \
                     the dense layers alone exceed the budget",
                    dist.name()
                ),
            ));
        }
        let eps = budget / divisor;
        if eps * max_raw > 1.0 {
            for l in 0..layers.len() {
                if !dense[l] && raw[l] == max_raw {
                    dense[l] = true;
                }
            }
        } else {
            break eps;
        }
    };
    Ok(raw
        .iter()
        .zip(&dense)
        .map(|(&r, &d)| if d { 1.0 } else { (eps * r).min(1.0) })
        .collect())
}

/// Rounded live-weight count of each layer at its density, each clamped to `[1, size]`
/// so no layer is left empty. Pairs `densities` and `layers` by index (the shorter sets
/// the length); a non-finite density counts as 0.
pub fn layer_nnz(densities: &[f64], layers: &[LayerShape]) -> Vec<usize> {
    densities
        .iter()
        .zip(layers)
        .map(|(&d, s)| {
            let size = s.size();
            let d = if d.is_finite() { d } else { 0.0 };
            let n = (d * size as f64).round();
            // `as` saturates: negatives give 0, huge values usize::MAX
            (n as usize).max(1).min(size)
        })
        .collect()
}
