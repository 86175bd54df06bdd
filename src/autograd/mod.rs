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

use rand::RngExt;

use crate::cpu::dense::{gemm_ex, Trans};
use crate::cpu::{gemm, sddmm, spmm, spmm_t, Accum, Par};
use crate::error::{check_dims, check_len, Error, Result};
use crate::nn::{ParamId, ParamShape, ParamStore};
use crate::sparse::{aligned_zeros, AlignedVec, SeedRng};

/// A node of the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

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
    /// `x + b` broadcast over the batch
    BiasAdd {
        /// input `[features × batch]`
        x: Var,
        /// bias `[features]`
        b: ParamId,
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
}

struct Node {
    rows: usize,
    cols: usize,
    value: AlignedVec,
    grad: Option<AlignedVec>,
    /// dropout mask, or softmax probabilities
    aux: Option<AlignedVec>,
    labels: Vec<u32>,
    op: Op,
    requires_grad: bool,
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
    fn zeroed(&mut self, len: usize) -> AlignedVec {
        let mut b = self.take(len);
        b.fill(0.0);
        b
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
}

impl Tape {
    /// An empty tape whose kernels use `par`.
    pub fn new(par: Par) -> Self {
        Tape {
            nodes: Vec::new(),
            pool: Pool::default(),
            par,
        }
    }

    /// Forgets every node, keeping their buffers for the next pass.
    pub fn reset(&mut self) {
        for node in self.nodes.drain(..) {
            self.pool.give(node.value);
            if let Some(g) = node.grad {
                self.pool.give(g);
            }
            if let Some(a) = node.aux {
                self.pool.give(a);
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
        self.nodes.push(Node {
            rows,
            cols,
            value,
            grad: None,
            aux: None,
            labels: Vec::new(),
            op,
            requires_grad,
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

    /// The value of a node.
    pub fn value(&self, v: Var) -> &[f32] {
        &self.nodes[v.0].value
    }

    /// `(rows, cols)` of a node.
    pub fn dims(&self, v: Var) -> (usize, usize) {
        (self.nodes[v.0].rows, self.nodes[v.0].cols)
    }

    /// The gradient of the loss with respect to a node, after [`Tape::backward`], where
    /// the node requires one.
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
        let p = params.get(w);
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

    /// `x + b`, the bias broadcast over the batch (columns).
    pub fn bias_add(&mut self, params: &ParamStore, x: Var, b: ParamId) -> Result<Var> {
        let (rows, n) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols)
        };
        let p = params.get(b);
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

    fn unary(&mut self, x: Var, op: Op, f: impl Fn(f32) -> f32) -> Result<Var> {
        let (rows, cols, rg) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols, node.requires_grad)
        };
        let mut z = self.pool.take(rows * cols);
        for (o, &v) in z.iter_mut().zip(self.nodes[x.0].value.iter()) {
            *o = f(v);
        }
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
        let mut seed = self.pool.take(1);
        seed[0] = 1.0;
        self.nodes[loss.0].grad = Some(seed);
        for i in (0..=loss.0).rev() {
            let Some(g) = self.nodes[i].grad.take() else {
                continue;
            };
            self.backward_node(i, &g, params)?;
            if matches!(self.nodes[i].op, Op::Input) && self.nodes[i].requires_grad {
                self.nodes[i].grad = Some(g); // the caller asked for it
            } else {
                self.pool.give(g);
            }
        }
        Ok(())
    }

    /// The gradient buffer of input node `x` (zeroed on first use), taken out of the tape
    /// while the caller adds to it; `None` where `x` needs no gradient.
    fn take_grad(&mut self, x: Var) -> Option<AlignedVec> {
        let node = &mut self.nodes[x.0];
        if !node.requires_grad {
            return None;
        }
        let len = node.rows * node.cols;
        let pool = &mut self.pool;
        Some(node.grad.take().unwrap_or_else(|| pool.zeroed(len)))
    }

    fn backward_node(&mut self, i: usize, g: &[f32], params: &mut ParamStore) -> Result<()> {
        let par = self.par;
        let n = self.nodes[i].cols;
        match self.nodes[i].op {
            Op::Input => {}
            Op::SparseLinear { x, w } => {
                let p = params.get_mut(w);
                let pattern = p
                    .pattern()
                    .cloned()
                    .expect("SparseLinear records sparse weights");
                let xv = &self.nodes[x.0].value;
                // dW on live connections only: dW[i,j] = ⟨dZ[i,:], X[j,:]⟩.
                sddmm(&mut p.grad, &pattern, g, xv, n, 1.0, Accum::Add(1.0), par)?;
                if let Some(mut dx) = self.take_grad(x) {
                    spmm_t(
                        &mut dx,
                        &pattern,
                        &params.get(w).value,
                        g,
                        n,
                        1.0,
                        Accum::Add(1.0),
                        par,
                    )?;
                    self.nodes[x.0].grad = Some(dx);
                }
            }
            Op::DenseLinear { x, w } => {
                let p = params.get_mut(w);
                let (out, fan_in) = p.shape.dims();
                let xv = &self.nodes[x.0].value;
                // dW = dZ · Xᵀ
                gemm_ex(
                    &mut p.grad,
                    g,
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
                if let Some(mut dx) = self.take_grad(x) {
                    // dX = Wᵀ · dZ
                    gemm_ex(
                        &mut dx,
                        &params.get(w).value,
                        Trans::Yes,
                        g,
                        Trans::No,
                        fan_in,
                        out,
                        n,
                        1.0,
                        Accum::Add(1.0),
                        par,
                    )?;
                    self.nodes[x.0].grad = Some(dx);
                }
            }
            Op::BiasAdd { x, b } => {
                let p = params.get_mut(b);
                let rows = self.nodes[i].rows;
                for r in 0..rows {
                    p.grad[r] += g[r * n..(r + 1) * n].iter().sum::<f32>();
                }
                if let Some(mut dx) = self.take_grad(x) {
                    add_into(&mut dx, g);
                    self.nodes[x.0].grad = Some(dx);
                }
            }
            Op::Relu(x) => self.elementwise_back(i, x, g, |_, y| if y > 0.0 { 1.0 } else { 0.0 }),
            Op::LeakyRelu(x, slope) => {
                self.elementwise_back(i, x, g, |xv, _| if xv > 0.0 { 1.0 } else { slope })
            }
            Op::Tanh(x) => self.elementwise_back(i, x, g, |_, y| 1.0 - y * y),
            Op::Sigmoid(x) => self.elementwise_back(i, x, g, |_, y| y * (1.0 - y)),
            Op::Dropout(x) => {
                if let Some(mut dx) = self.take_grad(x) {
                    let mask = self.nodes[i].aux.as_ref().expect("dropout keeps its mask");
                    for ((d, &gv), &m) in dx.iter_mut().zip(g).zip(mask.iter()) {
                        *d += gv * m;
                    }
                    self.nodes[x.0].grad = Some(dx);
                }
            }
            Op::SoftmaxCrossEntropy(logits) => {
                if let Some(mut dx) = self.take_grad(logits) {
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
                            dx[r * n + j] += (probs[r * n + j] - target) * scale;
                        }
                    }
                    self.nodes[logits.0].grad = Some(dx);
                }
            }
        }
        Ok(())
    }

    /// `dx += g · f'(x, y)` for an elementwise node `y = f(x)`.
    fn elementwise_back(&mut self, i: usize, x: Var, g: &[f32], deriv: impl Fn(f32, f32) -> f32) {
        if let Some(mut dx) = self.take_grad(x) {
            let (xv, yv) = (&self.nodes[x.0].value, &self.nodes[i].value);
            for (((d, &gv), &a), &y) in dx.iter_mut().zip(g).zip(xv.iter()).zip(yv.iter()) {
                *d += gv * deriv(a, y);
            }
            self.nodes[x.0].grad = Some(dx);
        }
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// For each column of a `[classes × batch]` matrix, the row holding its largest value.
pub fn argmax_cols(values: &[f32], rows: usize, cols: usize) -> Vec<u32> {
    (0..cols)
        .map(|j| {
            (0..rows)
                .max_by(|&a, &b| values[a * cols + j].total_cmp(&values[b * cols + j]))
                .unwrap_or(0) as u32
        })
        .collect()
}
