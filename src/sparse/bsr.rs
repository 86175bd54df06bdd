//! Block-sparse row (BSR) storage: CSR over `r × c` dense blocks.
//!
//! ```text
//!   A (4 × 6), 2 × 2 blocks      block_row_ptr = [0, 2, 3]
//!   [ a b . . e f ]              block_col_idx = [0, 2,  1]
//!   [ c d . . g h ]              values = [a b c d | e f g h | i j k l]
//!   [ . . i j . . ]              (each block row-major, r·c values)
//!   [ . . k l . . ]
//! ```
//!
//! # Invariants of a [`BsrPattern`]
//! - `r ≥ 1`, `c ≥ 1`; the matrix is `block_rows·r × block_cols·c`;
//! - `block_row_ptr` / `block_col_idx` form a valid CSR pattern over blocks (see
//!   [`CsrPattern`]): monotone pointers, sorted unique block columns in range.
//!
//! A BSR pattern is a CSR pattern over blocks plus the block shape, so it reuses
//! [`CsrPattern`]'s checks and cached transpose. Its kernels are GEMM-like
//! micro-kernels: each stored block is a small dense product.

use std::sync::Arc;

use crate::error::{check_len, Error, Result};
use crate::sparse::csr::{
    aligned_from_slice, aligned_zeros, check_u32, AlignedVec, Csr, CsrPattern,
};

/// The structure of a block-sparse matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct BsrPattern {
    blocks: CsrPattern,
    r: usize,
    c: usize,
}

impl BsrPattern {
    /// Builds a checked pattern of `r × c` blocks from block-level CSR arrays.
    pub fn new(
        block_rows: usize,
        block_cols: usize,
        r: usize,
        c: usize,
        block_row_ptr: Vec<u32>,
        block_col_idx: Vec<u32>,
    ) -> Result<Self> {
        let blocks = CsrPattern::new(block_rows, block_cols, block_row_ptr, block_col_idx)
            .map_err(|e| match e {
                Error::InvalidPattern { detail, .. } => Error::InvalidPattern {
                    format: "BSR",
                    detail: format!("block structure: {detail}"),
                },
                other => other,
            })?;
        Self::from_block_pattern(blocks, r, c)
    }

    /// Wraps a CSR pattern over blocks with block shape `r × c`.
    pub fn from_block_pattern(blocks: CsrPattern, r: usize, c: usize) -> Result<Self> {
        if r == 0 || c == 0 {
            return Err(Error::arg(
                "block",
                format!("block shape must be at least 1×1, got {r}×{c}"),
            ));
        }
        check_u32("block r", r)?;
        check_u32("block c", c)?;
        check_u32("nrows", blocks.nrows().saturating_mul(r))?;
        check_u32("ncols", blocks.ncols().saturating_mul(c))?;
        check_u32("nnz", blocks.nnz().saturating_mul(r.saturating_mul(c)))?;
        Ok(BsrPattern { blocks, r, c })
    }

    /// Rows per block.
    pub fn block_r(&self) -> usize {
        self.r
    }
    /// Columns per block.
    pub fn block_c(&self) -> usize {
        self.c
    }
    /// Number of block rows.
    pub fn block_rows(&self) -> usize {
        self.blocks.nrows()
    }
    /// Number of block columns.
    pub fn block_cols(&self) -> usize {
        self.blocks.ncols()
    }
    /// Rows of the matrix.
    pub fn nrows(&self) -> usize {
        self.blocks.nrows() * self.r
    }
    /// Columns of the matrix.
    pub fn ncols(&self) -> usize {
        self.blocks.ncols() * self.c
    }
    /// Number of stored blocks.
    pub fn nnzb(&self) -> usize {
        self.blocks.nnz()
    }
    /// Number of stored scalar entries (`nnzb · r · c`).
    pub fn nnz(&self) -> usize {
        self.blocks.nnz() * self.r * self.c
    }
    /// The CSR pattern over blocks.
    pub fn blocks(&self) -> &CsrPattern {
        &self.blocks
    }
    /// Unique id of this structure.
    pub fn version(&self) -> u64 {
        self.blocks.version()
    }

    /// The element-level CSR pattern (every entry of every stored block live).
    pub fn to_csr_pattern(&self) -> CsrPattern {
        let (r, c) = (self.r, self.c);
        let mut row_ptr = Vec::with_capacity(self.nrows() + 1);
        let mut col_idx = Vec::with_capacity(self.nnz());
        row_ptr.push(0u32);
        for bi in 0..self.block_rows() {
            for _ in 0..r {
                for &bj in self.blocks.row(bi) {
                    col_idx.extend((0..c).map(|j| bj * c as u32 + j as u32));
                }
                row_ptr.push(col_idx.len() as u32);
            }
        }
        // SAFETY: block columns are sorted and unique, so the expanded columns are too;
        // sizes were checked against u32 at construction.
        unsafe { CsrPattern::new_unchecked(self.nrows(), self.ncols(), row_ptr, col_idx) }
    }
}

/// A block-sparse matrix: a shared [`BsrPattern`] plus `nnzb · r · c` values, each block
/// stored row-major.
#[derive(Debug, Clone)]
pub struct Bsr {
    pattern: Arc<BsrPattern>,
    values: AlignedVec,
}

impl Bsr {
    /// Pairs a pattern with its values; `values.len()` must equal `pattern.nnz()`.
    pub fn new(pattern: Arc<BsrPattern>, values: &[f32]) -> Result<Self> {
        check_len("BSR values", pattern.nnz(), values.len())?;
        Ok(Bsr {
            pattern,
            values: aligned_from_slice(values),
        })
    }

    /// A matrix with the given pattern and every value zero.
    pub fn zeros(pattern: Arc<BsrPattern>) -> Self {
        let values = aligned_zeros(pattern.nnz());
        Bsr { pattern, values }
    }

    /// Keeps every `r × c` block of a dense row-major matrix that has a nonzero entry.
    /// `nrows` must be a multiple of `r` and `ncols` of `c`.
    pub fn from_dense(
        dense: &[f32],
        nrows: usize,
        ncols: usize,
        r: usize,
        c: usize,
    ) -> Result<Self> {
        check_len("dense matrix", nrows.saturating_mul(ncols), dense.len())?;
        check_block_shape(nrows, ncols, r, c)?;
        let (br, bc) = (nrows / r, ncols / c);
        let mut row_ptr = vec![0u32];
        let mut col_idx = Vec::new();
        let mut values = Vec::new();
        for bi in 0..br {
            for bj in 0..bc {
                let block = (0..r).flat_map(|i| {
                    let start = (bi * r + i) * ncols + bj * c;
                    dense[start..start + c].iter().copied()
                });
                if block.clone().any(|v| v != 0.0) {
                    col_idx.push(bj as u32);
                    values.extend(block);
                }
            }
            check_u32("nnzb", col_idx.len())?;
            row_ptr.push(col_idx.len() as u32);
        }
        let pattern = BsrPattern::new(br, bc, r, c, row_ptr, col_idx)?;
        Self::new(Arc::new(pattern), &values)
    }

    /// Groups a CSR matrix into `r × c` blocks: a block is stored when any of its entries
    /// is live; entries of stored blocks not live in the CSR matrix are zero.
    pub fn from_csr(csr: &Csr, r: usize, c: usize) -> Result<Self> {
        let p = csr.pattern();
        check_block_shape(p.nrows(), p.ncols(), r, c)?;
        let (br, bc) = (p.nrows() / r, p.ncols() / c);
        let mut row_ptr = vec![0u32];
        let mut col_idx: Vec<u32> = Vec::new();
        let mut values: Vec<f32> = Vec::new();
        let mut slot = vec![u32::MAX; bc]; // block column -> position in this block row
        for bi in 0..br {
            let first = col_idx.len();
            let mut cols: Vec<u32> = (bi * r..(bi + 1) * r)
                .flat_map(|i| p.row(i).iter().map(|&j| j / c as u32))
                .collect();
            cols.sort_unstable();
            cols.dedup();
            for (n, &bj) in cols.iter().enumerate() {
                slot[bj as usize] = (first + n) as u32;
            }
            col_idx.extend_from_slice(&cols);
            values.resize(col_idx.len() * r * c, 0.0);
            for i in 0..r {
                let row = bi * r + i;
                for k in p.row_range(row) {
                    let j = p.col_idx()[k] as usize;
                    let b = slot[j / c] as usize;
                    values[b * r * c + i * c + j % c] = csr.values()[k];
                }
            }
            check_u32("nnzb", col_idx.len())?;
            row_ptr.push(col_idx.len() as u32);
        }
        let pattern = BsrPattern::new(br, bc, r, c, row_ptr, col_idx)?;
        Self::new(Arc::new(pattern), &values)
    }

    /// The element-level CSR matrix (all entries of stored blocks, zeros included).
    pub fn to_csr(&self) -> Csr {
        let pattern = Arc::new(self.pattern.to_csr_pattern());
        let (r, c) = (self.pattern.r, self.pattern.c);
        let blocks = self.pattern.blocks();
        let mut values = Vec::with_capacity(self.pattern.nnz());
        for bi in 0..blocks.nrows() {
            for i in 0..r {
                for b in blocks.row_range(bi) {
                    values.extend_from_slice(
                        &self.values[b * r * c + i * c..b * r * c + (i + 1) * c],
                    );
                }
            }
        }
        Csr::new(pattern, &values).expect("lengths agree by construction")
    }

    /// The dense row-major matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        self.to_csr().to_dense()
    }

    /// The structure.
    pub fn pattern(&self) -> &BsrPattern {
        &self.pattern
    }
    /// The shared handle to the structure.
    pub fn pattern_arc(&self) -> &Arc<BsrPattern> {
        &self.pattern
    }
    /// The block values, block after block, each row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
    /// Mutable block values.
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
}

fn check_block_shape(nrows: usize, ncols: usize, r: usize, c: usize) -> Result<()> {
    if r == 0 || c == 0 {
        return Err(Error::arg(
            "block",
            format!("block shape must be at least 1×1, got {r}×{c}"),
        ));
    }
    if !nrows.is_multiple_of(r) || !ncols.is_multiple_of(c) {
        return Err(Error::shape(
            "BSR conversion",
            format!("a {nrows}×{ncols} matrix does not divide into {r}×{c} blocks"),
        ));
    }
    Ok(())
}
