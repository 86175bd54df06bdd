//! Sparse formats: CSR and block-sparse (BSR), patterns kept apart from values,
//! conversions to and from dense, and seeded random patterns.

pub mod bsr;
pub mod csr;
pub mod random;

pub use bsr::{Bsr, BsrPattern};
pub use csr::{aligned_from_slice, aligned_zeros, AlignedVec, Csr, CsrPattern, CsrTranspose};
pub use random::{nnz_for_sparsity, seed_rng, skewed_row_nnz, SeedRng};
