//! Block-sparse × dense: `C[M×N] = α·A·B (+ β·C)` with `A` in BSR (`r × c` blocks).
//!
//! Each stored block is a small dense GEMM, so the kernel is a GEMM micro-kernel whose
//! k loop runs over the blocks of a block row. Per thread (block rows split into
//! parts balanced by block count):
//! - LOOP 4: block rows `bi`;
//! - LOOP 3: tiles of `8·W` columns of `N`;
//! - LOOP 2: groups of 4 rows inside the block row (`r/4` of them);
//! - LOOP 1: the blocks of the block row and, inside each, its `c` columns: load `W`
//!   vectors of `B`, broadcast 4 block values, 4·W FMAs into registers that stay put
//!   for the whole block row (stored once at the end).
//!
//! 4×4, 8×8 and 16×16 blocks (and 1×1, 2×2, 4×8, 8×4) get kernels specialised at compile
//! time; any other block shape runs a generic loop.

use wide::f32x8;

use super::simd::{finish1, finish8, load, LANES};
use super::{part_start, run_parts, Accum, Par, SendPtr};
use crate::error::{check_dims, check_len, Result};
use crate::sparse::BsrPattern;

const MIN_TASK_WORK: usize = 1 << 15;
/// Rows of the register tile.
const RS: usize = 4;

/// `C[M×N] = α·A·B (+ β·C)`: `A` is `M×K` block-sparse (`pattern` + `values`, each block
/// row-major), `B` is `K×N` and `C` is `M×N`, dense row-major.
#[allow(clippy::too_many_arguments)]
pub fn bsr_spmm(
    c: &mut [f32],
    pattern: &BsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("bsr_spmm A values", pattern.nnz(), values.len())?;
    check_dims("bsr_spmm B (K×N)", k, n, b.len())?;
    check_dims("bsr_spmm C (M×N)", m, n, c.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let blocks = pattern.blocks();
    let row_ptr = blocks.row_ptr();
    let bcols = blocks.col_idx();
    let (r, cc) = (pattern.block_r(), pattern.block_c());
    let work = (pattern.nnz() + m) * n;
    let cp = SendPtr(c.as_mut_ptr());
    let (bp, vp) = (b.as_ptr() as usize, values.as_ptr() as usize);
    run_parts(par, work / MIN_TASK_WORK, |p, parts| {
        let rows = part_start(row_ptr, 1, p, parts)..part_start(row_ptr, 1, p + 1, parts);
        let args = Args {
            row_ptr,
            bcols,
            vals: vp as *const f32,
            b: bp as *const f32,
            n,
            c: cp.get(),
            alpha,
            accum,
        };
        // SAFETY: lengths checked above; parts write disjoint block rows of C.
        unsafe {
            match (r, cc) {
                (1, 1) => block_rows::<1, 1>(rows, &args),
                (2, 2) => block_rows::<2, 2>(rows, &args),
                (4, 4) => block_rows::<4, 4>(rows, &args),
                (4, 8) => block_rows::<4, 8>(rows, &args),
                (8, 4) => block_rows::<8, 4>(rows, &args),
                (8, 8) => block_rows::<8, 8>(rows, &args),
                (16, 16) => block_rows::<16, 16>(rows, &args),
                _ => block_rows_generic(rows, r, cc, &args),
            }
        }
    });
    Ok(())
}

struct Args<'a> {
    row_ptr: &'a [u32],
    bcols: &'a [u32],
    vals: *const f32,
    b: *const f32,
    n: usize,
    c: *mut f32,
    alpha: f32,
    accum: Accum,
}

#[inline(never)]
unsafe fn block_rows<const R: usize, const C: usize>(rows: std::ops::Range<usize>, a: &Args) {
    let n = a.n;
    for bi in rows {
        let (start, end) = (a.row_ptr[bi] as usize, a.row_ptr[bi + 1] as usize);
        let mut j = 0;
        while j + 3 * LANES <= n {
            row_tile::<R, C, 3>(bi, start, end, j, a);
            j += 3 * LANES;
        }
        if j + 2 * LANES <= n {
            row_tile::<R, C, 2>(bi, start, end, j, a);
            j += 2 * LANES;
        }
        if j + LANES <= n {
            row_tile::<R, C, 1>(bi, start, end, j, a);
            j += LANES;
        }
        if j < n {
            scalar_tail(bi, R, C, start, end, j, a);
        }
    }
}

/// Rows `bi·R .. bi·R+R`, columns `j .. j+8W` of `C`, in groups of `min(R, 4)` rows.
#[inline(always)]
unsafe fn row_tile<const R: usize, const C: usize, const W: usize>(
    bi: usize,
    start: usize,
    end: usize,
    j: usize,
    a: &Args,
) {
    let rs = if R < RS { R } else { RS };
    let mut sub = 0;
    while sub < R {
        let mut acc = [[f32x8::ZERO; W]; RS];
        for blk in start..end {
            let bc = *a.bcols.get_unchecked(blk) as usize;
            let v = a.vals.add(blk * R * C + sub * C);
            let brow = a.b.add(bc * C * a.n + j);
            for jj in 0..C {
                let bvec: [f32x8; W] =
                    std::array::from_fn(|w| load(brow.add(jj * a.n + w * LANES)));
                for (rr, row_acc) in acc.iter_mut().enumerate().take(rs) {
                    let s = f32x8::splat(*v.add(rr * C + jj));
                    for w in 0..W {
                        row_acc[w] = s.mul_add(bvec[w], row_acc[w]);
                    }
                }
            }
        }
        for (rr, row_acc) in acc.iter().enumerate().take(rs) {
            let dst = a.c.add((bi * R + sub + rr) * a.n + j);
            for (w, &v) in row_acc.iter().enumerate() {
                finish8(dst.add(w * LANES), v, a.alpha, a.accum);
            }
        }
        sub += rs;
    }
}

/// Columns `j..n` (fewer than 8) of block row `bi`.
unsafe fn scalar_tail(
    bi: usize,
    r: usize,
    c: usize,
    start: usize,
    end: usize,
    j0: usize,
    a: &Args,
) {
    for rr in 0..r {
        for j in j0..a.n {
            let mut acc = 0.0f32;
            for blk in start..end {
                let bc = *a.bcols.get_unchecked(blk) as usize;
                let v = a.vals.add(blk * r * c + rr * c);
                for jj in 0..c {
                    acc += *v.add(jj) * *a.b.add((bc * c + jj) * a.n + j);
                }
            }
            finish1(
                &mut *a.c.add((bi * r + rr) * a.n + j),
                acc,
                a.alpha,
                a.accum,
            );
        }
    }
}

/// Any block shape: one row and one vector of columns at a time.
#[inline(never)]
unsafe fn block_rows_generic(rows: std::ops::Range<usize>, r: usize, c: usize, a: &Args) {
    let n = a.n;
    for bi in rows {
        let (start, end) = (a.row_ptr[bi] as usize, a.row_ptr[bi + 1] as usize);
        for rr in 0..r {
            let mut j = 0;
            while j + LANES <= n {
                let mut acc = f32x8::ZERO;
                for blk in start..end {
                    let bc = *a.bcols.get_unchecked(blk) as usize;
                    let v = a.vals.add(blk * r * c + rr * c);
                    for jj in 0..c {
                        let bv = load(a.b.add((bc * c + jj) * n + j));
                        acc = f32x8::splat(*v.add(jj)).mul_add(bv, acc);
                    }
                }
                finish8(a.c.add((bi * r + rr) * n + j), acc, a.alpha, a.accum);
                j += LANES;
            }
        }
        if !n.is_multiple_of(LANES) {
            scalar_tail(bi, r, c, start, end, n - n % LANES, a);
        }
    }
}
