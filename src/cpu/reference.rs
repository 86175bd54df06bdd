//! Scalar reference implementations: the test oracles of the SIMD kernels. Written for
//! clarity, accumulating in `f64`; never used on a hot path.
//!
//! Unlike the kernels they check, they do not validate operand lengths: each expects
//! the lengths its kernel checks, and panics (on an out-of-range index) where an
//! operand is too short. A longer output is written only in its leading part.

use super::Accum;
use crate::sparse::{BsrPattern, CsrPattern};

fn put(dst: &mut f32, acc: f64, alpha: f32, accum: Accum) {
    *dst = match accum {
        Accum::Add(beta) if beta != 0.0 => (alpha as f64 * acc + beta as f64 * *dst as f64) as f32,
        _ => (alpha as f64 * acc) as f32,
    };
}

/// Reference for [`spmm`](super::spmm()): `C = α·A·B (+ β·C)`.
#[allow(clippy::too_many_arguments)]
pub fn spmm_ref(
    c: &mut [f32],
    a: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
) {
    for i in 0..a.nrows() {
        for j in 0..n {
            let acc: f64 = a
                .row_range(i)
                .map(|p| values[p] as f64 * b[a.col_idx()[p] as usize * n + j] as f64)
                .sum();
            put(&mut c[i * n + j], acc, alpha, accum);
        }
    }
}

/// Reference for [`spmm_t`](super::spmm_t): `C = α·Aᵀ·B (+ β·C)`, straight from `A`'s
/// rows (no transposed pattern).
#[allow(clippy::too_many_arguments)]
pub fn spmm_t_ref(
    c: &mut [f32],
    a: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
) {
    let mut acc = vec![0.0f64; a.ncols() * n];
    for i in 0..a.nrows() {
        for p in a.row_range(i) {
            let k = a.col_idx()[p] as usize;
            for j in 0..n {
                acc[k * n + j] += values[p] as f64 * b[i * n + j] as f64;
            }
        }
    }
    for (dst, &s) in c.iter_mut().zip(&acc) {
        put(dst, s, alpha, accum);
    }
}

/// Reference for [`sddmm`](super::sddmm()).
#[allow(clippy::too_many_arguments)]
pub fn sddmm_ref(
    values: &mut [f32],
    a: &CsrPattern,
    l: &[f32],
    r: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
) {
    for i in 0..a.nrows() {
        for p in a.row_range(i) {
            let k = a.col_idx()[p] as usize;
            let acc: f64 = (0..n)
                .map(|j| l[i * n + j] as f64 * r[k * n + j] as f64)
                .sum();
            put(&mut values[p], acc, alpha, accum);
        }
    }
}

/// Reference for [`bsr_spmm`](super::bsr_spmm).
#[allow(clippy::too_many_arguments)]
pub fn bsr_spmm_ref(
    c: &mut [f32],
    a: &BsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
) {
    let (r, cc) = (a.block_r(), a.block_c());
    let blocks = a.blocks();
    for bi in 0..blocks.nrows() {
        for rr in 0..r {
            let i = bi * r + rr;
            for j in 0..n {
                let mut acc = 0.0f64;
                for blk in blocks.row_range(bi) {
                    let bc = blocks.col_idx()[blk] as usize;
                    for jj in 0..cc {
                        let v = values[blk * r * cc + rr * cc + jj] as f64;
                        acc += v * b[(bc * cc + jj) * n + j] as f64;
                    }
                }
                put(&mut c[i * n + j], acc, alpha, accum);
            }
        }
    }
}

/// Reference for [`gemm`](super::gemm): `C[M×N] = α·A[M×K]·B[K×N] (+ β·C)`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ref(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    accum: Accum,
) {
    for i in 0..m {
        for j in 0..n {
            let acc: f64 = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
            put(&mut c[i * n + j], acc, alpha, accum);
        }
    }
}

/// Calls `f(p, z, x)` for every live weight `p = (o, (c, i, j))` of a convolution's
/// weight and every output pixel whose window puts `(c, i, j)` inside the image, with the
/// offsets of the output vector `z` (`[out][OH][OW][B]`) and input vector `x`
/// (`[C][H][W][B]`) the weight joins.
fn conv_windows(
    a: &CsrPattern,
    geom: &crate::autograd::Conv2dGeom,
    batch: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let (oh, ow, kk) = (geom.out_h(), geom.out_w(), geom.kh * geom.kw);
    for o in 0..a.nrows() {
        for p in a.row_range(o) {
            let r = a.col_idx()[p] as usize;
            let (c, i, j) = (r / kk, r % kk / geom.kw, r % geom.kw);
            for oy in 0..oh {
                for ox in 0..ow {
                    let iy = (oy * geom.stride + i) as isize - geom.pad as isize;
                    let ix = (ox * geom.stride + j) as isize - geom.pad as isize;
                    if iy < 0 || ix < 0 || iy as usize >= geom.h || ix as usize >= geom.w {
                        continue;
                    }
                    let z = ((o * oh + oy) * ow + ox) * batch;
                    let x = ((c * geom.h + iy as usize) * geom.w + ix as usize) * batch;
                    f(p, z, x);
                }
            }
        }
    }
}

/// Reference for [`sparse_conv2d`](super::sparse_conv2d): `out = W · im2col(x)`.
pub fn sparse_conv2d_ref(
    out: &mut [f32],
    a: &CsrPattern,
    values: &[f32],
    x: &[f32],
    geom: crate::autograd::Conv2dGeom,
    batch: usize,
) {
    let mut acc = vec![0.0f64; a.nrows() * geom.out_h() * geom.out_w() * batch];
    conv_windows(a, &geom, batch, |p, z, xo| {
        for b in 0..batch {
            acc[z + b] += values[p] as f64 * x[xo + b] as f64;
        }
    });
    for (dst, &s) in out.iter_mut().zip(&acc) {
        put(dst, s, 1.0, Accum::Replace);
    }
}

/// Reference for [`sparse_conv2d_input_grad`](super::sparse_conv2d_input_grad):
/// `dx = col2im(Wᵀ · dz)` (+ β·dx).
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d_input_grad_ref(
    dx: &mut [f32],
    a: &CsrPattern,
    values: &[f32],
    dz: &[f32],
    geom: crate::autograd::Conv2dGeom,
    batch: usize,
    accum: Accum,
) {
    let mut acc = vec![0.0f64; geom.channels * geom.h * geom.w * batch];
    conv_windows(a, &geom, batch, |p, z, xo| {
        for b in 0..batch {
            acc[xo + b] += values[p] as f64 * dz[z + b] as f64;
        }
    });
    for (dst, &s) in dx.iter_mut().zip(&acc) {
        put(dst, s, 1.0, accum);
    }
}

/// Reference for [`sparse_conv2d_weight_grad`](super::sparse_conv2d_weight_grad): the
/// SDDMM of `dz` and `im2col(x)` on the live weights.
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d_weight_grad_ref(
    dv: &mut [f32],
    a: &CsrPattern,
    dz: &[f32],
    x: &[f32],
    geom: crate::autograd::Conv2dGeom,
    batch: usize,
    alpha: f32,
    accum: Accum,
) {
    let mut acc = vec![0.0f64; a.nnz()];
    conv_windows(a, &geom, batch, |p, z, xo| {
        for b in 0..batch {
            acc[p] += dz[z + b] as f64 * x[xo + b] as f64;
        }
    });
    for (dst, &s) in dv.iter_mut().zip(&acc) {
        put(dst, s, alpha, accum);
    }
}
