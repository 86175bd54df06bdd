//! Reverse-mode automatic differentiation over feature-major matrices.
//!
//! A [`Tape`] records each operation as a node holding its value (`rows × cols`,
//! row-major; activations are `[features × batch]`) and the op that made it. Nodes are
//! appended in evaluation order, so reverse insertion order is a topological order:
//! [`Tape::backward`] walks it once with one `match` over [`Op`].
//!
//! The rule that matters: the gradient of a sparse weight is a values-length buffer
//! aligned with its pattern (an SDDMM), so a sparse layer never allocates anything of
//! size `out × in`. Buffers are recycled between steps by [`Tape::reset`].

use std::collections::HashMap;
use std::sync::Arc;

mod conv;
pub use conv::{Conv2dGeom, Pool2dGeom, PoolKind};

use rand::RngExt;

use crate::cpu::dense::{gemm_ex, Trans};
use crate::cpu::{
    gemm, row_sum, sddmm, spmm, spmm_bias_act, spmm_t, spmm_t_act_grad, Accum, Par, RowAct,
};
use crate::error::{check_dims, check_len, Error, Result};
use crate::nn::{Param, ParamId, ParamShape, ParamStore};
use crate::sparse::{aligned_zeros, AlignedVec, CsrPattern, SeedRng};

/// A node of the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// An elementwise nonlinearity that can be fused with a bias add ([`Tape::bias_act`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// no nonlinearity
    Identity,
    /// `max(x, 0)`
    Relu,
    /// `x` where positive, `slope·x` elsewhere (`slope ≥ 0`)
    LeakyRelu(f32),
    /// `tanh(x)`
    Tanh,
    /// `1 / (1 + e^−x)`
    Sigmoid,
}

impl Act {
    /// The same nonlinearity as the kernels' [`RowAct`], where it is one of those.
    fn row_act(self) -> Option<RowAct> {
        match self {
            Act::Identity => Some(RowAct::Identity),
            Act::Relu => Some(RowAct::Relu),
            Act::LeakyRelu(a) => Some(RowAct::LeakyRelu(a)),
            Act::Tanh | Act::Sigmoid => None,
        }
    }

    #[inline(always)]
    fn f(self, x: f32) -> f32 {
        match self {
            Act::Tanh => x.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            _ => self.row_act().map_or(x, |r| r.apply(x)),
        }
    }

    /// The derivative at the input whose output is `y`.
    #[inline(always)]
    fn deriv_from_output(self, y: f32) -> f32 {
        match self {
            Act::Tanh => 1.0 - y * y,
            Act::Sigmoid => y * (1.0 - y),
            _ => self.row_act().map_or(1.0, |r| r.deriv_from_output(y)),
        }
    }
}

/// The operation that produced a node.
#[derive(Debug)]
pub enum Op {
    /// data fed in from outside
    Input,
    /// `W·x`, `W` a sparse parameter (SpMM forward; SDDMM and transposed SpMM backward)
    SparseLinear {
        /// input `[in × batch]`
        x: Var,
        /// weight `[out × in]`, sparse
        w: ParamId,
    },
    /// `W·x`, `W` a dense parameter (GEMM)
    DenseLinear {
        /// input `[in × batch]`
        x: Var,
        /// weight `[out × in]`, dense
        w: ParamId,
    },
    /// `act(W·x + b)`, `W` a sparse parameter and `act` identity, ReLU or leaky ReLU: one
    /// SpMM that adds the bias and applies `act` as it writes. Its retained gradient
    /// ([`Tape::set_retain_linear_grads`]) is `dZ`, the gradient at `W·x`.
    SparseLinearBiasAct {
        /// input `[in × batch]`
        x: Var,
        /// weight `[out × in]`, sparse
        w: ParamId,
        /// bias `[out]`
        b: ParamId,
        /// the nonlinearity
        act: Act,
    },
    /// `x + b` broadcast over the batch
    BiasAdd {
        /// input `[features × batch]`
        x: Var,
        /// bias `[features]`
        b: ParamId,
    },
    /// `act(x + b)`, bias add and nonlinearity in one pass each way
    BiasAct {
        /// input `[features × batch]`
        x: Var,
        /// bias `[features]`
        b: ParamId,
        /// the nonlinearity
        act: Act,
    },
    /// `max(x, 0)`
    Relu(Var),
    /// `x` where positive, `slope·x` elsewhere
    LeakyRelu(Var, f32),
    /// `tanh(x)`
    Tanh(Var),
    /// `1 / (1 + e^−x)`
    Sigmoid(Var),
    /// `x · mask`, the mask holding 0 or `1/(1−p)`
    Dropout(Var),
    /// mean over the batch of `−log softmax(logits)[label]` (a `1 × 1` node)
    SoftmaxCrossEntropy(Var),
    /// the im2col matrix of an image batch for a convolution
    Im2col {
        /// input `[C][H][W][B]`
        x: Var,
        /// the convolution
        geom: Conv2dGeom,
        /// images in the batch
        batch: usize,
    },
    /// a convolution with a sparse weight, computed directly from the image batch
    /// (no im2col matrix): forward [`crate::cpu::sparse_conv2d`], backward its input and
    /// weight gradients
    SparseConv2d {
        /// input `[C][H][W][B]`
        x: Var,
        /// weight `[out × C·kh·kw]`, sparse
        w: ParamId,
        /// the convolution
        geom: Conv2dGeom,
        /// images in the batch
        batch: usize,
    },
    /// max or average pooling (the arg-max window offsets kept in `aux`)
    Pool2d {
        /// input `[C][H][W][B]`
        x: Var,
        /// the window
        geom: Pool2dGeom,
        /// images in the batch
        batch: usize,
        /// max or average
        kind: PoolKind,
    },
    /// the same values with other dimensions (flatten)
    Reshape(Var),
    /// batch normalisation of each row (x̂ kept in `aux`; mean, variance, 1/σ in `stats`)
    BatchNorm {
        /// input `[channels × values]`
        x: Var,
        /// scale `[channels]`
        gamma: ParamId,
        /// shift `[channels]`
        beta: ParamId,
        /// whether the statistics were the batch's (else running ones)
        train: bool,
    },
}

struct Node {
    rows: usize,
    cols: usize,
    value: AlignedVec,
    grad: Option<AlignedVec>,
    /// dropout mask, or softmax probabilities
    aux: Option<AlignedVec>,
    labels: Vec<u32>,
    /// per-row statistics (batch norm)
    stats: Option<AlignedVec>,
    op: Op,
    requires_grad: bool,
    /// nodes that read this one's value
    consumers: u32,
    /// the gradient already holds `dZ` (a [`Op::SparseLinearBiasAct`] node whose
    /// nonlinearity and bias were back-propagated by the product that fed it)
    grad_is_dz: bool,
}

impl Op {
    /// The nodes whose values the op reads.
    fn inputs(&self) -> [Option<Var>; 1] {
        match *self {
            Op::Input => [None],
            Op::SparseLinear { x, .. }
            | Op::DenseLinear { x, .. }
            | Op::SparseLinearBiasAct { x, .. }
            | Op::BiasAdd { x, .. }
            | Op::BiasAct { x, .. }
            | Op::Relu(x)
            | Op::LeakyRelu(x, _)
            | Op::Tanh(x)
            | Op::Sigmoid(x)
            | Op::Dropout(x)
            | Op::SoftmaxCrossEntropy(x)
            | Op::Im2col { x, .. }
            | Op::SparseConv2d { x, .. }
            | Op::Pool2d { x, .. }
            | Op::Reshape(x)
            | Op::BatchNorm { x, .. } => [Some(x)],
        }
    }
}

/// Recycled buffers, by length.
#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<AlignedVec>>,
}

impl Pool {
    /// A buffer of `len` floats with unspecified contents.
    fn take(&mut self, len: usize) -> AlignedVec {
        self.free
            .get_mut(&len)
            .and_then(Vec::pop)
            .unwrap_or_else(|| aligned_zeros(len))
    }
    fn give(&mut self, buf: AlignedVec) {
        self.free.entry(buf.len()).or_default().push(buf);
    }
}

/// A recording of one forward pass, differentiated by [`Tape::backward`].
pub struct Tape {
    nodes: Vec<Node>,
    pool: Pool,
    par: Par,
    retain_linear_grads: bool,
    /// the parameters the recorded ops read, as they were: `backward` checks that it
    /// writes gradients into the same ones
    uses: Vec<ParamUse>,
}

/// A parameter as an op recorded it: its id, value count and (sparse) pattern.
struct ParamUse {
    id: ParamId,
    len: usize,
    pattern: Option<Arc<CsrPattern>>,
}

impl Tape {
    /// An empty tape whose kernels use `par`.
    pub fn new(par: Par) -> Self {
        Tape {
            nodes: Vec::new(),
            pool: Pool::default(),
            par,
            retain_linear_grads: false,
            uses: Vec::new(),
        }
    }

    /// Parameter `id` of `params` for an op being recorded, noted for `backward`'s check.
    pub(crate) fn use_param<'p>(
        &mut self,
        params: &'p ParamStore,
        id: ParamId,
    ) -> Result<&'p Param> {
        let p = params.try_get(id)?;
        self.uses.push(ParamUse {
            id,
            len: p.value.len(),
            pattern: p.pattern().cloned(),
        });
        Ok(p)
    }

    /// Whether `params` holds the parameters the recorded ops read: same ids, sizes and
    /// patterns (the same pattern object, so an edit since the forward pass shows).
    fn check_params(&self, params: &ParamStore) -> Result<()> {
        for u in &self.uses {
            let p = params.try_get(u.id)?;
            let same_pattern = match (&u.pattern, p.pattern()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if p.value.len() != u.len || !same_pattern {
                return Err(Error::arg(
                    "params",
                    format!(
                        "{} is not the parameter the forward pass read (another model's \
                         store, or its pattern was edited since): record the pass again",
                        p.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `backward` keeps the output gradient `dZ` of every sparse linear node
    /// (readable with [`Tape::grad`]) instead of recycling it: RigL's grow step needs it
    /// at update steps.
    pub fn set_retain_linear_grads(&mut self, retain: bool) {
        self.retain_linear_grads = retain;
    }

    /// The kernel parallelism of this tape.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Forgets every node, keeping their buffers for the next pass.
    pub fn reset(&mut self) {
        self.uses.clear();
        for node in self.nodes.drain(..) {
            self.pool.give(node.value);
            if let Some(g) = node.grad {
                self.pool.give(g);
            }
            if let Some(a) = node.aux {
                self.pool.give(a);
            }
            if let Some(s) = node.stats {
                self.pool.give(s);
            }
        }
    }

    /// Number of nodes recorded.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn push(
        &mut self,
        rows: usize,
        cols: usize,
        value: AlignedVec,
        op: Op,
        requires_grad: bool,
    ) -> Var {
        for x in op.inputs().into_iter().flatten() {
            self.nodes[x.0].consumers += 1;
        }
        self.nodes.push(Node {
            rows,
            cols,
            value,
            grad: None,
            aux: None,
            labels: Vec::new(),
            stats: None,
            op,
            requires_grad,
            consumers: 0,
            grad_is_dz: false,
        });
        Var(self.nodes.len() - 1)
    }

    fn check_var(&self, v: Var) -> Result<&Node> {
        self.nodes
            .get(v.0)
            .ok_or_else(|| Error::arg("var", format!("node {} is not on this tape", v.0)))
    }

    /// Records data (`rows × cols`, row-major; activations are `[features × batch]`).
    /// With `requires_grad` its gradient is kept and readable after `backward`.
    pub fn input(
        &mut self,
        data: &[f32],
        rows: usize,
        cols: usize,
        requires_grad: bool,
    ) -> Result<Var> {
        check_dims("tape input", rows, cols, data.len())?;
        let mut value = self.pool.take(data.len());
        value.copy_from_slice(data);
        Ok(self.push(rows, cols, value, Op::Input, requires_grad))
    }

    /// Records data together with a gradient for it, as if a backward pass had produced
    /// it: for replaying a pass that ran elsewhere (a GPU step's `X` and `dZ` for RigL's
    /// grow step on the host).
    pub fn input_with_grad(
        &mut self,
        data: &[f32],
        rows: usize,
        cols: usize,
        grad: &[f32],
    ) -> Result<Var> {
        check_len("input gradient", data.len(), grad.len())?;
        let v = self.input(data, rows, cols, true)?;
        let mut g = self.pool.take(grad.len());
        g.copy_from_slice(grad);
        self.nodes[v.0].grad = Some(g);
        Ok(v)
    }

    /// The value of a node.
    ///
    /// # Panics
    /// If `v` is not a node of this tape (see [`Tape::contains`]).
    pub fn value(&self, v: Var) -> &[f32] {
        &self.nodes[v.0].value
    }

    /// Whether `v` is a node of this tape (recorded since its last reset).
    pub fn contains(&self, v: Var) -> bool {
        v.0 < self.nodes.len()
    }

    /// `(rows, cols)` of a node.
    ///
    /// # Panics
    /// If `v` is not a node of this tape (see [`Tape::contains`]).
    pub fn dims(&self, v: Var) -> (usize, usize) {
        (self.nodes[v.0].rows, self.nodes[v.0].cols)
    }

    /// The gradient of the loss with respect to a node, after [`Tape::backward`], where
    /// the node requires one.
    ///
    /// # Panics
    /// If `v` is not a node of this tape (see [`Tape::contains`]).
    pub fn grad(&self, v: Var) -> Option<&[f32]> {
        self.nodes[v.0].grad.as_deref()
    }

    /// `W·x` for a weight parameter `w` (`[out × in]`, sparse or dense) and `x`
    /// (`[in × batch]`).
    pub fn linear(&mut self, params: &ParamStore, x: Var, w: ParamId) -> Result<Var> {
        let (in_rows, n) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols)
        };
        let p = self.use_param(params, w)?;
        let (out, fan_in) = p.shape.dims();
        if let ParamShape::Vector { .. } = p.shape {
            return Err(Error::arg(
                "linear",
                format!("{} is a vector, not a weight", p.name),
            ));
        }
        if fan_in != in_rows {
            return Err(Error::shape(
                "linear",
                format!(
                    "weight {} is {out}×{fan_in} but the input has {in_rows} features",
                    p.name
                ),
            ));
        }
        let mut z = self.pool.take(out * n);
        let xv = &self.nodes[x.0].value;
        let op = match &p.shape {
            ParamShape::Sparse { pattern } => {
                spmm(
                    &mut z,
                    pattern,
                    &p.value,
                    xv,
                    n,
                    1.0,
                    Accum::Replace,
                    self.par,
                )?;
                Op::SparseLinear { x, w }
            }
            _ => {
                gemm(
                    &mut z,
                    &p.value,
                    xv,
                    out,
                    fan_in,
                    n,
                    1.0,
                    Accum::Replace,
                    self.par,
                )?;
                Op::DenseLinear { x, w }
            }
        };
        Ok(self.push(out, n, z, op, true))
    }

    /// `act(W·x + b)`, a layer's product, bias and nonlinearity. Returns `(z, y)`: `y` the
    /// output and `z` the node whose retained gradient ([`Tape::set_retain_linear_grads`])
    /// is `dZ`, the gradient at `W·x` that RigL's grow step reads. For a sparse weight and
    /// identity, ReLU or leaky ReLU the three are one node ([`Op::SparseLinearBiasAct`],
    /// one SpMM that writes the output once, `z == y`); otherwise [`Tape::linear`] then
    /// [`Tape::bias_act`]. Both give the same values and gradients.
    pub fn linear_bias_act(
        &mut self,
        params: &ParamStore,
        x: Var,
        w: ParamId,
        b: ParamId,
        act: Act,
    ) -> Result<(Var, Var)> {
        // a negative leaky slope goes to bias_act, which reports it
        let row_act = act
            .row_act()
            .filter(|_| !matches!(act, Act::LeakyRelu(a) if a.is_nan() || a < 0.0));
        let (in_rows, n) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols)
        };
        let (p, bias) = (self.use_param(params, w)?, self.use_param(params, b)?);
        match (&p.shape, row_act) {
            (ParamShape::Sparse { pattern }, Some(row_act)) if pattern.ncols() == in_rows => {
                let out = pattern.nrows();
                check_len("bias", out, bias.value.len())?;
                let mut y = self.pool.take(out * n);
                let xv = &self.nodes[x.0].value;
                spmm_bias_act(
                    &mut y,
                    pattern,
                    &p.value,
                    xv,
                    n,
                    &bias.value,
                    row_act,
                    self.par,
                )?;
                let y = self.push(out, n, y, Op::SparseLinearBiasAct { x, w, b, act }, true);
                Ok((y, y))
            }
            _ => {
                let z = self.linear(params, x, w)?;
                let y = self.bias_act(params, z, b, act)?;
                Ok((z, y))
            }
        }
    }

    /// `x + b`, the bias broadcast over the batch (columns).
    pub fn bias_add(&mut self, params: &ParamStore, x: Var, b: ParamId) -> Result<Var> {
        let (rows, n) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols)
        };
        let p = self.use_param(params, b)?;
        check_len("bias", rows, p.value.len())?;
        let mut z = self.pool.take(rows * n);
        let xv = &self.nodes[x.0].value;
        for i in 0..rows {
            let bi = p.value[i];
            for (o, &v) in z[i * n..(i + 1) * n]
                .iter_mut()
                .zip(&xv[i * n..(i + 1) * n])
            {
                *o = v + bi;
            }
        }
        Ok(self.push(rows, n, z, Op::BiasAdd { x, b }, true))
    }

    /// `act(x + b)`: a bias add and a nonlinearity fused into one pass (and one pass
    /// back), the same values and gradients as [`Tape::bias_add`] followed by the
    /// activation.
    pub fn bias_act(&mut self, params: &ParamStore, x: Var, b: ParamId, act: Act) -> Result<Var> {
        if let Act::LeakyRelu(a) = act {
            if a.is_nan() || a < 0.0 {
                return Err(Error::arg(
                    "leaky_relu",
                    format!("a fused slope must be ≥ 0, got {a}"),
                ));
            }
        }
        let (rows, n) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols)
        };
        let p = self.use_param(params, b)?;
        check_len("bias", rows, p.value.len())?;
        let mut z = self.pool.take(rows * n);
        let xv = &self.nodes[x.0].value;
        // One monomorphised loop per activation, so each vectorises.
        fn run(
            par: Par,
            z: &mut [f32],
            xv: &[f32],
            bias: &[f32],
            n: usize,
            f: impl Fn(f32) -> f32 + Sync + Send,
        ) {
            for_rows(par, z, n, |i, zrow| {
                let bi = bias[i];
                for (o, &v) in zrow.iter_mut().zip(&xv[i * n..(i + 1) * n]) {
                    *o = f(v + bi);
                }
            });
        }
        let (par, bias) = (self.par, &p.value[..]);
        match act {
            Act::Identity => run(par, &mut z, xv, bias, n, |v| v),
            Act::Relu => run(par, &mut z, xv, bias, n, |v| v.max(0.0)),
            Act::LeakyRelu(_) => run(par, &mut z, xv, bias, n, |v| act.f(v)),
            Act::Tanh => run(par, &mut z, xv, bias, n, f32::tanh),
            Act::Sigmoid => run(par, &mut z, xv, bias, n, |v| act.f(v)),
        }
        Ok(self.push(rows, n, z, Op::BiasAct { x, b, act }, true))
    }

    fn unary(&mut self, x: Var, op: Op, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Var> {
        let (rows, cols, rg) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols, node.requires_grad)
        };
        let mut z = self.pool.take(rows * cols);
        zip_map(self.par, &mut z, &self.nodes[x.0].value, |_, v| f(v));
        Ok(self.push(rows, cols, z, op, rg))
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary(x, Op::Relu(x), |v| v.max(0.0))
    }

    /// `x` where positive, `slope·x` elsewhere.
    pub fn leaky_relu(&mut self, x: Var, slope: f32) -> Result<Var> {
        self.unary(x, Op::LeakyRelu(x, slope), |v| {
            if v > 0.0 {
                v
            } else {
                slope * v
            }
        })
    }

    /// `tanh(x)`.
    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        self.unary(x, Op::Tanh(x), f32::tanh)
    }

    /// The logistic function.
    pub fn sigmoid(&mut self, x: Var) -> Result<Var> {
        self.unary(x, Op::Sigmoid(x), |v| 1.0 / (1.0 + (-v).exp()))
    }

    /// Inverted dropout: each entry is zeroed with probability `p` and the rest scaled by
    /// `1/(1−p)`. `p = 0` records nothing and returns `x`.
    pub fn dropout(&mut self, x: Var, p: f32, rng: &mut SeedRng) -> Result<Var> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::arg(
                "dropout",
                format!("probability must lie in [0, 1), got {p}"),
            ));
        }
        if p == 0.0 {
            return Ok(x);
        }
        let (rows, cols, rg) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols, node.requires_grad)
        };
        let scale = 1.0 / (1.0 - p);
        let mut mask = self.pool.take(rows * cols);
        for m in mask.iter_mut() {
            *m = if rng.random::<f32>() < p { 0.0 } else { scale };
        }
        let mut z = self.pool.take(rows * cols);
        for ((o, &v), &m) in z
            .iter_mut()
            .zip(self.nodes[x.0].value.iter())
            .zip(mask.iter())
        {
            *o = v * m;
        }
        let out = self.push(rows, cols, z, Op::Dropout(x), rg);
        self.nodes[out.0].aux = Some(mask);
        Ok(out)
    }

    /// Mean over the batch of the cross-entropy of `softmax(logits)` against `labels`,
    /// fused and numerically stable. `logits` is `[classes × batch]`; the result is a
    /// `1 × 1` node.
    pub fn softmax_cross_entropy(&mut self, logits: Var, labels: &[u32]) -> Result<Var> {
        let (c, n, rg) = {
            let node = self.check_var(logits)?;
            (node.rows, node.cols, node.requires_grad)
        };
        check_len("labels", n, labels.len())?;
        if let Some((j, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= c) {
            return Err(Error::arg(
                "labels",
                format!("label {l} at {j} but only {c} classes"),
            ));
        }
        let mut probs = self.pool.take(c * n);
        let lv = &self.nodes[logits.0].value;
        let mut loss = 0.0f64;
        for j in 0..n {
            let max = (0..c)
                .map(|i| lv[i * n + j])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for i in 0..c {
                let e = (lv[i * n + j] - max).exp();
                probs[i * n + j] = e;
                sum += e;
            }
            for i in 0..c {
                probs[i * n + j] /= sum;
            }
            let l = labels[j] as usize;
            // log softmax = (x − max) − log Σ e^(x − max)
            loss -= (lv[l * n + j] - max - sum.ln()) as f64;
        }
        let mut value = self.pool.take(1);
        value[0] = if n == 0 {
            0.0
        } else {
            (loss / n as f64) as f32
        };
        let out = self.push(1, 1, value, Op::SoftmaxCrossEntropy(logits), rg);
        self.nodes[out.0].aux = Some(probs);
        self.nodes[out.0].labels.extend_from_slice(labels);
        Ok(out)
    }

    /// Back-propagates from the scalar node `loss`: parameter gradients are *added* to
    /// `params` (zero them first), and nodes that require a gradient get one.
    pub fn backward(&mut self, loss: Var, params: &mut ParamStore) -> Result<()> {
        let (r, c) = {
            let node = self.check_var(loss)?;
            (node.rows, node.cols)
        };
        if (r, c) != (1, 1) {
            return Err(Error::shape(
                "backward",
                format!("the loss must be 1×1, got {r}×{c}"),
            ));
        }
        self.backward_from(loss, &[1.0], params)
    }

    /// Back-propagates the gradient `grad` of node `out` (its length is the node's): the
    /// same as [`Tape::backward`] for a loss whose gradient at `out` is `grad`.
    pub fn backward_from(&mut self, out: Var, grad: &[f32], params: &mut ParamStore) -> Result<()> {
        let len = {
            let node = self.check_var(out)?;
            node.rows * node.cols
        };
        check_len("output gradient", len, grad.len())?;
        self.check_params(params)?;
        let mut seed = self.pool.take(len);
        seed.copy_from_slice(grad);
        self.nodes[out.0].grad = Some(seed);
        for i in (0..=out.0).rev() {
            if matches!(self.nodes[i].op, Op::Input) {
                continue; // an input keeps its gradient, if it asked for one
            }
            let Some(g) = self.nodes[i].grad.take() else {
                continue;
            };
            let keep = self.retain_linear_grads
                && matches!(
                    self.nodes[i].op,
                    Op::SparseLinear { .. } | Op::SparseLinearBiasAct { .. }
                );
            if let Some(spent) = self.backward_node(i, g, params)? {
                if keep {
                    self.nodes[i].grad = Some(spent); // dZ of a sparse layer, for rewiring
                } else {
                    self.pool.give(spent);
                }
            }
        }
        Ok(())
    }

    /// Adds `contribution` to the gradient of `x`. The buffer moves into `x` when `x` has
    /// no gradient yet (no copy, no zeroing); otherwise it is added and handed back.
    fn contribute(&mut self, x: Var, contribution: AlignedVec) -> Option<AlignedVec> {
        let node = &mut self.nodes[x.0];
        if !node.requires_grad {
            return Some(contribution);
        }
        match node.grad.as_mut() {
            None => {
                node.grad = Some(contribution);
                None
            }
            Some(existing) => {
                zip_map(self.par, existing, &contribution, |a, b| a + b);
                Some(contribution)
            }
        }
    }

    /// The gradient buffer of `x` to be written by a kernel, with the mode to write it in
    /// (`Replace` for a fresh, unzeroed buffer); `None` where `x` needs no gradient.
    fn grad_target(&mut self, x: Var) -> Option<(AlignedVec, Accum)> {
        let node = &mut self.nodes[x.0];
        if !node.requires_grad {
            return None;
        }
        let len = node.rows * node.cols;
        Some(match node.grad.take() {
            Some(g) => (g, Accum::Add(1.0)),
            None => (self.pool.take(len), Accum::Replace),
        })
    }

    /// The backward of `Z = W·X` for a sparse `w`, given `dZ` (`g`): `dW` on the live
    /// connections only (an SDDMM, added to the parameter's gradient) and, where `x` needs
    /// one, `dX = Wᵀ·dZ` (the transposed SpMM).
    fn sparse_linear_backward(
        &mut self,
        x: Var,
        w: ParamId,
        g: &[f32],
        n: usize,
        params: &mut ParamStore,
    ) -> Result<()> {
        let par = self.par;
        let p = params.get_mut(w);
        let pattern = p
            .pattern()
            .cloned()
            .expect("a sparse linear node records a sparse weight");
        let xv = &self.nodes[x.0].value;
        // dW on live connections only: dW[i,j] = ⟨dZ[i,:], X[j,:]⟩.
        sddmm(&mut p.grad, &pattern, g, xv, n, 1.0, Accum::Add(1.0), par)?;
        if let Some((mut dx, mode)) = self.grad_target(x) {
            let wv = &params.get(w).value;
            match self.fusable_input(x, mode) {
                // x = act(W'·x' + b') read by this node alone: dX·act'(x) and db' as
                // dX is written, and x's backward skips that step
                Some((b, act)) => {
                    let mut sums = self.pool.take(pattern.ncols());
                    let y = &self.nodes[x.0].value;
                    spmm_t_act_grad(&mut dx, &pattern, wv, g, n, y, act, &mut sums, par)?;
                    for (d, s) in params.get_mut(b).grad.iter_mut().zip(sums.iter()) {
                        *d += s;
                    }
                    self.pool.give(sums);
                    self.nodes[x.0].grad_is_dz = true;
                }
                None => spmm_t(&mut dx, &pattern, wv, g, n, 1.0, mode, par)?,
            }
            self.nodes[x.0].grad = Some(dx);
        }
        Ok(())
    }

    /// The bias and nonlinearity of `x` when its backward can be folded into the
    /// transposed product that computes its gradient: `x` is a fused sparse layer, this
    /// is its only reader, and its gradient starts here (`Replace`).
    fn fusable_input(&self, x: Var, mode: Accum) -> Option<(ParamId, RowAct)> {
        let node = &self.nodes[x.0];
        if node.consumers != 1 || !matches!(mode, Accum::Replace) {
            return None;
        }
        match node.op {
            Op::SparseLinearBiasAct { b, act, .. } => act.row_act().map(|r| (b, r)),
            _ => None,
        }
    }

    /// Back-propagates through node `i`, whose gradient is `g`; returns a buffer that is
    /// free again.
    fn backward_node(
        &mut self,
        i: usize,
        mut g: AlignedVec,
        params: &mut ParamStore,
    ) -> Result<Option<AlignedVec>> {
        let par = self.par;
        let n = self.nodes[i].cols;
        match self.nodes[i].op {
            Op::Input => Ok(Some(g)),
            Op::SparseLinear { x, w } => {
                self.sparse_linear_backward(x, w, &g, n, params)?;
                Ok(Some(g))
            }
            Op::SparseLinearBiasAct { x, w, b, act } => {
                // dZ = dY·act'(Y) and db in place (unless the product that fed dY did it),
                // then the product's backward on dZ
                if !self.nodes[i].grad_is_dz {
                    let y = &self.nodes[i].value;
                    bias_act_backward(par, &mut g, y, &mut params.get_mut(b).grad, n, act);
                }
                self.sparse_linear_backward(x, w, &g, n, params)?;
                Ok(Some(g))
            }
            Op::DenseLinear { x, w } => {
                let p = params.get_mut(w);
                let (out, fan_in) = p.shape.dims();
                let xv = &self.nodes[x.0].value;
                // dW = dZ · Xᵀ
                gemm_ex(
                    &mut p.grad,
                    &g,
                    Trans::No,
                    xv,
                    Trans::Yes,
                    out,
                    n,
                    fan_in,
                    1.0,
                    Accum::Add(1.0),
                    par,
                )?;
                if let Some((mut dx, mode)) = self.grad_target(x) {
                    // dX = Wᵀ · dZ
                    gemm_ex(
                        &mut dx,
                        &params.get(w).value,
                        Trans::Yes,
                        &g,
                        Trans::No,
                        fan_in,
                        out,
                        n,
                        1.0,
                        mode,
                        par,
                    )?;
                    self.nodes[x.0].grad = Some(dx);
                }
                Ok(Some(g))
            }
            Op::BiasAdd { x, b } => {
                let p = params.get_mut(b);
                let rows = self.nodes[i].rows;
                for r in 0..rows {
                    p.grad[r] += row_sum(&g[r * n..(r + 1) * n]);
                }
                Ok(self.contribute(x, g))
            }
            Op::BiasAct { x, b, act } => {
                let y = &self.nodes[i].value;
                bias_act_backward(par, &mut g, y, &mut params.get_mut(b).grad, n, act);
                Ok(self.contribute(x, g))
            }
            Op::Relu(x) => {
                zip_map(par, &mut g, &self.nodes[i].value, |gv, y| {
                    if y > 0.0 {
                        gv
                    } else {
                        0.0
                    }
                });
                Ok(self.contribute(x, g))
            }
            Op::LeakyRelu(x, slope) => {
                zip_map(par, &mut g, &self.nodes[x.0].value, |gv, a| {
                    if a > 0.0 {
                        gv
                    } else {
                        slope * gv
                    }
                });
                Ok(self.contribute(x, g))
            }
            Op::Tanh(x) => {
                zip_map(par, &mut g, &self.nodes[i].value, |gv, y| {
                    gv * (1.0 - y * y)
                });
                Ok(self.contribute(x, g))
            }
            Op::Sigmoid(x) => {
                zip_map(par, &mut g, &self.nodes[i].value, |gv, y| {
                    gv * y * (1.0 - y)
                });
                Ok(self.contribute(x, g))
            }
            Op::Dropout(x) => {
                let mask = self.nodes[i].aux.as_ref().expect("dropout keeps its mask");
                zip_map(par, &mut g, mask, |gv, m| gv * m);
                Ok(self.contribute(x, g))
            }
            Op::Im2col { x, geom, batch } => {
                self.im2col_backward(x, geom, batch, &g);
                Ok(Some(g))
            }
            Op::SparseConv2d { x, w, geom, batch } => {
                self.sparse_conv2d_backward(x, w, geom, batch, &g, params)?;
                Ok(Some(g))
            }
            Op::Pool2d {
                x,
                geom,
                batch,
                kind,
            } => {
                self.pool2d_backward(i, x, geom, batch, kind, &g);
                Ok(Some(g))
            }
            Op::Reshape(x) => Ok(self.contribute(x, g)),
            Op::BatchNorm {
                x,
                gamma,
                beta,
                train,
            } => {
                self.batch_norm_backward(i, x, gamma, beta, train, &g, params);
                Ok(Some(g))
            }
            Op::SoftmaxCrossEntropy(logits) => {
                if let Some((mut dx, mode)) = self.grad_target(logits) {
                    let node = &self.nodes[i];
                    let probs = node.aux.as_ref().expect("softmax keeps its probabilities");
                    let (c, n) = (self.nodes[logits.0].rows, self.nodes[logits.0].cols);
                    let scale = g[0] / n.max(1) as f32;
                    for r in 0..c {
                        for j in 0..n {
                            let target = if node.labels[j] as usize == r {
                                1.0
                            } else {
                                0.0
                            };
                            let d = (probs[r * n + j] - target) * scale;
                            let k = r * n + j;
                            dx[k] = match mode {
                                Accum::Replace => d,
                                Accum::Add(_) => dx[k] + d,
                            };
                        }
                    }
                    self.nodes[logits.0].grad = Some(dx);
                }
                Ok(Some(g))
            }
        }
    }
}

/// The backward of `y = act(z + b)` in place: `g ← g·act'(y)` (now `dZ`) and
/// `db[r] += Σ_j g[r, j]` ([`row_sum`]), row by row.
fn bias_act_backward(par: Par, g: &mut [f32], y: &[f32], db: &mut [f32], n: usize, act: Act) {
    fn run(
        par: Par,
        g: &mut [f32],
        y: &[f32],
        db: &mut [f32],
        n: usize,
        d: impl Fn(f32) -> f32 + Sync + Send,
    ) {
        for_rows_with(par, g, db, n, |r, grow, dbr| {
            for (gv, &yv) in grow.iter_mut().zip(&y[r * n..(r + 1) * n]) {
                *gv *= d(yv);
            }
            *dbr += row_sum(grow);
        });
    }
    match act {
        Act::Identity => run(par, g, y, db, n, |_| 1.0),
        Act::Relu => run(par, g, y, db, n, |yv| if yv > 0.0 { 1.0 } else { 0.0 }),
        _ => run(par, g, y, db, n, |yv| act.deriv_from_output(yv)),
    }
}

/// `f(row index, row)` for every row (of `n` values) of `a`, over threads when `a` is long.
fn for_rows(par: Par, a: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if n == 0 {
        return;
    }
    match par {
        Par::Rayon(t) if t > 1 && a.len() >= PAR_ELEMENTWISE => {
            use rayon::prelude::*;
            let rows_per = (a.len() / n).div_ceil(t * 2).max(1);
            a.par_chunks_mut(rows_per * n)
                .enumerate()
                .for_each(|(c, chunk)| {
                    for (k, row) in chunk.chunks_mut(n).enumerate() {
                        f(c * rows_per + k, row);
                    }
                });
        }
        _ => a.chunks_mut(n).enumerate().for_each(|(i, row)| f(i, row)),
    }
}

/// `f(row index, row, &mut per_row[row index])` for every row of `a`, over threads when
/// `a` is long.
fn for_rows_with(
    par: Par,
    a: &mut [f32],
    per_row: &mut [f32],
    n: usize,
    f: impl Fn(usize, &mut [f32], &mut f32) + Sync + Send,
) {
    if n == 0 {
        return;
    }
    match par {
        Par::Rayon(t) if t > 1 && a.len() >= PAR_ELEMENTWISE => {
            use rayon::prelude::*;
            let rows_per = (a.len() / n).div_ceil(t * 2).max(1);
            a.par_chunks_mut(rows_per * n)
                .zip(per_row.par_chunks_mut(rows_per))
                .enumerate()
                .for_each(|(c, (chunk, pr))| {
                    for (k, (row, v)) in chunk.chunks_mut(n).zip(pr.iter_mut()).enumerate() {
                        f(c * rows_per + k, row, v);
                    }
                });
        }
        _ => a
            .chunks_mut(n)
            .zip(per_row.iter_mut())
            .enumerate()
            .for_each(|(i, (row, v))| f(i, row, v)),
    }
}

/// Buffers at least this long are split over rayon threads by [`zip_map`].
const PAR_ELEMENTWISE: usize = 1 << 15;

/// `a[k] = f(a[k], b[k])` for every `k`, over threads for long buffers.
fn zip_map(par: Par, a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    let run = |a: &mut [f32], b: &[f32]| {
        for (x, &y) in a.iter_mut().zip(b) {
            *x = f(*x, y);
        }
    };
    match par {
        Par::Rayon(t) if t > 1 && a.len() >= PAR_ELEMENTWISE => {
            use rayon::prelude::*;
            let chunk = a.len().div_ceil(t * 2).max(4096);
            a.par_chunks_mut(chunk)
                .zip(b.par_chunks(chunk))
                .for_each(|(a, b)| run(a, b));
        }
        _ => run(a, b),
    }
}

/// For each column of a `[classes × batch]` matrix, the row holding its largest value.
pub fn argmax_cols(values: &[f32], rows: usize, cols: usize) -> Result<Vec<u32>> {
    crate::error::check_dims("argmax_cols values", rows, cols, values.len())?;
    Ok((0..cols)
        .map(|j| {
            (0..rows)
                .max_by(|&a, &b| values[a * cols + j].total_cmp(&values[b * cols + j]))
                .unwrap_or(0) as u32
        })
        .collect())
}
