//! # rewire
//!
//! A dynamic sparse training engine: networks that are sparse from the first step to the
//! last and are rewired while they train. Every sparse operation costs work in proportion
//! to the live connections, not to the dense layer.
//!
//! - [`sparse`]: CSR and block-sparse (BSR) formats, patterns kept apart from values;
//! - [`cpu`]: hand-written SIMD + rayon kernels (SpMM, transposed SpMM, SDDMM, BSR SpMM)
//!   beside their scalar references, and the dense `gemm` baseline;
//! - [`bench`](mod@bench): sparse-vs-dense kernel benchmarks measured in one run;
//! - [`autograd`]: a reverse-mode tape whose sparse weight gradients exist only on live
//!   connections (linear, activations, dropout, softmax CE, im2col, pooling, batch norm);
//! - [`nn`]: parameters, layer distributions (uniform, ER, ERK), MLPs and CNNs behind the
//!   [`nn::Model`] trait; [`optim`]: SGD and Adam with per-live-weight state;
//! - [`dst`]: the rewiring engine and its methods (static, SET, RigL, DSR, gradual
//!   magnitude pruning, prune-then-finetune); [`train`]: the loop, reports, comparisons;
//! - [`data`]: IDX files, MNIST / Fashion-MNIST, generated data, batching;
//! - `cuda` (feature `cuda`): the CUDA device, NVRTC-compiled kernels, GPU training;
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
pub mod io;
pub mod kernels;
pub mod nn;
pub mod optim;
pub mod sparse;
pub mod train;

pub use cpu::{Accum, Par};
pub use error::{Error, Result};
pub use sparse::{Bsr, BsrPattern, Csr, CsrPattern};
