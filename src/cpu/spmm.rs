//! CSR × dense: `C[M×N] = α·A·B (+ β·C)` and, on the cached transposed pattern,
//! `C[K×N] = α·Aᵀ·B (+ β·C)`.
//!
//! The loop nest, per thread (rows split into nnz-balanced parts):
//! - LOOP 3: rows `i` of the part;
//! - LOOP 2: tiles of `8·W` columns of `N` (W = 8, 4, 2, 1 vectors, then a scalar tail);
//! - LOOP 1: the live entries `(i, k)` of row `i` — the k loop of a GEMM — broadcasting
//!   `A[i,k]` and accumulating `A[i,k]·B[k, tile]` into `W` vector registers, `U` sets
//!   of them in flight so that FMA latency never binds.

use wide::f32x8;

use super::simd::{finish1, finish8, gather8, gather_fits, load, store, sum_sets, LANES};
use super::{part_start, run_parts, Accum, Par, SendPtr};
use crate::error::{check_dims, check_len, Result};
use crate::sparse::CsrPattern;

/// Per-row overhead in units of one live entry, for load balancing.
const ROW_COST: usize = 2;
/// Entries ahead whose row of `B` is prefetched: rows of `B` are read in random order,
/// which the hardware prefetcher cannot follow.
const PREFETCH_AHEAD: usize = 8;

/// Most floats of that row prefetched per tile (two 64-byte lines): the tile loop is bound
/// by load issue, and the adjacent-line hardware prefetcher fetches the rest of a 64-column
/// tile. Measured against the full tile (four lines) on 2048² and 4096² at N = 128, two
/// threads: median speedup 4.64 vs 4.48 (90%), 1.41 vs 1.16 (80%), 15.5 vs 15.0 (98%).
const PREFETCH_FLOATS: usize = 32;

/// Minimum multiply-adds worth a rayon task.
const MIN_TASK_WORK: usize = 1 << 15;

/// `C[M×N] = α·A·B (+ β·C)`: `A` is `M×K` CSR (`pattern` + `values`), `B` is `K×N`
/// dense row-major, `C` is `M×N` dense row-major.
#[allow(clippy::too_many_arguments)]
pub fn spmm(
    c: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("spmm A values", pattern.nnz(), values.len())?;
    check_dims("spmm B (K×N)", k, n, b.len())?;
    check_dims("spmm C (M×N)", m, n, c.len())?;
    // SAFETY: lengths checked above; pattern invariants bound every index.
    unsafe { spmm_driver(c, pattern, &Direct(values), b, n, alpha, accum, &Plain, par) };
    Ok(())
}

/// The elementwise step [`spmm_bias_act`] applies to each output: one of the
/// piecewise-linear nonlinearities, which vectorise exactly as their scalar forms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowAct {
    /// `v`
    Identity,
    /// `max(v, 0)`
    Relu,
    /// `v` where positive, `slope·v` elsewhere
    LeakyRelu(f32),
}

impl RowAct {
    /// The nonlinearity at `v`.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            RowAct::Identity => v,
            RowAct::Relu => v.max(0.0),
            RowAct::LeakyRelu(a) => {
                if v > 0.0 {
                    v
                } else {
                    a * v
                }
            }
        }
    }

    /// The derivative at the input whose output is `y`.
    #[inline(always)]
    pub fn deriv_from_output(self, y: f32) -> f32 {
        match self {
            RowAct::Identity => 1.0,
            RowAct::Relu => {
                if y > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            RowAct::LeakyRelu(a) => {
                if y > 0.0 {
                    1.0
                } else {
                    a
                }
            }
        }
    }
}

/// `C[M×N] = act(A·B + bias)`, `bias[i]` added along row `i`: [`spmm`] with the bias add
/// and the nonlinearity applied as each output is written, so the output is written
/// once and never read back (a sparse layer's forward pass in one kernel). The values
/// are those of [`spmm`] followed by the bias add and `act`, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn spmm_bias_act(
    c: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    bias: &[f32],
    act: RowAct,
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("spmm_bias_act A values", pattern.nnz(), values.len())?;
    check_dims("spmm_bias_act B (K×N)", k, n, b.len())?;
    check_dims("spmm_bias_act C (M×N)", m, n, c.len())?;
    check_len("spmm_bias_act bias", m, bias.len())?;
    let epi = BiasAct { bias, act };
    // SAFETY: lengths checked above (bias holds a value per row); pattern invariants
    // bound every index.
    unsafe {
        spmm_driver(
            c,
            pattern,
            &Direct(values),
            b,
            n,
            1.0,
            Accum::Replace,
            &epi,
            par,
        )
    };
    Ok(())
}

/// What the kernel does to each output value `v` at row `i`, column `j` (already scaled
/// by `α`) before it is stored, and to each finished row.
trait Epilogue: Sync {
    /// whether the epilogue does nothing (then `Accum` modes apply as usual)
    const NONE: bool;
    /// outputs `j .. j + 8` of row `i`
    unsafe fn apply8(&self, i: usize, j: usize, v: f32x8) -> f32x8;
    /// output `j` of row `i`
    unsafe fn apply1(&self, i: usize, j: usize, v: f32) -> f32;
    /// row `i` is written (all of its columns: the row schedule only)
    #[inline(always)]
    unsafe fn row_done(&self, _i: usize, _row: *const f32) {}
}

/// Stores the products as they are.
struct Plain;

impl Epilogue for Plain {
    const NONE: bool = true;
    #[inline(always)]
    unsafe fn apply8(&self, _: usize, _: usize, v: f32x8) -> f32x8 {
        v
    }
    #[inline(always)]
    unsafe fn apply1(&self, _: usize, _: usize, v: f32) -> f32 {
        v
    }
}

/// `act(v + bias[i])`.
struct BiasAct<'a> {
    bias: &'a [f32],
    act: RowAct,
}

impl Epilogue for BiasAct<'_> {
    const NONE: bool = false;
    #[inline(always)]
    unsafe fn apply8(&self, i: usize, _: usize, v: f32x8) -> f32x8 {
        let v = v + f32x8::splat(*self.bias.get_unchecked(i));
        match self.act {
            RowAct::Identity => v,
            // max(v, 0) with 0 for NaN, as f32::max(v, 0.0)
            RowAct::Relu => v.fast_max(f32x8::ZERO),
            RowAct::LeakyRelu(a) => v.simd_gt(f32x8::ZERO).select(v, v * f32x8::splat(a)),
        }
    }
    #[inline(always)]
    unsafe fn apply1(&self, i: usize, _: usize, v: f32) -> f32 {
        self.act.apply(v + *self.bias.get_unchecked(i))
    }
}

/// `v·act'(y)` with `y` the activation at the same position, and each finished row's sum
/// into `sums`: the backward of [`spmm_bias_act`]'s nonlinearity and bias, applied as
/// the transposed product that feeds it is written.
struct ActGrad {
    /// the activations `[rows × n]`
    y: *const f32,
    n: usize,
    act: RowAct,
    /// one sum per row, each written by the thread that owns the row
    sums: *mut f32,
}

// SAFETY: `y` is only read; each row's sum is written by the one thread that owns the row.
unsafe impl Sync for ActGrad {}

impl ActGrad {
    #[inline(always)]
    fn deriv8(&self, y: f32x8) -> f32x8 {
        match self.act {
            RowAct::Identity => f32x8::ONE,
            RowAct::Relu => y.simd_gt(f32x8::ZERO).select(f32x8::ONE, f32x8::ZERO),
            RowAct::LeakyRelu(a) => y.simd_gt(f32x8::ZERO).select(f32x8::ONE, f32x8::splat(a)),
        }
    }
}

impl Epilogue for ActGrad {
    const NONE: bool = false;
    #[inline(always)]
    unsafe fn apply8(&self, i: usize, j: usize, v: f32x8) -> f32x8 {
        v * self.deriv8(load(self.y.add(i * self.n + j)))
    }
    #[inline(always)]
    unsafe fn apply1(&self, i: usize, j: usize, v: f32) -> f32 {
        v * self.act.deriv_from_output(*self.y.add(i * self.n + j))
    }
    #[inline(always)]
    unsafe fn row_done(&self, i: usize, row: *const f32) {
        *self.sums.add(i) = super::row_sum(std::slice::from_raw_parts(row, self.n));
    }
}

/// `C[K×N] = (Aᵀ·B) ⊙ act'(Y)` and `row_sums[r] = Σ_j C[r, j]` ([`row_sum`]): the
/// transposed product
/// that carries a gradient back into a layer `Y = act(W·X + b)` ([`spmm_bias_act`]),
/// with that layer's nonlinearity and bias gradient applied as it is written, so `C`
/// comes out as the layer's `dZ` and `row_sums` as its `db`. `Y` is `K×N`. The values
/// are those of [`spmm_t`] followed by the multiplication and [`row_sum`], bit for bit.
///
/// [`row_sum`]: super::row_sum
#[allow(clippy::too_many_arguments)]
pub fn spmm_t_act_grad(
    c: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    y: &[f32],
    act: RowAct,
    row_sums: &mut [f32],
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("spmm_t_act_grad A values", pattern.nnz(), values.len())?;
    check_dims("spmm_t_act_grad B (M×N)", m, n, b.len())?;
    check_dims("spmm_t_act_grad C (K×N)", k, n, c.len())?;
    check_dims("spmm_t_act_grad Y (K×N)", k, n, y.len())?;
    check_len("spmm_t_act_grad row sums", k, row_sums.len())?;
    if k == 0 {
        return Ok(());
    }
    if n == 0 || wide_panel(m, n) > 0 {
        // the wide-N schedule splits rows over threads by columns: no whole rows to sum
        spmm_t(c, pattern, values, b, n, 1.0, Accum::Replace, par)?;
        for (r, (row, sum)) in c.chunks_mut(n.max(1)).zip(row_sums.iter_mut()).enumerate() {
            for (v, &yv) in row.iter_mut().zip(&y[r * n..(r + 1) * n]) {
                *v *= act.deriv_from_output(yv);
            }
            *sum = super::row_sum(row);
        }
        if n == 0 {
            row_sums.fill(0.0);
        }
        return Ok(());
    }
    let t = pattern.transpose();
    let vals = Permuted {
        values,
        perm: &t.perm,
    };
    let epi = ActGrad {
        y: y.as_ptr(),
        n,
        act,
        sums: row_sums.as_mut_ptr(),
    };
    // SAFETY: lengths checked above; perm is a permutation of 0..nnz; y and row_sums hold
    // K·N and K floats; the row schedule gives each row to one thread.
    unsafe { spmm_driver(c, &t.pattern, &vals, b, n, 1.0, Accum::Replace, &epi, par) };
    Ok(())
}

/// `C[K×N] = α·Aᵀ·B (+ β·C)`: `A` is `M×K` CSR, `B` is `M×N`, `C` is `K×N`. Runs over the
/// transposed pattern cached in `pattern` (built on first use), so no atomics are needed.
#[allow(clippy::too_many_arguments)]
pub fn spmm_t(
    c: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    let (m, k) = (pattern.nrows(), pattern.ncols());
    check_len("spmm_t A values", pattern.nnz(), values.len())?;
    check_dims("spmm_t B (M×N)", m, n, b.len())?;
    check_dims("spmm_t C (K×N)", k, n, c.len())?;
    let t = pattern.transpose();
    let vals = Permuted {
        values,
        perm: &t.perm,
    };
    // SAFETY: perm is a permutation of 0..nnz, so every entry indexes `values`.
    unsafe { spmm_driver(c, &t.pattern, &vals, b, n, alpha, accum, &Plain, par) };
    Ok(())
}

/// Where the kernel finds the value of entry `p` of the pattern it walks.
trait EntryValues: Sync {
    /// value of entry `p`
    unsafe fn get(&self, p: usize) -> f32;
    /// values of entries `p .. p + 8`
    unsafe fn get8(&self, p: usize) -> f32x8;
}

/// Values stored in pattern order.
struct Direct<'a>(&'a [f32]);

impl EntryValues for Direct<'_> {
    #[inline(always)]
    unsafe fn get(&self, p: usize) -> f32 {
        *self.0.get_unchecked(p)
    }
    #[inline(always)]
    unsafe fn get8(&self, p: usize) -> f32x8 {
        load(self.0.as_ptr().add(p))
    }
}

/// Values of the transposed pattern: entry `q` holds `values[perm[q]]`.
struct Permuted<'a> {
    values: &'a [f32],
    perm: &'a [u32],
}

impl EntryValues for Permuted<'_> {
    #[inline(always)]
    unsafe fn get(&self, q: usize) -> f32 {
        *self
            .values
            .get_unchecked(*self.perm.get_unchecked(q) as usize)
    }
    #[inline(always)]
    unsafe fn get8(&self, q: usize) -> f32x8 {
        gather8(self.values.as_ptr(), self.perm.as_ptr().add(q), 1)
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn spmm_driver<E: EntryValues, P: Epilogue>(
    c: &mut [f32],
    pattern: &CsrPattern,
    val: &E,
    b: &[f32],
    n: usize,
    alpha: f32,
    accum: Accum,
    epi: &P,
    par: Par,
) {
    let m = pattern.nrows();
    if m == 0 || n == 0 {
        return;
    }
    let row_ptr = pattern.row_ptr();
    // 32-bit gather offsets must reach every row of B and every value.
    let gather_ok = gather_fits(pattern.ncols(), n) && gather_fits(pattern.nnz(), 1);
    let cp = SendPtr(c.as_mut_ptr());
    let bp = b.as_ptr() as usize;
    let nc = wide_panel(pattern.ncols(), n);
    if nc > 0 {
        // Wide N (a convolution's batch·H·W): column panels of B small enough for L2,
        // every row of A run against one panel before the next, panels over threads.
        let panels = n.div_ceil(nc);
        run_parts(par, panels, |p, parts| {
            for q in (p * panels / parts)..((p + 1) * panels / parts) {
                let j0 = q * nc;
                spmm_rows(
                    0..m,
                    row_ptr,
                    pattern.col_idx(),
                    val,
                    bp as *const f32,
                    n,
                    j0..(j0 + nc).min(n),
                    cp.get(),
                    alpha,
                    accum,
                    epi,
                    gather_ok,
                );
            }
        });
        return;
    }
    let work = (pattern.nnz() + m * ROW_COST) * n;
    run_parts(par, work / MIN_TASK_WORK, |p, parts| {
        let r0 = part_start(row_ptr, ROW_COST, p, parts);
        let r1 = part_start(row_ptr, ROW_COST, p + 1, parts);
        spmm_rows(
            r0..r1,
            row_ptr,
            pattern.col_idx(),
            val,
            bp as *const f32,
            n,
            0..n,
            cp.get(),
            alpha,
            accum,
            epi,
            gather_ok,
        );
    });
}

/// Bytes of L2 (per core) a panel of `B` may fill.
const PANEL_L2_BUDGET: usize = 320 * 1024;

/// Width of the column panels of the wide-`N` schedule for `k` rows of `B` of `n` columns,
/// or 0 where the row schedule is used: a panel is a multiple of 64 columns whose `k`
/// rows fit [`PANEL_L2_BUDGET`], and there must be at least four of them.
pub(crate) fn wide_panel(k: usize, n: usize) -> usize {
    let nc = PANEL_L2_BUDGET / (4 * k.max(1)) / 64 * 64;
    if nc >= 64 && n >= 4 * nc {
        nc
    } else {
        0
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn spmm_rows<E: EntryValues, P: Epilogue>(
    rows: std::ops::Range<usize>,
    row_ptr: &[u32],
    col_idx: &[u32],
    val: &E,
    b: *const f32,
    n: usize,
    span: std::ops::Range<usize>,
    c: *mut f32,
    alpha: f32,
    accum: Accum,
    epi: &P,
    gather_ok: bool,
) {
    let cols = col_idx.as_ptr();
    let jend = span.end;
    for i in rows {
        let (start, end) = (
            *row_ptr.get_unchecked(i) as usize,
            *row_ptr.get_unchecked(i + 1) as usize,
        );
        let crow = c.add(i * n);
        let mut j = span.start;
        while j + 64 <= jend {
            #[cfg(not(feature = "avx512"))]
            let acc = tile::<8, 1, E>(start, end, cols, val, b, n, j);
            #[cfg(feature = "avx512")]
            let acc = tile64_x16(start, end, cols, val, b, n, j);
            write_tile(crow, j, acc, alpha, accum, epi, i);
            j += 64;
        }
        if j + 32 <= jend {
            let acc = tile::<4, 2, E>(start, end, cols, val, b, n, j);
            write_tile(crow, j, acc, alpha, accum, epi, i);
            j += 32;
        }
        if j + 16 <= jend {
            let acc = tile::<2, 4, E>(start, end, cols, val, b, n, j);
            write_tile(crow, j, acc, alpha, accum, epi, i);
            j += 16;
        }
        if j + 8 <= jend {
            let acc = tile::<1, 4, E>(start, end, cols, val, b, n, j);
            write_tile(crow, j, acc, alpha, accum, epi, i);
            j += 8;
        }
        while j < jend {
            let acc = column(start, end, cols, val, b, n, j, gather_ok);
            if P::NONE {
                finish1(&mut *crow.add(j), acc, alpha, accum);
            } else {
                *crow.add(j) = epi.apply1(i, j, alpha * acc);
            }
            j += 1;
        }
        if !P::NONE && span.start == 0 && jend == n {
            epi.row_done(i, crow);
        }
    }
}

/// Accumulates `Σ_p val(p)·B[col(p), j .. j+8W]` over the entries `start..end` of a row.
#[inline(always)]
unsafe fn tile<const W: usize, const U: usize, E: EntryValues>(
    start: usize,
    end: usize,
    cols: *const u32,
    val: &E,
    b: *const f32,
    n: usize,
    j: usize,
) -> [f32x8; W] {
    let mut acc = [[f32x8::ZERO; W]; U];
    let mut p = start;
    while p + U <= end {
        if p + PREFETCH_AHEAD < end {
            let ahead = b.add(*cols.add(p + PREFETCH_AHEAD) as usize * n + j);
            super::simd::prefetch_span(ahead, (W * LANES).min(PREFETCH_FLOATS));
        }
        for (u, set) in acc.iter_mut().enumerate() {
            let brow = b.add(*cols.add(p + u) as usize * n + j);
            let v = f32x8::splat(val.get(p + u));
            for (w, a) in set.iter_mut().enumerate() {
                *a = v.mul_add(load(brow.add(w * LANES)), *a);
            }
        }
        p += U;
    }
    while p < end {
        let brow = b.add(*cols.add(p) as usize * n + j);
        let v = f32x8::splat(val.get(p));
        for (w, a) in acc[0].iter_mut().enumerate() {
            *a = v.mul_add(load(brow.add(w * LANES)), *a);
        }
        p += 1;
    }
    sum_sets(acc)
}

/// [`tile`]`::<8, 1>` (64 columns) in four 16-lane vectors, for the `avx512` feature:
/// one load and one FMA per 64 bytes of `B` where the build has AVX-512 (elsewhere
/// `wide` runs each as two 8-lane halves). Every lane sums the same products in the same
/// order as [`tile`]`::<8, 1>`, so the results agree bit for bit.
#[cfg(feature = "avx512")]
#[inline(always)]
unsafe fn tile64_x16<E: EntryValues>(
    start: usize,
    end: usize,
    cols: *const u32,
    val: &E,
    b: *const f32,
    n: usize,
    j: usize,
) -> [f32x8; 8] {
    use wide::f32x16;
    let mut acc = [f32x16::ZERO; 4];
    for p in start..end {
        if p + PREFETCH_AHEAD < end {
            let ahead = b.add(*cols.add(p + PREFETCH_AHEAD) as usize * n + j);
            super::simd::prefetch_span(ahead, PREFETCH_FLOATS);
        }
        let brow = b.add(*cols.add(p) as usize * n + j);
        let v = f32x16::splat(val.get(p));
        for (w, a) in acc.iter_mut().enumerate() {
            let bv = std::ptr::read_unaligned(brow.add(16 * w) as *const f32x16);
            *a = v.mul_add(bv, *a);
        }
    }
    let halves: [[f32x8; 2]; 4] = acc.map(bytemuck::cast::<f32x16, [f32x8; 2]>);
    std::array::from_fn(|w| halves[w / 2][w % 2])
}

/// Writes the tile at column `j` of row `i` (`crow`): `α·acc (+ β·dst)`, or `epi(α·acc)`
/// (`Replace` only).
#[inline(always)]
unsafe fn write_tile<const W: usize, P: Epilogue>(
    crow: *mut f32,
    j: usize,
    acc: [f32x8; W],
    alpha: f32,
    accum: Accum,
    epi: &P,
    i: usize,
) {
    for (w, a) in acc.into_iter().enumerate() {
        let jw = j + w * LANES;
        if P::NONE {
            finish8(crow.add(jw), a, alpha, accum);
        } else {
            store(crow.add(jw), epi.apply8(i, jw, a * f32x8::splat(alpha)));
        }
    }
}

/// One output column `j` (SpMV and the `N mod 8` tails). SpMV: eight scalar sums in
/// flight; tails: eight entries at a time, their values of `B` gathered, two vector sums
/// in flight.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn column<E: EntryValues>(
    start: usize,
    end: usize,
    cols: *const u32,
    val: &E,
    b: *const f32,
    n: usize,
    j: usize,
    gather_ok: bool,
) -> f32 {
    let bj = b.add(j);
    let (mut acc0, mut acc1) = (f32x8::ZERO, f32x8::ZERO);
    let mut p = start;
    if n == 1 {
        // SpMV: B is a vector, small enough to stay in cache; eight scalar chains beat
        // the gather here.
        let mut acc = [0.0f32; 8];
        while p + 8 <= end {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = val
                    .get(p + u)
                    .mul_add(*bj.add(*cols.add(p + u) as usize), *a);
            }
            p += 8;
        }
        let mut sum =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        while p < end {
            sum += val.get(p) * *bj.add(*cols.add(p) as usize);
            p += 1;
        }
        return sum;
    }
    if !gather_ok {
        let mut sum = 0.0;
        for q in start..end {
            sum += val.get(q) * *bj.add(*cols.add(q) as usize * n);
        }
        return sum;
    }
    while p + 2 * LANES <= end {
        acc0 = val.get8(p).mul_add(gather8(bj, cols.add(p), n), acc0);
        acc1 = val
            .get8(p + LANES)
            .mul_add(gather8(bj, cols.add(p + LANES), n), acc1);
        p += 2 * LANES;
    }
    if p + LANES <= end {
        acc0 = val.get8(p).mul_add(gather8(bj, cols.add(p), n), acc0);
        p += LANES;
    }
    let mut sum = (acc0 + acc1).reduce_add();
    while p < end {
        sum += val.get(p) * *bj.add(*cols.add(p) as usize * n);
        p += 1;
    }
    sum
}
