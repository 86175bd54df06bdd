//! Dense GEMM through the `gemm` crate: the kernel of dense layers and the baseline every
//! sparse kernel is measured against. A weak baseline would make every sparse speedup a
//! lie, so this is the fastest pure-Rust GEMM, called with row-major strides.

use super::{Accum, Par};
use crate::error::{check_dims, Result};

/// Whether an operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// use the matrix as stored
    No,
    /// use its transpose
    Yes,
}

/// `C[M×N] = α·A[M×K]·B[K×N] (+ β·C)`, all dense row-major.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    gemm_ex(c, a, Trans::No, b, Trans::No, m, k, n, alpha, accum, par)
}

/// `C[M×N] = α·op(A)·op(B) (+ β·C)` where `op(A)` is `M×K` and `op(B)` is `K×N`; each
/// operand is stored row-major as itself (`Trans::No`) or as its transpose (`Trans::Yes`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex(
    c: &mut [f32],
    a: &[f32],
    ta: Trans,
    b: &[f32],
    tb: Trans,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    check_dims("gemm A", m, k, a.len())?;
    check_dims("gemm B", k, n, b.len())?;
    check_dims("gemm C (M×N)", m, n, c.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        match accum {
            Accum::Add(beta) if beta != 0.0 => c.iter_mut().for_each(|x| *x *= beta),
            _ => c.fill(0.0),
        }
        return Ok(());
    }
    // (row stride, column stride) of op(X) for a row-major X.
    let strides = |t: Trans, rows: usize, cols: usize| match t {
        Trans::No => (cols as isize, 1isize),
        Trans::Yes => (1isize, rows as isize),
    };
    let (a_rs, a_cs) = strides(ta, m, k);
    let (b_rs, b_cs) = strides(tb, k, n);
    let (read_dst, beta) = match accum {
        Accum::Add(beta) if beta != 0.0 => (true, beta),
        _ => (false, 0.0),
    };
    let parallelism = match par {
        Par::Seq => gemm::Parallelism::None,
        Par::Rayon(t) => gemm::Parallelism::Rayon(t.max(1)),
    };
    // SAFETY: every pointer covers its operand (lengths checked above) and the strides
    // describe row-major storage of those lengths. `gemm` computes
    // dst = alpha·dst + beta·lhs·rhs, hence the swapped scalars.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
