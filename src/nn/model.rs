//! What the training loop and the rewiring methods need from a network: its parameters,
//! its weight layers (the ones a sparsity distribution spreads over and a method
//! rewires), and a forward pass on a [`Tape`].

use std::sync::Arc;

use rand::RngExt;

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::nn::distribution::{Distribution, LayerShape};
use crate::nn::{Param, ParamId, ParamShape, ParamStore};
use crate::sparse::{aligned_zeros, CsrPattern, SeedRng};

/// One weight layer of a model as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub struct WeightLayer {
    /// the weight parameter, `[fan_out × fan_in·kh·kw]`, dense or sparse
    pub weight: ParamId,
    /// its shape for the layer distributions
    pub shape: LayerShape,
    /// positions each weight is applied at per sample (`OH·OW` for a convolution, 1 for
    /// a linear layer): its multiply-adds per sample are `live · positions`
    pub positions: usize,
}

/// A trainable network (`Send`, so that training can move to a pool thread).
pub trait Model: Send {
    /// All parameters.
    fn params(&self) -> &ParamStore;
    /// All parameters, mutably.
    fn params_mut(&mut self) -> &mut ParamStore;
    /// The weight layers, input to output.
    fn weight_layers(&self) -> Vec<WeightLayer>;
    /// Features of one input sample (`C·H·W` for images).
    fn input_dim(&self) -> usize;
    /// How the model's sparsity is spread over its weight layers.
    fn distribution(&self) -> Distribution;
    /// Records the forward pass of `x` (`[input_dim × batch]`, feature-major) on `tape`
    /// and returns the logits (`[classes × batch]`). `train` enables dropout and batch
    /// statistics. With `trace`, also records per weight layer the input and the output
    /// of its matrix product (`(X, W·X)`, `X` the im2col matrix for a convolution), for
    /// methods that need `dZ` and `X`.
    fn forward_traced(
        &self,
        tape: &mut Tape,
        x: Var,
        train: bool,
        rng: &mut SeedRng,
        trace: Option<&mut Vec<(Var, Var)>>,
    ) -> Result<Var>;

    /// Non-trainable state saved with the model, as `(name, values)`: batch norm's running
    /// statistics. None by default.
    fn buffers(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }

    /// Replaces buffer `name` (one of [`Model::buffers`]) with `values`.
    fn set_buffer(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let _ = values;
        Err(crate::Error::arg(
            "buffer",
            format!("the model has no buffer named {name:?}"),
        ))
    }

    /// [`Model::forward_traced`] without a trace.
    fn forward(&self, tape: &mut Tape, x: Var, train: bool, rng: &mut SeedRng) -> Result<Var> {
        self.forward_traced(tape, x, train, rng, None)
    }

    /// Layer shapes for the distributions.
    fn layer_shapes(&self) -> Vec<LayerShape> {
        self.weight_layers().iter().map(|l| l.shape).collect()
    }

    /// Live connections (stored weights; biases and normalisation excluded).
    fn live_weights(&self) -> usize {
        self.weight_layers()
            .iter()
            .map(|l| self.params().get(l.weight).live())
            .sum()
    }

    /// Whether any weight layer is held in sparse storage.
    fn has_sparse_weights(&self) -> bool {
        self.weight_layers()
            .iter()
            .any(|l| self.params().get(l.weight).pattern().is_some())
    }

    /// Weights of the dense model of the same shape.
    fn dense_weights(&self) -> usize {
        self.weight_layers().iter().map(|l| l.shape.size()).sum()
    }

    /// Floating-point operations of one training step per sample: per weight layer
    /// 2·live·positions forward, as many for the weight gradient and, except for the
    /// first layer, as many for the input gradient (biases, activations, pooling and
    /// normalisation are not counted).
    fn train_flops_per_sample(&self) -> f64 {
        self.weight_layers()
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let macs = (self.params().get(layer.weight).live() * layer.positions) as f64;
                if l == 0 {
                    4.0 * macs
                } else {
                    6.0 * macs
                }
            })
            .sum()
    }

    /// Floating-point operations of one forward pass per sample.
    fn forward_flops_per_sample(&self) -> f64 {
        self.weight_layers()
            .iter()
            .map(|l| (2 * self.params().get(l.weight).live() * l.positions) as f64)
            .sum()
    }
}

/// A weight `[rows × cols]` with `live` stored entries: dense when `live` covers it and
/// `sparse_storage` is off, else a random pattern with exactly `live` entries; values
/// uniform in `±gain·√(3 / live fan-in)` (He/Glorot-style for the live connections).
/// An error where weight layers of `shapes` (`(rows, cols)`) with `live` weights each
/// would not fit the memory available, counting per weight its value, its gradient, two
/// optimizer states and, for a sparse layer, its column index and the transposed
/// pattern's index and permutation: checked before a model is built.
pub(crate) fn check_weights_fit(
    shapes: impl IntoIterator<Item = (usize, usize)>,
    live: &[usize],
    sparse_storage: bool,
) -> Result<()> {
    let (mut bytes, mut dense) = (0u64, 0u64);
    for ((rows, cols), &k) in shapes.into_iter().zip(live) {
        let size = (rows as u64).saturating_mul(cols as u64);
        dense = dense.saturating_add(size);
        bytes = bytes.saturating_add(if k as u64 >= size && !sparse_storage {
            16 * size
        } else {
            28 * k as u64
        });
    }
    crate::error::check_memory(
        "model",
        format_args!(
            "a model of {dense} weight positions ({} live)",
            live.iter().sum::<usize>()
        ),
        bytes,
    )
}

pub(crate) fn new_weight(
    name: String,
    rows: usize,
    cols: usize,
    live: usize,
    sparse_storage: bool,
    gain: f32,
    rng: &mut SeedRng,
) -> Result<Param> {
    let size = rows * cols;
    let (shape, live) = if live >= size && !sparse_storage {
        (ParamShape::Dense { rows, cols }, size)
    } else {
        let pattern = CsrPattern::random(rows, cols, live.min(size), rng)?;
        (
            ParamShape::Sparse {
                pattern: Arc::new(pattern),
            },
            live.min(size),
        )
    };
    let fan_in_live = (live as f32 / rows.max(1) as f32).max(1.0);
    let bound = gain * (3.0 / fan_in_live).sqrt();
    let mut value = aligned_zeros(live);
    for v in value.iter_mut() {
        *v = rng.random_range(-bound..bound);
    }
    Param::new(name, shape, value, true)
}

/// A vector parameter filled with `fill` (biases 0, batch-norm scales 1).
pub(crate) fn new_vector(name: String, len: usize, fill: f32) -> Result<Param> {
    let mut value = aligned_zeros(len);
    value.fill(fill);
    Param::new(name, ParamShape::Vector { len }, value, false)
}
