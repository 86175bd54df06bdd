//! Sampled dense-dense product: `v[p] = α·⟨L[row(p), :], R[col(p), :]⟩ (+ β·v[p])` for
//! every live entry `p` of a CSR pattern. With `L = dZ` (`out × batch`) and `R = A`
//! (`in × batch`) this is the weight gradient of a sparse layer on its live connections
//! only.
//!
//! The loop nest, per thread (rows split into nnz-balanced parts):
//! - LOOP 4: blocks of `rb` rows (their rows of `L` stay in L2);
//! - LOOP 3: panels of `kb` columns of the pattern, i.e. `kb` rows of `R`, sized so that
//!   the panel and the block of `L` fit in L2 together — rows of `R` are read in random
//!   order, and from L3 they would starve the FMAs;
//! - LOOP 2: rows `i` of the block, resuming where the previous panel stopped (a cursor
//!   per row, on the stack);
//! - LOOP 1: the row's entries in the panel, eight at a time: eight dot products along
//!   `N`, one vector accumulator each (eight independent FMA chains), reduced together
//!   into one vector of eight results and stored with one write.

use wide::f32x8;

use super::simd::{finish8, load, LANES};
use super::{part_start, run_parts, Accum, Par, SendPtr};
use crate::error::{check_dims, check_len, Result};
use crate::sparse::CsrPattern;

const ROW_COST: usize = 1;
const MIN_TASK_WORK: usize = 1 << 15;
/// Bytes of L2 (per core) the blocking plans to fill.
const L2_BUDGET: usize = 320 * 1024;
/// Largest block of rows (the size of the on-stack cursor array).
const MAX_RB: usize = 256;

/// `values[p] = α·⟨L[row(p), :], R[col(p), :]⟩ (+ β·values[p])` for every live entry `p`
/// of `pattern` (`M×K`); `L` is `M×N` and `R` is `K×N`, both dense row-major.
#[allow(clippy::too_many_arguments)]
pub fn sddmm(
    values: &mut [f32],
    pattern: &CsrPattern,
    l: &[f32],
    r: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("sddmm values", pattern.nnz(), values.len())?;
    check_dims("sddmm L (M×N)", m, n, l.len())?;
    check_dims("sddmm R (K×N)", k, n, r.len())?;
    if m == 0 {
        return Ok(());
    }
    let row_ptr = pattern.row_ptr();
    let cols = pattern.col_idx();
    let nc = super::spmm::wide_panel(k, n);
    if nc > 0 {
        sddmm_wide(values, pattern, l, r, n, nc, alpha, accum, par);
        return Ok(());
    }
    let work = (pattern.nnz() + m * ROW_COST) * n.max(1);
    let out = SendPtr(values.as_mut_ptr());
    let (lp, rp) = (l.as_ptr() as usize, r.as_ptr() as usize);
    run_parts(par, work / MIN_TASK_WORK, |p, parts| {
        let r0 = part_start(row_ptr, ROW_COST, p, parts);
        let r1 = part_start(row_ptr, ROW_COST, p + 1, parts);
        // SAFETY: lengths checked above; each part writes only its rows' entries.
        unsafe {
            sddmm_rows(
                r0..r1,
                row_ptr,
                cols,
                lp as *const f32,
                rp as *const f32,
                n,
                k,
                out.get(),
                alpha,
                accum,
            )
        };
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn sddmm_rows(
    rows: std::ops::Range<usize>,
    row_ptr: &[u32],
    cols: &[u32],
    l: *const f32,
    r: *const f32,
    n: usize,
    k: usize,
    out: *mut f32,
    alpha: f32,
    accum: Accum,
) {
    let (rb, kb) = block_sizes(n, k);
    let mut cursor = [0usize; MAX_RB];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 + rb).min(rows.end);
        for i in r0..r1 {
            cursor[i - r0] = row_ptr[i] as usize;
        }
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + kb).min(k) as u32;
            for i in r0..r1 {
                let lrow = l.add(i * n);
                let end = row_ptr[i + 1] as usize;
                let mut p = cursor[i - r0];
                while p + LANES <= end && *cols.get_unchecked(p + LANES - 1) < k1 {
                    let rrows: [*const f32; LANES] =
                        std::array::from_fn(|g| r.add(*cols.get_unchecked(p + g) as usize * n));
                    finish8(out.add(p), dot8(lrow, rrows, n), alpha, accum);
                    p += LANES;
                }
                // the panel's last entries of the row: four, then one, at a time
                while p + 4 <= end && *cols.get_unchecked(p + 3) < k1 {
                    let rrows: [*const f32; 4] =
                        std::array::from_fn(|g| r.add(*cols.get_unchecked(p + g) as usize * n));
                    for (g, d) in dot_group(lrow, rrows, n).into_iter().enumerate() {
                        write(out.add(p + g), d, alpha, accum);
                    }
                    p += 4;
                }
                while p < end && *cols.get_unchecked(p) < k1 {
                    let rrow = r.add(*cols.get_unchecked(p) as usize * n);
                    let d = dot_group(lrow, [rrow], n)[0];
                    write(out.add(p), d, alpha, accum);
                    p += 1;
                }
                cursor[i - r0] = p;
            }
            k0 += kb;
        }
        r0 = r1;
    }
}

/// Scratch for the partial sums of the wide-`N` schedule, kept between calls.
static WIDE_SCRATCH: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// Ranges the wide-`N` schedule splits `N` into, whatever the thread count: the sums are
/// grouped the same way on any machine, so a run gives the same result with 1 thread or
/// 16 (up to this many threads share the work).
const WIDE_PARTS: usize = 8;

/// The wide-`N` schedule (a convolution's batch·H·W): `N` is split into up to
/// [`WIDE_PARTS`] contiguous ranges, and each range into column panels whose rows of `R`
/// fit L2; every entry's dot product is summed panel by panel. The first range
/// accumulates into `values`, the others into scratch that is added at the end in range
/// order, so `R` is read once and the rounding does not depend on the threads.
#[allow(clippy::too_many_arguments)]
fn sddmm_wide(
    values: &mut [f32],
    pattern: &CsrPattern,
    l: &[f32],
    r: &[f32],
    n: usize,
    nc: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) {
    let nnz = pattern.nnz();
    let panels = n.div_ceil(nc);
    let parts = WIDE_PARTS.min(panels).max(1);
    let run = |out: *mut f32, q0: usize, q1: usize, first: Accum| {
        for q in q0..q1 {
            let span = q * nc..((q + 1) * nc).min(n);
            let mode = if q == q0 { first } else { Accum::Add(1.0) };
            // SAFETY: dims checked by the caller; `out` holds `nnz` floats.
            unsafe {
                sddmm_panel(
                    pattern.row_ptr(),
                    pattern.col_idx(),
                    l.as_ptr(),
                    r.as_ptr(),
                    n,
                    span,
                    out,
                    alpha,
                    mode,
                )
            };
        }
    };
    if parts == 1 {
        run(values.as_mut_ptr(), 0, panels, accum);
        return;
    }
    // The shared scratch only when free: never wait for it. Its holder may be waiting
    // inside its own parallel section for a job queued behind this call on this very
    // thread (rayon runs other work while a thread waits), so waiting could deadlock; a
    // concurrent call takes a buffer of its own instead.
    let mut held = match WIDE_SCRATCH.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    let mut own = Vec::new();
    let buf: &mut Vec<f32> = match held.as_mut() {
        Some(g) => g,
        None => &mut own,
    };
    let need = (parts - 1) * nnz;
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let scratch = SendPtr(buf.as_mut_ptr());
    let out = SendPtr(values.as_mut_ptr());
    let bounds = |p: usize| p * panels / parts;
    let part = |p: usize| {
        let (dst, first) = if p == 0 {
            (out.get(), accum)
        } else {
            // SAFETY: part p owns scratch[(p−1)·nnz .. p·nnz].
            (unsafe { scratch.get().add((p - 1) * nnz) }, Accum::Replace)
        };
        run(dst, bounds(p), bounds(p + 1), first);
    };
    // the same parts on one thread or many: only who computes them changes
    if par.threads() == 1 {
        (0..parts).for_each(part);
    } else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(part);
    }
    for part in buf[..need].chunks(nnz.max(1)) {
        for (v, &s) in values.iter_mut().zip(part) {
            *v += s;
        }
    }
}

/// Dot products over the columns `span` of `L` and `R` for every entry of the pattern.
#[allow(clippy::too_many_arguments)]
unsafe fn sddmm_panel(
    row_ptr: &[u32],
    cols: &[u32],
    l: *const f32,
    r: *const f32,
    n: usize,
    span: std::ops::Range<usize>,
    out: *mut f32,
    alpha: f32,
    accum: Accum,
) {
    let (j0, w) = (span.start, span.end - span.start);
    for i in 0..row_ptr.len() - 1 {
        let lrow = l.add(i * n + j0);
        let (mut p, end) = (row_ptr[i] as usize, row_ptr[i + 1] as usize);
        while p + LANES <= end {
            let rrows: [*const f32; LANES] =
                std::array::from_fn(|g| r.add(*cols.get_unchecked(p + g) as usize * n + j0));
            finish8(out.add(p), dot8(lrow, rrows, w), alpha, accum);
            p += LANES;
        }
        while p < end {
            let rrow = r.add(*cols.get_unchecked(p) as usize * n + j0);
            write(out.add(p), dot_group(lrow, [rrow], w)[0], alpha, accum);
            p += 1;
        }
    }
}

/// Rows per block and `R` rows per panel for rows of `n` floats and `k` panel candidates:
/// a block of `L` rows (a third of the budget) and a panel of `R` rows (two thirds) stay
/// in L2 together while the block's entries in the panel are computed.
fn block_sizes(n: usize, k: usize) -> (usize, usize) {
    let row_bytes = (n * 4).max(4);
    let rb = (L2_BUDGET / 3 / row_bytes).clamp(8, MAX_RB);
    let kb = (L2_BUDGET * 2 / 3 / row_bytes).clamp(16, k.max(16));
    // panels of equal width: no thin last panel whose few entries per row miss the
    // eight-wide groups
    let kb = k.div_ceil(k.div_ceil(kb).max(1)).max(1);
    (rb, kb)
}

#[inline(always)]
unsafe fn write(dst: *mut f32, dot: f32, alpha: f32, accum: Accum) {
    super::simd::finish1(&mut *dst, dot, alpha, accum);
}

/// Eight dot products of `lrow` with the rows `rrows` (length `n`), one per lane: eight
/// independent FMA chains, one load of `L` per eight FMAs, and one reduction per eight
/// entries.
#[inline(always)]
unsafe fn dot8(lrow: *const f32, rrows: [*const f32; LANES], n: usize) -> f32x8 {
    #[cfg(not(feature = "avx512"))]
    let (mut acc, mut j) = ([f32x8::ZERO; LANES], 0);
    #[cfg(feature = "avx512")]
    let (mut acc, mut j) = dot8_x16(lrow, rrows, n);
    while j + LANES <= n {
        let lv = load(lrow.add(j));
        for (a, rrow) in acc.iter_mut().zip(rrows) {
            *a = lv.mul_add(load(rrow.add(j)), *a);
        }
        j += LANES;
    }
    let mut dots = reduce8(acc);
    if j < n {
        let tail: [f32; LANES] =
            std::array::from_fn(|g| (j..n).map(|jj| *lrow.add(jj) * *rrows[g].add(jj)).sum());
        dots += f32x8::from(tail);
    }
    dots
}

/// The `avx512` feature's start of [`dot8`]: the eight chains along `N` in 16-lane
/// vectors (one load and one FMA per 64 bytes where the build has AVX-512), folded to
/// eight lanes; returns them and the first column not yet summed.
#[cfg(feature = "avx512")]
#[inline(always)]
unsafe fn dot8_x16(
    lrow: *const f32,
    rrows: [*const f32; LANES],
    n: usize,
) -> ([f32x8; LANES], usize) {
    use wide::f32x16;
    let load16 = |p: *const f32| std::ptr::read_unaligned(p as *const f32x16);
    let mut acc = [f32x16::ZERO; LANES];
    let mut j = 0;
    while j + 16 <= n {
        let lv = load16(lrow.add(j));
        for (a, rrow) in acc.iter_mut().zip(rrows) {
            *a = lv.mul_add(load16(rrow.add(j)), *a);
        }
        j += 16;
    }
    let folded = acc.map(|a| {
        let [lo, hi] = bytemuck::cast::<f32x16, [f32x8; 2]>(a);
        lo + hi
    });
    (folded, j)
}

/// Lane `g` of the result is the sum of the lanes of `acc[g]`.
#[inline(always)]
fn reduce8(acc: [f32x8; LANES]) -> f32x8 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    {
        use std::arch::x86_64::{__m256, _mm256_add_ps, _mm256_hadd_ps, _mm256_permute2f128_ps};
        // SAFETY: f32x8 is a 32-byte, 32-aligned wrapper of one __m256 on AVX builds.
        unsafe {
            let a: [__m256; LANES] = std::mem::transmute(acc);
            let t0 = _mm256_hadd_ps(a[0], a[1]);
            let t1 = _mm256_hadd_ps(a[2], a[3]);
            let t2 = _mm256_hadd_ps(a[4], a[5]);
            let t3 = _mm256_hadd_ps(a[6], a[7]);
            let u0 = _mm256_hadd_ps(t0, t1); // [s0 s1 s2 s3 | s0' s1' s2' s3'] halves
            let u1 = _mm256_hadd_ps(t2, t3);
            let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
            let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
            std::mem::transmute::<__m256, f32x8>(_mm256_add_ps(lo, hi))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx")))]
    {
        f32x8::transpose(acc)
            .into_iter()
            .fold(f32x8::ZERO, |s, v| s + v)
    }
}

/// `G` dot products of `lrow` with the rows `rrows`, all of length `n`.
#[inline(always)]
unsafe fn dot_group<const G: usize>(
    lrow: *const f32,
    rrows: [*const f32; G],
    n: usize,
) -> [f32; G] {
    let mut acc0 = [f32x8::ZERO; G];
    let mut acc1 = [f32x8::ZERO; G];
    let mut j = 0;
    while j + 2 * LANES <= n {
        let l0 = load(lrow.add(j));
        let l1 = load(lrow.add(j + LANES));
        for g in 0..G {
            acc0[g] = l0.mul_add(load(rrows[g].add(j)), acc0[g]);
            acc1[g] = l1.mul_add(load(rrows[g].add(j + LANES)), acc1[g]);
        }
        j += 2 * LANES;
    }
    if j + LANES <= n {
        let l0 = load(lrow.add(j));
        for g in 0..G {
            acc0[g] = l0.mul_add(load(rrows[g].add(j)), acc0[g]);
        }
        j += LANES;
    }
    let mut dots = [0.0f32; G];
    for g in 0..G {
        let mut d = (acc0[g] + acc1[g]).reduce_add();
        for jj in j..n {
            d += *lrow.add(jj) * *rrows[g].add(jj);
        }
        dots[g] = d;
    }
    dots
}
