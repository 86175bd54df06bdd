//! Compressed sparse row storage with the pattern kept apart from the values.
//!
//! ```text
//!   A (3 × 5)            row_ptr = [0, 2, 2, 5]
//!   [ a . b . . ]        col_idx = [0, 2,  0, 3, 4]
//!   [ . . . . . ]        values  = [a, b,  c, d, e]
//!   [ c . . d e ]        row i lives in col_idx[row_ptr[i] .. row_ptr[i+1]]
//! ```
//!
//! # Invariants of a [`CsrPattern`]
//! - `row_ptr.len() == nrows + 1`, `row_ptr[0] == 0`, `row_ptr` non-decreasing,
//!   `row_ptr[nrows] == col_idx.len()`;
//! - every column index is `< ncols`, and the columns of a row are strictly increasing
//!   (sorted, no duplicates);
//! - `nrows`, `ncols` and `nnz` fit in `u32`.
//!
//! [`CsrPattern::new`] checks all of them; [`CsrPattern::new_unchecked`] only
//! debug-asserts them. Values change every training step, the pattern only at rewiring
//! steps, so derived data (the transposed pattern and its value permutation) is cached
//! inside the pattern and every pattern carries a unique [`version`](CsrPattern::version).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aligned_vec::AVec;

use crate::error::{check_len, Error, Result};

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// A fresh, process-unique version number for a new pattern.
pub(crate) fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// 64-byte aligned `f32` buffer used for values and dense operands.
pub type AlignedVec = AVec<f32>;

/// An aligned buffer of `len` zeros.
pub fn aligned_zeros(len: usize) -> AlignedVec {
    AVec::from_iter(64, std::iter::repeat_n(0.0f32, len))
}

/// An aligned copy of `data`.
pub fn aligned_from_slice(data: &[f32]) -> AlignedVec {
    AVec::from_slice(64, data)
}

pub(crate) fn check_u32(what: &'static str, value: usize) -> Result<()> {
    if value > u32::MAX as usize {
        Err(Error::TooLarge { what, value })
    } else {
        Ok(())
    }
}

/// The sparsity structure of a CSR matrix: which entries are live, not their values.
#[derive(Debug)]
pub struct CsrPattern {
    nrows: usize,
    ncols: usize,
    row_ptr: Vec<u32>,
    col_idx: Vec<u32>,
    version: u64,
    transpose: OnceLock<Arc<CsrTranspose>>,
}

/// The transpose of a [`CsrPattern`] and the map from its entries back to the
/// original's: entry `q` of the transpose holds the value `values[perm[q]]`.
#[derive(Debug)]
pub struct CsrTranspose {
    /// pattern of `Aᵀ` (`ncols × nrows`)
    pub pattern: CsrPattern,
    /// `perm[q]` is the index, in the original value buffer, of transposed entry `q`
    pub perm: Vec<u32>,
}

impl Clone for CsrPattern {
    fn clone(&self) -> Self {
        // Same structure, so the same version and the same cached derived data.
        let transpose = OnceLock::new();
        if let Some(t) = self.transpose.get() {
            let _ = transpose.set(Arc::clone(t));
        }
        CsrPattern {
            nrows: self.nrows,
            ncols: self.ncols,
            row_ptr: self.row_ptr.clone(),
            col_idx: self.col_idx.clone(),
            version: self.version,
            transpose,
        }
    }
}

impl PartialEq for CsrPattern {
    fn eq(&self, other: &Self) -> bool {
        self.nrows == other.nrows
            && self.ncols == other.ncols
            && self.row_ptr == other.row_ptr
            && self.col_idx == other.col_idx
    }
}

impl CsrPattern {
    /// Builds a pattern after checking every invariant (see the module docs).
    pub fn new(nrows: usize, ncols: usize, row_ptr: Vec<u32>, col_idx: Vec<u32>) -> Result<Self> {
        validate_csr(nrows, ncols, &row_ptr, &col_idx)?;
        // SAFETY: just validated.
        Ok(unsafe { Self::new_unchecked(nrows, ncols, row_ptr, col_idx) })
    }

    /// Builds a pattern without checking it.
    ///
    /// # Safety
    /// The caller guarantees the invariants listed in the module docs; kernels index
    /// without bounds checks on the strength of them.
    pub unsafe fn new_unchecked(
        nrows: usize,
        ncols: usize,
        row_ptr: Vec<u32>,
        col_idx: Vec<u32>,
    ) -> Self {
        debug_assert!(validate_csr(nrows, ncols, &row_ptr, &col_idx).is_ok());
        CsrPattern {
            nrows,
            ncols,
            row_ptr,
            col_idx,
            version: next_version(),
            transpose: OnceLock::new(),
        }
    }

    /// An `nrows × ncols` pattern with no live entry.
    pub fn empty(nrows: usize, ncols: usize) -> Result<Self> {
        // before `row_ptr` is allocated: a huge row count is an error, not an abort
        check_u32("nrows", nrows)?;
        check_u32("ncols", ncols)?;
        Self::new(nrows, ncols, vec![0; nrows + 1], Vec::new())
    }

    /// The fully dense pattern (every entry live).
    pub fn full(nrows: usize, ncols: usize) -> Result<Self> {
        // before `row_ptr` is allocated: a huge row count is an error, not an abort
        check_u32("nrows", nrows)?;
        check_u32("ncols", ncols)?;
        check_u32("nnz", nrows.saturating_mul(ncols))?;
        let row_ptr = (0..=nrows).map(|i| (i * ncols) as u32).collect();
        let col_idx = (0..nrows).flat_map(|_| 0..ncols as u32).collect();
        Self::new(nrows, ncols, row_ptr, col_idx)
    }

    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }
    /// Number of live entries.
    pub fn nnz(&self) -> usize {
        self.col_idx.len()
    }
    /// Fraction of entries that are live (0 for an empty shape).
    pub fn density(&self) -> f64 {
        let total = self.nrows as f64 * self.ncols as f64;
        if total == 0.0 {
            0.0
        } else {
            self.nnz() as f64 / total
        }
    }
    /// Row pointers, `nrows + 1` long.
    pub fn row_ptr(&self) -> &[u32] {
        &self.row_ptr
    }
    /// Column index of every live entry, row by row.
    pub fn col_idx(&self) -> &[u32] {
        &self.col_idx
    }
    /// The column indices of row `i`.
    ///
    /// # Panics
    /// If `i >= nrows()`, as slice indexing does.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.col_idx[self.row_ptr[i] as usize..self.row_ptr[i + 1] as usize]
    }
    /// The entry range of row `i`.
    ///
    /// # Panics
    /// If `i >= nrows()`, as slice indexing does.
    pub fn row_range(&self, i: usize) -> std::ops::Range<usize> {
        self.row_ptr[i] as usize..self.row_ptr[i + 1] as usize
    }
    /// Unique id of this structure; any edit produces a pattern with a new version.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Row index of every entry (the COO row array), `nnz` long.
    pub fn row_indices(&self) -> Vec<u32> {
        let mut rows = Vec::with_capacity(self.nnz());
        for i in 0..self.nrows {
            rows.extend(std::iter::repeat_n(i as u32, self.row_range(i).len()));
        }
        rows
    }

    /// The transposed pattern and its value permutation, built on first use and cached.
    pub fn transpose(&self) -> &CsrTranspose {
        self.transpose
            .get_or_init(|| Arc::new(self.build_transpose()))
    }

    fn build_transpose(&self) -> CsrTranspose {
        // Counting sort by column; scanning rows in order keeps each transposed row sorted.
        let mut row_ptr = vec![0u32; self.ncols + 1];
        for &c in &self.col_idx {
            row_ptr[c as usize + 1] += 1;
        }
        for j in 0..self.ncols {
            row_ptr[j + 1] += row_ptr[j];
        }
        let mut next: Vec<u32> = row_ptr[..self.ncols].to_vec();
        let mut col_idx = vec![0u32; self.nnz()];
        let mut perm = vec![0u32; self.nnz()];
        for i in 0..self.nrows {
            for p in self.row_range(i) {
                let c = self.col_idx[p] as usize;
                let q = next[c] as usize;
                next[c] += 1;
                col_idx[q] = i as u32;
                perm[q] = p as u32;
            }
        }
        // SAFETY: counting sort of a valid pattern yields a valid pattern.
        let pattern =
            unsafe { CsrPattern::new_unchecked(self.ncols, self.nrows, row_ptr, col_idx) };
        CsrTranspose { pattern, perm }
    }

    /// The pattern of the nonzero entries of a dense row-major `nrows × ncols` matrix.
    pub fn from_dense(dense: &[f32], nrows: usize, ncols: usize) -> Result<Self> {
        Ok(Csr::from_dense(dense, nrows, ncols)?.pattern().clone())
    }

    /// Carries per-entry data from `self` to `new` (same shape): `out[q]` gets
    /// `data[p]` where entry `q` of `new` is entry `p` of `self` (a survivor), and `fill`
    /// where it is new. Rows are merged in one pass (both are sorted).
    pub fn remap_to(
        &self,
        data: &[f32],
        new: &CsrPattern,
        out: &mut [f32],
        fill: f32,
    ) -> Result<()> {
        if self.nrows != new.nrows || self.ncols != new.ncols {
            return Err(Error::shape(
                "remap",
                format!(
                    "patterns are {}×{} and {}×{}",
                    self.nrows, self.ncols, new.nrows, new.ncols
                ),
            ));
        }
        check_len("remap data", self.nnz(), data.len())?;
        check_len("remap output", new.nnz(), out.len())?;
        for i in 0..self.nrows {
            let (old_r, new_r) = (self.row_range(i), new.row_range(i));
            let mut p = old_r.start;
            for q in new_r {
                let c = new.col_idx[q];
                while p < old_r.end && self.col_idx[p] < c {
                    p += 1;
                }
                out[q] = if p < old_r.end && self.col_idx[p] == c {
                    data[p]
                } else {
                    fill
                };
            }
        }
        Ok(())
    }

    /// A dense `nrows × ncols` 0/1 mask of the live entries.
    pub fn to_dense_mask(&self) -> Vec<f32> {
        let mut mask = vec![0.0; self.nrows * self.ncols];
        for i in 0..self.nrows {
            for &c in self.row(i) {
                mask[i * self.ncols + c as usize] = 1.0;
            }
        }
        mask
    }
}

fn validate_csr(nrows: usize, ncols: usize, row_ptr: &[u32], col_idx: &[u32]) -> Result<()> {
    let bad = |detail: String| Error::InvalidPattern {
        format: "CSR",
        detail,
    };
    check_u32("nrows", nrows)?;
    check_u32("ncols", ncols)?;
    check_u32("nnz", col_idx.len())?;
    if row_ptr.len() != nrows + 1 {
        return Err(bad(format!(
            "row_ptr has length {}, expected nrows + 1 = {}",
            row_ptr.len(),
            nrows + 1
        )));
    }
    if row_ptr[0] != 0 {
        return Err(bad(format!("row_ptr[0] = {}, expected 0", row_ptr[0])));
    }
    for i in 0..nrows {
        if row_ptr[i + 1] < row_ptr[i] {
            return Err(bad(format!(
                "row_ptr is not monotone at row {i}: {} > {}",
                row_ptr[i],
                row_ptr[i + 1]
            )));
        }
    }
    if row_ptr[nrows] as usize != col_idx.len() {
        return Err(bad(format!(
            "row_ptr[nrows] = {} but col_idx has {} entries",
            row_ptr[nrows],
            col_idx.len()
        )));
    }
    for i in 0..nrows {
        let row = &col_idx[row_ptr[i] as usize..row_ptr[i + 1] as usize];
        for (k, &c) in row.iter().enumerate() {
            if c as usize >= ncols {
                return Err(bad(format!(
                    "column index {c} out of range (ncols = {ncols}) in row {i}"
                )));
            }
            if k > 0 && row[k - 1] >= c {
                let what = if row[k - 1] == c {
                    "duplicated"
                } else {
                    "unsorted"
                };
                return Err(bad(format!(
                    "column indices {what} in row {i}: {} then {c}",
                    row[k - 1]
                )));
            }
        }
    }
    Ok(())
}

/// A CSR matrix: a shared pattern plus one value per live entry.
#[derive(Debug, Clone)]
pub struct Csr {
    pattern: Arc<CsrPattern>,
    values: AlignedVec,
}

impl Csr {
    /// Pairs a pattern with its values; `values.len()` must equal `pattern.nnz()`.
    pub fn new(pattern: Arc<CsrPattern>, values: &[f32]) -> Result<Self> {
        check_len("CSR values", pattern.nnz(), values.len())?;
        Ok(Csr {
            pattern,
            values: aligned_from_slice(values),
        })
    }

    /// A matrix with the given pattern and every value zero.
    pub fn zeros(pattern: Arc<CsrPattern>) -> Self {
        let values = aligned_zeros(pattern.nnz());
        Csr { pattern, values }
    }

    /// Builds a checked matrix from raw CSR arrays.
    pub fn from_parts(
        nrows: usize,
        ncols: usize,
        row_ptr: Vec<u32>,
        col_idx: Vec<u32>,
        values: &[f32],
    ) -> Result<Self> {
        let pattern = CsrPattern::new(nrows, ncols, row_ptr, col_idx)?;
        Self::new(Arc::new(pattern), values)
    }

    /// Keeps the nonzero entries of a dense row-major `nrows × ncols` matrix.
    pub fn from_dense(dense: &[f32], nrows: usize, ncols: usize) -> Result<Self> {
        check_len("dense matrix", nrows.saturating_mul(ncols), dense.len())?;
        let mut row_ptr = Vec::with_capacity(nrows + 1);
        let mut col_idx = Vec::new();
        let mut values = Vec::new();
        row_ptr.push(0u32);
        for i in 0..nrows {
            for j in 0..ncols {
                let v = dense[i * ncols + j];
                if v != 0.0 {
                    col_idx.push(j as u32);
                    values.push(v);
                }
            }
            check_u32("nnz", col_idx.len())?;
            row_ptr.push(col_idx.len() as u32);
        }
        Self::from_parts(nrows, ncols, row_ptr, col_idx, &values)
    }

    /// The dense row-major matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let p = &*self.pattern;
        let mut dense = vec![0.0; p.nrows() * p.ncols()];
        for i in 0..p.nrows() {
            for k in p.row_range(i) {
                dense[i * p.ncols() + p.col_idx()[k] as usize] = self.values[k];
            }
        }
        dense
    }

    /// The structure.
    pub fn pattern(&self) -> &CsrPattern {
        &self.pattern
    }
    /// The shared handle to the structure.
    pub fn pattern_arc(&self) -> &Arc<CsrPattern> {
        &self.pattern
    }
    /// One value per live entry, aligned with the pattern.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
    /// Mutable values (the pattern cannot change through this).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
    /// Number of rows.
    pub fn nrows(&self) -> usize {
        self.pattern.nrows()
    }
    /// Number of columns.
    pub fn ncols(&self) -> usize {
        self.pattern.ncols()
    }
    /// Number of live entries.
    pub fn nnz(&self) -> usize {
        self.pattern.nnz()
    }
}
