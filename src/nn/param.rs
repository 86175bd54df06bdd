//! Trainable parameters: dense matrices, sparse (CSR) matrices whose values are aligned
//! with their pattern, and vectors (biases). A sparse parameter's gradient is a
//! values-length buffer: no `out × in` buffer ever exists for it.

use std::sync::Arc;

use crate::error::{check_len, Result};
use crate::sparse::{aligned_zeros, AlignedVec, CsrPattern};

/// Index of a parameter in a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// The structure of a parameter.
#[derive(Clone, Debug)]
pub enum ParamShape {
    /// dense `rows × cols` matrix, row-major
    Dense {
        /// rows (outputs)
        rows: usize,
        /// columns (inputs)
        cols: usize,
    },
    /// sparse matrix: one value per live entry of the pattern
    Sparse {
        /// the live connections
        pattern: Arc<CsrPattern>,
    },
    /// a vector (bias)
    Vector {
        /// its length
        len: usize,
    },
}

impl ParamShape {
    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            ParamShape::Dense { rows, cols } => rows * cols,
            ParamShape::Sparse { pattern } => pattern.nnz(),
            ParamShape::Vector { len } => *len,
        }
    }

    /// Whether it stores no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(rows, cols)` of a matrix parameter, `(len, 1)` of a vector.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            ParamShape::Dense { rows, cols } => (*rows, *cols),
            ParamShape::Sparse { pattern } => (pattern.nrows(), pattern.ncols()),
            ParamShape::Vector { len } => (*len, 1),
        }
    }
}

/// One trainable tensor with its gradient.
#[derive(Clone, Debug)]
pub struct Param {
    /// a readable name ("fc1.weight")
    pub name: String,
    /// its structure
    pub shape: ParamShape,
    /// the values (`shape.len()` of them)
    pub value: AlignedVec,
    /// the gradient, same length as `value`
    pub grad: AlignedVec,
    /// whether weight decay applies (weights yes, biases no)
    pub decay: bool,
}

impl Param {
    /// A parameter with the given values and a zero gradient.
    pub fn new(
        name: impl Into<String>,
        shape: ParamShape,
        value: AlignedVec,
        decay: bool,
    ) -> Result<Self> {
        check_len("parameter values", shape.len(), value.len())?;
        let grad = aligned_zeros(value.len());
        Ok(Param {
            name: name.into(),
            shape,
            value,
            grad,
            decay,
        })
    }

    /// The pattern of a sparse parameter.
    pub fn pattern(&self) -> Option<&Arc<CsrPattern>> {
        match &self.shape {
            ParamShape::Sparse { pattern } => Some(pattern),
            _ => None,
        }
    }

    /// Replaces the pattern of a sparse parameter: survivors keep their value, new
    /// connections get `fill`; the gradient is reset to zero.
    pub fn set_pattern(&mut self, new: Arc<CsrPattern>, fill: f32) -> Result<()> {
        let old = self
            .pattern()
            .cloned()
            .ok_or_else(|| crate::Error::arg("param", format!("{} is not sparse", self.name)))?;
        let mut value = aligned_zeros(new.nnz());
        old.remap_to(&self.value, &new, &mut value, fill)?;
        self.value = value;
        self.grad = aligned_zeros(new.nnz());
        self.shape = ParamShape::Sparse { pattern: new };
        Ok(())
    }

    /// Moves a dense matrix into sparse storage with every entry live (the full pattern;
    /// values and their row-major order unchanged), so that a dense-to-sparse method can
    /// prune it. Sparse parameters stay as they are; a vector is an error.
    pub fn to_sparse_storage(&mut self) -> Result<()> {
        match self.shape {
            ParamShape::Sparse { .. } => Ok(()),
            ParamShape::Dense { rows, cols } => {
                self.shape = ParamShape::Sparse {
                    pattern: Arc::new(CsrPattern::full(rows, cols)?),
                };
                Ok(())
            }
            ParamShape::Vector { .. } => Err(crate::Error::arg(
                "param",
                format!("{} is a vector, not a matrix", self.name),
            )),
        }
    }

    /// Live weights: stored values.
    pub fn live(&self) -> usize {
        self.value.len()
    }
}

/// All parameters of a model.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a parameter and returns its id.
    pub fn add(&mut self, param: Param) -> ParamId {
        self.params.push(param);
        ParamId(self.params.len() - 1)
    }
    /// The parameter `id`.
    ///
    /// # Panics
    /// If `id` is not in this store (see [`ParamStore::try_get`]).
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    /// The parameter `id`, or an error naming it where it is not in this store.
    pub fn try_get(&self, id: ParamId) -> Result<&Param> {
        self.params.get(id.0).ok_or_else(|| {
            crate::Error::arg(
                "param",
                format!("no parameter {} in a store of {}", id.0, self.params.len()),
            )
        })
    }
    /// The parameter `id`, mutably.
    ///
    /// # Panics
    /// If `id` is not in this store.
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    /// All parameters in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }
    /// All parameters in id order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Param)> {
        self.params
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (ParamId(i), p))
    }
    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
    }
    /// Total stored values (live weights and biases).
    pub fn live(&self) -> usize {
        self.params.iter().map(Param::live).sum()
    }
}
