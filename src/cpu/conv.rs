//! Direct sparse convolution: the three products of a convolution layer with a sparse
//! weight `W[out × C·kh·kw]`, computed straight from the image batch, with no im2col
//! matrix in between.
//!
//! With feature-major images (`[C][H][W][B]`, the batch innermost) a column of the
//! im2col matrix at output pixel `(oy, ox)` and weight column `(c, i, j)` is the batch
//! vector `x[c][oy·s+i−pad][ox·s+j−pad][:]`, which already lies contiguous in the input.
//! So each output vector `out[o][oy][ox][:]` is a weighted sum of input vectors, one per
//! live weight of row `o` whose window position falls inside the image: an SpMM whose
//! "rows of B" are addressed by pixel arithmetic instead of being copied out. The same
//! holds for the input gradient (on the transposed pattern) and for the weight gradient
//! (an SDDMM whose dot products run over the pixels and the batch).
//!
//! The im2col matrix of a 64-channel 3×3 layer on 28×28 images is nine times the image
//! batch (116 MB at batch 64): writing, reading and scattering it back dominated the
//! sparse layer. Here the forward pass and the input gradient run, per thread,
//! - LOOP 4: the thread's output rows `y` (image rows are split over the threads, so that
//!   every channel of a thread reuses the input it fetched), [`TILE_Y`] at a time, each
//!   channel's live weights filtered to the window rows inside the image once per row;
//! - LOOP 3: tiles of [`TILE`] output pixels along the rows, so that the input patch a
//!   tile reads — every channel's rows over `TILE + kw − 1` pixels — stays in L2 while
//!   all the channels use it;
//! - LOOP 2: the output channels (input channels for the input gradient) and rows;
//! - LOOP 1: the pixels of the tile: the weighted sum of source vectors along the batch,
//!   up to eight `f32x8` accumulators at a time, the source of a weight a few ahead
//!   prefetched. Pixels whose windows lie wholly inside the image take a path without
//!   bounds checks.
//!
//! The weight gradient gives each thread a range of output channels (a weight's
//! gradient is summed by one thread); for every output row and live weight it is one
//! dot product over the contiguous run of pixels (stride 1) and batch where the weight's
//! window position lies inside the image.
//!
//! Every output value is computed by one thread in a fixed order: results do not depend
//! on the number of threads.

use std::cell::RefCell;

use wide::f32x8;

use super::simd::{finish1, finish8, load, prefetch_span, LANES};
use super::{part_start, run_parts, Accum, Par, SendPtr};
use crate::autograd::Conv2dGeom;
use crate::error::{check_len, Error, Result};
use crate::sparse::CsrPattern;

/// Output pixels per tile along a row (LOOP 3). On the 64 → 64, 3×3, 28×28 layer at
/// 90%, batch 64 and 128, 2 threads, forward + input gradient: 8 × 2 pixels 28.4 and
/// 60.1 ms, against 28.0/56.4 (4 × 1), 31.9/66.9 (4 × 4), 31.2/68.3 (2 × 2), 30.1/64.6
/// (7 × 3), 31.0/60.3 (14 × 1), 38.1/62.6 (28 × 1): flat within the noise except
/// whole rows.
const TILE: usize = 8;
/// Output rows per tile (LOOP 4).
const TILE_Y: usize = 2;
/// Terms ahead whose source vector is prefetched: the taps of a row read scattered
/// vectors that the hardware prefetcher cannot follow.
const PREFETCH_AHEAD: usize = 4;
/// Per-row overhead in units of one live weight, for load balancing.
const ROW_COST: usize = 2;
/// Minimum multiply-adds worth a rayon task.
const MIN_TASK_WORK: usize = 1 << 15;

/// A live weight's window position decoded from its column `(c·kh + i)·kw + j`.
#[derive(Clone, Copy, Default)]
struct Tap {
    /// the channel's plane offset in the source, in floats
    plane: usize,
    /// kernel row
    i: usize,
    /// kernel column
    j: usize,
    /// index of the weight's value
    p: usize,
}

/// A live weight whose window row lies inside the image, for one output row: the
/// source vector for output column `x` starts at `base + (t / d)·batch` where
/// `t = x·sx + num`, when `t ≥ 0`, `d` divides `t` and `t / d < limit`.
#[derive(Clone, Copy, Default)]
struct RowTap {
    /// the weight (unused by the weight gradient)
    v: f32,
    /// offset of the source row, in floats
    base: isize,
    /// column offset of the tap (see above)
    num: isize,
    /// index of the weight's value (the weight gradient's output)
    p: usize,
}

/// A weight and the offset (floats) of the source vector it multiplies.
#[derive(Clone, Copy, Default)]
struct Term {
    v: f32,
    off: isize,
}

/// The column arithmetic of one direction (see [`RowTap`]), and the interior: the
/// output columns where every tap is valid with `d = 1` (empty otherwise).
#[derive(Clone, Copy)]
struct Cols {
    /// output columns
    n: usize,
    /// step of `t` per output column
    sx: usize,
    /// divisor of `t` (the stride, for the input gradient; else 1)
    d: usize,
    /// source columns
    limit: usize,
    /// `[lo, hi)`: the output columns where every tap is valid (only with `d = 1`)
    interior: (usize, usize),
}

impl Cols {
    fn new(n: usize, sx: usize, d: usize, limit: usize, num_min: isize, num_max: isize) -> Self {
        // every tap valid: inside the span of the smallest and of the largest `num`
        let interior = if d != 1 {
            (0, 0)
        } else {
            let (lo, hi) = (
                valid_span(num_min, sx, limit, n).0,
                valid_span(num_max, sx, limit, n).1,
            );
            (lo.min(hi), hi)
        };
        Cols {
            n,
            sx,
            d,
            limit,
            interior,
        }
    }

    /// The source index of tap `t` at column `x`, when valid.
    #[inline(always)]
    fn source(&self, t: &RowTap, x: usize) -> Option<usize> {
        let at = (x * self.sx) as isize + t.num;
        if at < 0 {
            return None;
        }
        let at = at as usize;
        if self.d == 1 {
            (at < self.limit).then_some(at)
        } else {
            (at.is_multiple_of(self.d) && at / self.d < self.limit).then_some(at / self.d)
        }
    }

    #[inline(always)]
    fn is_interior(&self, x: usize) -> bool {
        x >= self.interior.0 && x < self.interior.1
    }
}

/// Scratch kept per thread between calls, for one part of a kernel: its filtered row
/// taps and pixel terms.
#[derive(Default)]
struct Scratch {
    rows: Vec<RowTap>,
    starts: Vec<usize>,
    terms: Vec<Term>,
}

thread_local! {
    /// the decoded taps of the calls this thread starts
    static TAPS: RefCell<Vec<Tap>> = const { RefCell::new(Vec::new()) };
    /// the scratch of the parts this thread runs
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` on the thread's buffer in `key`, taken out of its cell while in use: a call
/// that starts while another is running on the same thread (rayon runs queued work
/// while a thread waits) gets a fresh buffer instead of a borrow panic.
fn with_local<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut buf = key.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let out = f(&mut buf);
    key.with(|c| *c.borrow_mut() = buf);
    out
}

/// Checks the operands shared by the three kernels (`names`: of the input-shaped and the
/// output-shaped operand); returns `(OH, OW)`.
fn check(
    what: &'static str,
    names: [&'static str; 2],
    pattern: &CsrPattern,
    geom: &Conv2dGeom,
    batch: usize,
    x_len: usize,
    z_len: usize,
) -> Result<(usize, usize)> {
    geom.validate()?;
    if pattern.ncols() != geom.patch_len() {
        return Err(Error::shape(
            "sparse conv2d",
            format!(
                "{what}: the weight has {} columns but a {}-channel {}×{} kernel needs {}",
                pattern.ncols(),
                geom.channels,
                geom.kh,
                geom.kw,
                geom.patch_len()
            ),
        ));
    }
    let (oh, ow) = (geom.out_h(), geom.out_w());
    check_len(names[0], geom.channels * geom.h * geom.w * batch, x_len)?;
    check_len(names[1], pattern.nrows() * oh * ow * batch, z_len)?;
    Ok((oh, ow))
}

/// Decodes every live weight's column into its window position (plane offsets for a
/// source of `h × w × batch` planes).
fn decode(pattern: &CsrPattern, geom: &Conv2dGeom, batch: usize, taps: &mut Vec<Tap>) {
    let kk = geom.kh * geom.kw;
    let plane = geom.h * geom.w * batch;
    taps.clear();
    taps.extend(pattern.col_idx().iter().enumerate().map(|(p, &r)| {
        let r = r as usize;
        Tap {
            plane: r / kk * plane,
            i: r % kk / geom.kw,
            j: r % geom.kw,
            p,
        }
    }));
}

/// Appends the taps of one weight row (`taps`, decoded by [`decode`]) whose window row
/// lies inside the image at output row `oy`, each with the weight `value(p)` it
/// multiplies: the [`RowTap`]s of the forward pass and of the weight gradient.
fn row_taps(
    taps: &[Tap],
    oy: usize,
    geom: &Conv2dGeom,
    batch: usize,
    value: impl Fn(usize) -> f32,
    rows: &mut Vec<RowTap>,
) {
    let pad = geom.pad as isize;
    for t in taps {
        let iy = (oy * geom.stride + t.i) as isize - pad;
        if iy >= 0 && (iy as usize) < geom.h {
            rows.push(RowTap {
                v: value(t.p),
                base: (t.plane + iy as usize * geom.w * batch) as isize,
                num: t.j as isize - pad,
                p: t.p,
            });
        }
    }
}

/// `out[o][oy][ox][b] = Σ W[o, (c, i, j)] · x[c][oy·s + i − pad][ox·s + j − pad][b]` over
/// the live weights of row `o` whose window position lies inside the image: the
/// forward pass of a convolution with a sparse weight `W[out × C·kh·kw]` (`pattern` +
/// `values`), equal to `W · im2col(x)`. `x` is `[C][H][W][B]`, `out` is `[out][OH][OW][B]`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d(
    out: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    x: &[f32],
    geom: Conv2dGeom,
    batch: usize,
    par: Par,
) -> Result<()> {
    check_len("sparse conv2d weight values", pattern.nnz(), values.len())?;
    let (oh, ow) = check(
        "sparse conv2d",
        [
            "sparse conv2d input [C][H][W][B]",
            "sparse conv2d output [out][OH][OW][B]",
        ],
        pattern,
        &geom,
        batch,
        x.len(),
        out.len(),
    )?;
    if out.is_empty() {
        return Ok(());
    }
    let pad = geom.pad as isize;
    let cols = Cols::new(ow, geom.stride, 1, geom.w, -pad, geom.kw as isize - 1 - pad);
    let row_ptr = pattern.row_ptr();
    let work = (pattern.nnz() + pattern.nrows() * ROW_COST) * oh * ow * batch;
    with_local(&TAPS, |taps| {
        decode(pattern, &geom, batch, taps);
        let taps = &taps[..];
        let dst = SendPtr(out.as_mut_ptr());
        run_parts(par, (work / MIN_TASK_WORK).min(oh), |part, parts| {
            let ys = oh * part / parts..oh * (part + 1) / parts;
            let filter = |o: usize, oy: usize, rows: &mut Vec<RowTap>| {
                let row = &taps[row_ptr[o] as usize..row_ptr[o + 1] as usize];
                row_taps(row, oy, &geom, batch, |p| values[p], rows);
            };
            let dst_at = |o: usize, oy: usize, ox: usize| ((o * oh + oy) * ow + ox) * batch;
            with_local(&SCRATCH, |ps| {
                // SAFETY: lengths checked above; every tap that passes the filters
                // addresses a whole batch vector inside `x`; part `part` writes only
                // its output rows.
                unsafe {
                    gather_part(
                        ps,
                        pattern.nrows(),
                        ys.clone(),
                        &cols,
                        batch,
                        filter,
                        x.as_ptr(),
                        dst,
                        dst_at,
                        Accum::Replace,
                    )
                }
            });
        });
    });
    Ok(())
}

/// `dx[c][iy][ix][b] = Σ W[o, (c, i, j)] · dz[o][oy][ox][b]` (+ β·dx) over the live
/// weights and output pixels whose window put `(c, i, j)` on `(iy, ix)`: the input
/// gradient of [`sparse_conv2d`], equal to col2im(`Wᵀ · dz`), on the cached transposed
/// pattern. `dz` is `[out][OH][OW][B]`, `dx` is `[C][H][W][B]`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d_input_grad(
    dx: &mut [f32],
    pattern: &CsrPattern,
    values: &[f32],
    dz: &[f32],
    geom: Conv2dGeom,
    batch: usize,
    accum: Accum,
    par: Par,
) -> Result<()> {
    check_len("sparse conv2d weight values", pattern.nnz(), values.len())?;
    let (oh, ow) = check(
        "sparse conv2d input gradient",
        [
            "sparse conv2d input gradient [C][H][W][B]",
            "sparse conv2d output gradient [out][OH][OW][B]",
        ],
        pattern,
        &geom,
        batch,
        dx.len(),
        dz.len(),
    )?;
    if dx.is_empty() {
        return Ok(());
    }
    let t = pattern.transpose();
    let (trow, tcol, perm) = (t.pattern.row_ptr(), t.pattern.col_idx(), &t.perm[..]);
    let (kk, pad, s) = (geom.kh * geom.kw, geom.pad as isize, geom.stride);
    let cols = Cols::new(geom.w, 1, s, ow, pad - (geom.kw as isize - 1), pad);
    let work = (pattern.nnz() + pattern.ncols() * ROW_COST) * geom.h * geom.w * batch;
    let dst = SendPtr(dx.as_mut_ptr());
    let zplane = oh * ow * batch;
    run_parts(par, (work / MIN_TASK_WORK).min(geom.h), |part, parts| {
        let ys = geom.h * part / parts..geom.h * (part + 1) / parts;
        let filter = |c: usize, iy: usize, rows: &mut Vec<RowTap>| {
            for r in c * kk..(c + 1) * kk {
                let (i, j) = (r % kk / geom.kw, r % geom.kw);
                let at = iy as isize + pad - i as isize;
                if at < 0 || !(at as usize).is_multiple_of(s) || at as usize / s >= oh {
                    continue;
                }
                let oy = at as usize / s;
                for q in trow[r] as usize..trow[r + 1] as usize {
                    rows.push(RowTap {
                        v: values[perm[q] as usize],
                        base: (tcol[q] as usize * zplane + oy * ow * batch) as isize,
                        num: pad - j as isize,
                        p: q,
                    });
                }
            }
        };
        let dst_at = |c: usize, iy: usize, ix: usize| ((c * geom.h + iy) * geom.w + ix) * batch;
        with_local(&SCRATCH, |ps| {
            // SAFETY: lengths checked above; valid taps address whole batch vectors
            // inside `dz`; part `part` writes only its image rows.
            unsafe {
                gather_part(
                    ps,
                    geom.channels,
                    ys.clone(),
                    &cols,
                    batch,
                    filter,
                    dz.as_ptr(),
                    dst,
                    dst_at,
                    accum,
                )
            }
        });
    });
    Ok(())
}

/// `dv[p] = α·Σ ⟨dz[o][oy][ox][:], x[c][oy·s + i − pad][ox·s + j − pad][:]⟩ (+ β·dv[p])`
/// for every live weight `p = (o, (c, i, j))`, over the output pixels whose window
/// position lies inside the image: the weight gradient of [`sparse_conv2d`] on the live
/// connections only, equal to the SDDMM of `dz` and `im2col(x)`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_conv2d_weight_grad(
    dv: &mut [f32],
    pattern: &CsrPattern,
    dz: &[f32],
    x: &[f32],
    geom: Conv2dGeom,
    batch: usize,
    alpha: f32,
    accum: Accum,
    par: Par,
) -> Result<()> {
    check_len("sparse conv2d weight gradient", pattern.nnz(), dv.len())?;
    let (oh, ow) = check(
        "sparse conv2d weight gradient",
        [
            "sparse conv2d input [C][H][W][B]",
            "sparse conv2d output gradient [out][OH][OW][B]",
        ],
        pattern,
        &geom,
        batch,
        x.len(),
        dz.len(),
    )?;
    let row_ptr = pattern.row_ptr();
    let work = (pattern.nnz() + pattern.nrows() * ROW_COST) * oh * ow * batch;
    let out = SendPtr(dv.as_mut_ptr());
    with_local(&TAPS, |taps| {
        decode(pattern, &geom, batch, taps);
        let taps = &taps[..];
        run_parts(par, work / MIN_TASK_WORK, |part, parts| {
            let a0 = part_start(row_ptr, ROW_COST, part, parts);
            let a1 = part_start(row_ptr, ROW_COST, part + 1, parts);
            let (p0, p1) = (row_ptr[a0] as usize, row_ptr[a1] as usize);
            // SAFETY: the part owns the values of its rows, p0..p1.
            let dv = unsafe { std::slice::from_raw_parts_mut(out.get().add(p0), p1 - p0) };
            match accum {
                Accum::Add(beta) if beta != 0.0 => {
                    if beta != 1.0 {
                        dv.iter_mut().for_each(|v| *v *= beta);
                    }
                }
                _ => dv.fill(0.0),
            }
            if batch == 0 {
                return;
            }
            with_local(&SCRATCH, |ps| {
                let Scratch { rows, starts, .. } = ps;
                for oy in 0..oh {
                    rows.clear();
                    starts.clear();
                    for o in a0..a1 {
                        starts.push(rows.len());
                        let row = &taps[row_ptr[o] as usize..row_ptr[o + 1] as usize];
                        row_taps(row, oy, &geom, batch, |_| 0.0, rows);
                    }
                    starts.push(rows.len());
                    for (k, o) in (a0..a1).enumerate() {
                        let zrow = dz[((o * oh + oy) * ow) * batch..].as_ptr();
                        for t in &rows[starts[k]..starts[k + 1]] {
                            // the output columns where the tap's input column is inside
                            let (lo, hi) = valid_span(t.num, geom.stride, geom.w, ow);
                            let mut acc = [f32x8::ZERO; 4];
                            let mut tail = 0.0f32;
                            let at = |ox: usize| {
                                t.base + ((ox * geom.stride) as isize + t.num) * batch as isize
                            };
                            // SAFETY: the span's input and gradient vectors lie inside
                            // `x` and `dz`.
                            unsafe {
                                if geom.stride == 1 {
                                    // one contiguous run along the row and the batch
                                    dot_into(
                                        &mut acc,
                                        &mut tail,
                                        zrow.add(lo * batch),
                                        x.as_ptr().offset(at(lo)),
                                        (hi - lo) * batch,
                                    );
                                } else {
                                    for ox in lo..hi {
                                        dot_into(
                                            &mut acc,
                                            &mut tail,
                                            zrow.add(ox * batch),
                                            x.as_ptr().offset(at(ox)),
                                            batch,
                                        );
                                    }
                                }
                            }
                            let sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                            dv[t.p - p0] += alpha * (sum.reduce_add() + tail);
                        }
                    }
                }
            });
        });
    });
    Ok(())
}

/// The output columns `[lo, hi)` (of `n`) whose input column `x·stride + num` lies in
/// `0..limit`.
fn valid_span(num: isize, stride: usize, limit: usize, n: usize) -> (usize, usize) {
    let lo = if num < 0 {
        ((-num) as usize).div_ceil(stride)
    } else {
        0
    };
    let last = limit as isize - 1 - num;
    let hi = if last < 0 {
        0
    } else {
        (last as usize / stride + 1).min(n)
    };
    (lo.min(hi), hi)
}

/// Adds `⟨a[..n], b[..n]⟩` to four vector accumulators (eight-lane blocks in turn) and
/// a scalar tail.
#[inline(always)]
unsafe fn dot_into(acc: &mut [f32x8; 4], tail: &mut f32, a: *const f32, b: *const f32, n: usize) {
    let mut j = 0;
    while j + 4 * LANES <= n {
        for (q, a_q) in acc.iter_mut().enumerate() {
            let at = j + q * LANES;
            *a_q = load(a.add(at)).mul_add(load(b.add(at)), *a_q);
        }
        j += 4 * LANES;
    }
    while j + LANES <= n {
        acc[0] = load(a.add(j)).mul_add(load(b.add(j)), acc[0]);
        j += LANES;
    }
    while j < n {
        *tail += *a.add(j) * *b.add(j);
        j += 1;
    }
}

/// LOOPs 4–1 for the forward pass and the input gradient: for the rows `a` of a part,
/// every output vector `dst[dst_at(a, y, x)]` becomes the weighted sum of the source
/// vectors of `filter(a, y)`'s taps valid at column `x` (see [`RowTap`], [`Cols`]).
///
/// # Safety
/// Every valid tap must address `batch` readable floats at `src`, and `dst_at` give
/// `batch` writable floats owned by this part for every `(a, y, x)` of it.
#[allow(clippy::too_many_arguments)]
unsafe fn gather_part(
    s: &mut Scratch,
    na: usize,
    ys: std::ops::Range<usize>,
    cols: &Cols,
    batch: usize,
    filter: impl Fn(usize, usize, &mut Vec<RowTap>),
    src: *const f32,
    dst: SendPtr,
    dst_at: impl Fn(usize, usize, usize) -> usize,
    accum: Accum,
) {
    let Scratch {
        rows,
        starts,
        terms,
    } = s;
    let b = batch as isize;
    for y0 in ys.clone().step_by(TILE_Y) {
        let y1 = (y0 + TILE_Y).min(ys.end);
        rows.clear();
        starts.clear();
        for y in y0..y1 {
            for a in 0..na {
                starts.push(rows.len());
                filter(a, y, rows);
            }
        }
        starts.push(rows.len());
        for x0 in (0..cols.n).step_by(TILE) {
            let x1 = (x0 + TILE).min(cols.n);
            for a in 0..na {
                for y in y0..y1 {
                    let k = (y - y0) * na + a;
                    let taps = &rows[starts[k]..starts[k + 1]];
                    // interior columns: every tap valid, the offset linear in x
                    let fast = terms.len();
                    if cols.d == 1 {
                        terms.extend(taps.iter().map(|t| Term {
                            v: t.v,
                            off: t.base + t.num * b,
                        }));
                    }
                    for x in x0..x1 {
                        let out = dst.get().add(dst_at(a, y, x));
                        if cols.is_interior(x) {
                            let shift = (x * cols.sx) as isize * b;
                            weighted_sum(out, batch, src.offset(shift), &terms[fast..], accum);
                        } else {
                            let at = terms.len();
                            for t in taps {
                                if let Some(i) = cols.source(t, x) {
                                    terms.push(Term {
                                        v: t.v,
                                        off: t.base + i as isize * b,
                                    });
                                }
                            }
                            weighted_sum(out, batch, src, &terms[at..], accum);
                            terms.truncate(at);
                        }
                    }
                    terms.truncate(fast);
                }
            }
        }
    }
}

/// `dst[..n] = Σ v·src[off..off + n]` over `terms` (+ β·dst).
#[inline(always)]
unsafe fn weighted_sum(dst: *mut f32, n: usize, src: *const f32, terms: &[Term], accum: Accum) {
    let mut j = 0;
    while j + 8 * LANES <= n {
        block::<8>(dst.add(j), src.add(j), terms, accum);
        j += 8 * LANES;
    }
    if n - j >= 4 * LANES {
        block::<4>(dst.add(j), src.add(j), terms, accum);
        j += 4 * LANES;
    }
    if n - j >= 2 * LANES {
        block::<2>(dst.add(j), src.add(j), terms, accum);
        j += 2 * LANES;
    }
    if n - j >= LANES {
        block::<1>(dst.add(j), src.add(j), terms, accum);
        j += LANES;
    }
    while j < n {
        let mut acc = 0.0f32;
        for t in terms {
            acc += t.v * *src.offset(t.off).add(j);
        }
        finish1(&mut *dst.add(j), acc, 1.0, accum);
        j += 1;
    }
}

/// `V` vectors of [`weighted_sum`].
#[inline(always)]
unsafe fn block<const V: usize>(dst: *mut f32, src: *const f32, terms: &[Term], accum: Accum) {
    let mut acc = [f32x8::ZERO; V];
    for (k, t) in terms.iter().enumerate() {
        if let Some(ahead) = terms.get(k + PREFETCH_AHEAD) {
            prefetch_span(src.offset(ahead.off), V * LANES);
        }
        let w = f32x8::splat(t.v);
        let p = src.offset(t.off);
        for (q, a) in acc.iter_mut().enumerate() {
            *a = load(p.add(q * LANES)).mul_add(w, *a);
        }
    }
    for (q, a) in acc.into_iter().enumerate() {
        finish8(dst.add(q * LANES), a, 1.0, accum);
    }
}
