//! Seeded random sparsity patterns with an exact number of live entries, per matrix or
//! per row. The generator is xoshiro256++, so a seed gives the same pattern on every
//! platform and every run.

use rand::seq::index::sample;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::sparse::bsr::BsrPattern;
use crate::sparse::csr::{check_u32, CsrPattern};

/// The random number generator rewire uses wherever a seed is given.
pub type SeedRng = rand::rngs::Xoshiro256PlusPlus;

/// A generator seeded from `seed`.
pub fn seed_rng(seed: u64) -> SeedRng {
    SeedRng::seed_from_u64(seed)
}

/// Number of live entries of an `nrows × ncols` matrix at `sparsity` (rounded to nearest).
pub fn nnz_for_sparsity(nrows: usize, ncols: usize, sparsity: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(Error::arg(
            "sparsity",
            format!("must lie in [0, 1], got {sparsity}"),
        ));
    }
    let total = nrows as f64 * ncols as f64;
    Ok(((1.0 - sparsity) * total).round() as usize)
}

impl CsrPattern {
    /// A uniformly random pattern with exactly `nnz` live entries.
    pub fn random(nrows: usize, ncols: usize, nnz: usize, rng: &mut SeedRng) -> Result<Self> {
        // before `row_ptr` is allocated: a huge row count is an error, not an abort
        check_u32("nrows", nrows)?;
        check_u32("ncols", ncols)?;
        let total = nrows.checked_mul(ncols).ok_or(Error::TooLarge {
            what: "nrows * ncols",
            value: usize::MAX,
        })?;
        if nnz > total {
            return Err(Error::arg(
                "nnz",
                format!("{nnz} live entries do not fit in a {nrows}×{ncols} matrix"),
            ));
        }
        check_u32("nnz", nnz)?;
        let mut flat = sample(rng, total, nnz).into_vec();
        flat.sort_unstable();
        let mut row_ptr = vec![0u32; nrows + 1];
        let mut col_idx = Vec::with_capacity(nnz);
        for &f in &flat {
            row_ptr[f / ncols + 1] += 1;
            col_idx.push((f % ncols) as u32);
        }
        for i in 0..nrows {
            row_ptr[i + 1] += row_ptr[i];
        }
        Self::new(nrows, ncols, row_ptr, col_idx)
    }

    /// A random pattern with exactly `row_nnz[i]` live entries in row `i`, columns chosen
    /// uniformly.
    pub fn random_rows(ncols: usize, row_nnz: &[usize], rng: &mut SeedRng) -> Result<Self> {
        let nrows = row_nnz.len();
        if let Some((i, &k)) = row_nnz.iter().enumerate().find(|(_, &k)| k > ncols) {
            return Err(Error::arg(
                "row_nnz",
                format!("row {i} asks for {k} entries but has only {ncols} columns"),
            ));
        }
        let total: usize = row_nnz.iter().sum(); // each ≤ ncols, so no overflow in practice
        check_u32("nnz", total)?;
        let mut row_ptr = Vec::with_capacity(nrows + 1);
        row_ptr.push(0u32);
        let mut col_idx: Vec<u32> = Vec::with_capacity(total);
        for &k in row_nnz {
            let start = col_idx.len();
            col_idx.extend(sample(rng, ncols, k).into_iter().map(|c| c as u32));
            col_idx[start..].sort_unstable();
            check_u32("nnz", col_idx.len())?;
            row_ptr.push(col_idx.len() as u32);
        }
        Self::new(nrows, ncols, row_ptr, col_idx)
    }

    /// A random pattern with exactly `k` live entries in every row.
    pub fn random_per_row(nrows: usize, ncols: usize, k: usize, rng: &mut SeedRng) -> Result<Self> {
        Self::random_rows(ncols, &vec![k; nrows], rng)
    }
}

/// Row lengths for a skewed pattern: the first `frac_rows` of the rows hold `frac_nnz` of
/// the `nnz` entries (rows of very unequal length, for load-balance tests).
pub fn skewed_row_nnz(
    nrows: usize,
    ncols: usize,
    nnz: usize,
    frac_rows: f64,
    frac_nnz: f64,
) -> Result<Vec<usize>> {
    for (name, f) in [("frac_rows", frac_rows), ("frac_nnz", frac_nnz)] {
        if !(0.0..=1.0).contains(&f) {
            return Err(Error::arg(name, format!("must lie in [0, 1], got {f}")));
        }
    }
    if nrows == 0 && nnz > 0 {
        return Err(Error::arg(
            "nnz",
            format!("{nnz} entries cannot be spread over 0 rows"),
        ));
    }
    let heavy_rows = ((nrows as f64 * frac_rows).round() as usize).clamp(1, nrows.max(1));
    let light_rows = nrows - heavy_rows.min(nrows);
    let heavy_nnz = if light_rows == 0 {
        nnz
    } else {
        (nnz as f64 * frac_nnz).round() as usize
    };
    let split = |total: usize, rows: usize| -> Vec<usize> {
        (0..rows)
            .map(|i| total / rows + usize::from(i < total % rows))
            .collect()
    };
    let mut lengths = split(heavy_nnz, heavy_rows.min(nrows));
    lengths.extend(split(nnz - heavy_nnz, light_rows));
    if lengths.iter().any(|&k| k > ncols) {
        return Err(Error::arg(
            "sparsity",
            format!("a skewed pattern with {nnz} entries needs rows longer than {ncols}"),
        ));
    }
    Ok(lengths)
}

impl BsrPattern {
    /// A uniformly random pattern of exactly `nnzb` stored `r × c` blocks.
    pub fn random(
        block_rows: usize,
        block_cols: usize,
        r: usize,
        c: usize,
        nnzb: usize,
        rng: &mut SeedRng,
    ) -> Result<Self> {
        let blocks = CsrPattern::random(block_rows, block_cols, nnzb, rng)?;
        Self::from_block_pattern(blocks, r, c)
    }
}
