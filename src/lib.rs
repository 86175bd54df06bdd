//! # rewire
//!
//! A dynamic sparse training engine: networks that are sparse from the first step to the
//! last and are rewired while they train. Every sparse operation costs work in proportion
//! to the live connections, not to the dense layer.
//!
//! - [`sparse`]: CSR and block-sparse (BSR) formats, patterns kept apart from values;
//! - [`cpu`]: hand-written SIMD + rayon kernels (SpMM, transposed SpMM, SDDMM, BSR SpMM)
//!   beside their scalar references, and the dense `gemm` baseline;
//! - [`bench`]: sparse-vs-dense kernel benchmarks measured in one run;
//! - [`kernels`]: the CUDA C sources embedded at build time.
//!
//! Activations are stored feature-major (`[features × batch]`, row-major), so every
//! sparse kernel vectorises along the batch dimension `N`.

#![warn(missing_docs)]

// The README's Rust examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod autograd;
pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod dst;
pub mod error;
pub mod kernels;
pub mod nn;
pub mod optim;
pub mod sparse;
pub mod train;

pub use cpu::{Accum, Par};
pub use error::{Error, Result};
pub use sparse::{Bsr, BsrPattern, Csr, CsrPattern};
