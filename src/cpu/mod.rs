//! Hand-written CPU kernels: SIMD (`wide`, along the dense dimension `N`) and `rayon`
//! (over row blocks balanced by nnz), each beside the scalar reference that is its test
//! oracle. Every kernel has one signature shape: destination first, operands, an
//! explicit [`Accum`] mode, and an explicit [`Par`].

pub mod bsr;
pub mod conv;
pub mod dense;
pub mod reference;
pub mod sddmm;
mod simd;
pub mod spmm;

pub use bsr::bsr_spmm;
pub use conv::{sparse_conv2d, sparse_conv2d_input_grad, sparse_conv2d_weight_grad};
pub use dense::gemm;
pub use sddmm::sddmm;
pub use spmm::{spmm, spmm_bias_act, spmm_t, spmm_t_act_grad, RowAct};

use rayon::prelude::*;
use wide::f32x8;

/// The sum of `v` in a fixed order: eight lanes along `v`, their total, then the tail.
/// Bias gradients are these row sums (in the fused kernels and the separate pass alike,
/// so the two agree to the bit); eight independent chains instead of one keep it from
/// waiting on each addition.
pub fn row_sum(v: &[f32]) -> f32 {
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    let mut acc = f32x8::ZERO;
    for c in chunks {
        acc += f32x8::from(<[f32; 8]>::try_from(c).expect("chunks of eight"));
    }
    let mut sum = acc.reduce_add();
    for &t in tail {
        sum += t;
    }
    sum
}

/// The vector widths, in bits, the CPU kernels run at in this build on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorBits {
    /// the SpMM kernels' 64-column tiles (`spmm`, `spmm_t` and their fused forms) and
    /// SDDMM's dot products
    pub spmm_sddmm: u32,
    /// the other sparse kernels (BSR, the direct convolutions): 8-lane vectors
    pub other_sparse: u32,
    /// the dense `gemm`
    pub dense: u32,
}

/// [`VectorBits`] of this build on this machine. Everything is 256-bit on x86-64 with
/// AVX2 (`gemm` takes its FMA path); with the `avx512` feature the SpMM tiles, SDDMM and
/// `gemm` are 512-bit where the build target and the machine have AVX-512. 128 where `wide`
/// and `gemm` fall back to SSE or NEON.
pub fn vector_bits() -> VectorBits {
    let base = if cfg!(target_feature = "avx") {
        256
    } else {
        128
    };
    let spmm_sddmm = if cfg!(all(feature = "avx512", target_feature = "avx512f")) {
        512
    } else {
        base
    };
    #[cfg(target_arch = "x86_64")]
    let dense = if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
        512
    } else if std::arch::is_x86_feature_detected!("fma") {
        256
    } else {
        128
    };
    #[cfg(not(target_arch = "x86_64"))]
    let dense = 128;
    VectorBits {
        spmm_sddmm,
        other_sparse: base,
        dense,
    }
}

/// How a kernel uses threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// One thread, the caller's.
    Seq,
    /// Split the work for this many threads of the current rayon pool.
    Rayon(usize),
}

impl Par {
    /// All threads of the current rayon pool (sequential where that is one).
    pub fn current() -> Par {
        match rayon::current_num_threads() {
            0 | 1 => Par::Seq,
            n => Par::Rayon(n),
        }
    }

    /// Number of threads this setting asks for.
    pub fn threads(self) -> usize {
        match self {
            Par::Seq => 1,
            Par::Rayon(n) => n.max(1),
        }
    }
}

/// What a kernel does with the destination's previous contents.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Accum {
    /// `dst = α·op`; `dst` is never read (it may hold NaN).
    Replace,
    /// `dst = α·op + β·dst`; with `β = 0` it is `Replace` (`dst` not read, as in BLAS),
    /// in every kernel.
    Add(f32),
}

/// Pieces of work per thread: more than one, so that rayon can even out the tail.
const PARTS_PER_THREAD: usize = 4;

/// Runs `f(part, parts)` over `parts` pieces, in parallel where `par` allows.
pub(crate) fn run_parts(par: Par, parts_hint: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let parts = match par {
        Par::Seq => 1,
        Par::Rayon(n) => (n.max(1) * PARTS_PER_THREAD).min(parts_hint.max(1)),
    };
    if parts == 1 {
        f(0, 1);
    } else {
        (0..parts).into_par_iter().for_each(|p| f(p, parts));
    }
}

/// First row of part `p` of `parts` when the rows of `row_ptr` are split into pieces of
/// equal cost, a row costing its entries plus `row_cost`. No allocation: each part finds
/// its bounds by binary search.
pub(crate) fn part_start(row_ptr: &[u32], row_cost: usize, p: usize, parts: usize) -> usize {
    let nrows = row_ptr.len() - 1;
    if p == 0 {
        return 0;
    }
    if p >= parts {
        return nrows;
    }
    let cost = |r: usize| row_ptr[r] as u64 + (r * row_cost) as u64;
    let target = cost(nrows) * p as u64 / parts as u64;
    // first row r with cost(r) >= target
    let (mut lo, mut hi) = (0usize, nrows);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if cost(mid) < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A raw pointer that may cross threads; every user writes disjoint ranges through it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used to hand disjoint output ranges to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    #[inline(always)]
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
