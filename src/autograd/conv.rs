//! Convolution-network ops on the tape: im2col (a convolution is `im2col` followed by a
//! dense or sparse [`Tape::linear`]), max and average pooling, reshape (flatten) and
//! batch normalisation.
//!
//! Layout: an image batch is feature-major like every activation, `[C][H][W][B]`
//! row-major, i.e. a `C × (H·W·B)` matrix (or, flattened, `(C·H·W) × B`; the same
//! memory). The im2col matrix of a `kh × kw` convolution is
//! `[C·kh·kw] × [OH·OW·B]`, so `W[out × C·kh·kw] · im2col` is `[out][OH][OW][B]`: the
//! next layer's input with no reshuffle, and per-channel ops (bias, batch norm) work on
//! its rows. Every inner loop runs along the batch, which is contiguous.

use rayon::prelude::*;

use super::{for_rows, Op, Tape, Var, PAR_ELEMENTWISE};
use crate::cpu::{sparse_conv2d, sparse_conv2d_input_grad, sparse_conv2d_weight_grad};
use crate::cpu::{Accum, Par};
use crate::error::{check_len, Error, Result};
use crate::nn::{ParamId, ParamShape, ParamStore};

/// Geometry of a 2-D convolution's input and kernel (channels first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    /// input channels
    pub channels: usize,
    /// input height
    pub h: usize,
    /// input width
    pub w: usize,
    /// kernel height
    pub kh: usize,
    /// kernel width
    pub kw: usize,
    /// step between windows (both directions)
    pub stride: usize,
    /// zero padding on every side
    pub pad: usize,
}

impl Conv2dGeom {
    /// Checks that the kernel fits the padded input and the stride is positive.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.kh == 0 || self.kw == 0 || self.stride == 0 {
            return Err(Error::arg(
                "conv2d",
                format!("channels, kernel and stride must be positive: {self:?}"),
            ));
        }
        // every size the layer derives must fit the kernels' u32 indices
        let padded = |side: usize| self.pad.checked_mul(2).and_then(|p| p.checked_add(side));
        let fits = |v: Option<usize>| v.is_some_and(|v| v <= u32::MAX as usize);
        if !(fits(padded(self.h))
            && fits(padded(self.w))
            && fits(
                self.channels
                    .checked_mul(self.kh)
                    .and_then(|v| v.checked_mul(self.kw)),
            )
            && fits(
                self.channels
                    .checked_mul(self.h)
                    .and_then(|v| v.checked_mul(self.w)),
            ))
        {
            return Err(Error::arg(
                "conv2d",
                format!("sizes beyond the u32 range of the kernels' indices: {self:?}"),
            ));
        }
        if self.kh > self.h + 2 * self.pad || self.kw > self.w + 2 * self.pad {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "a {}×{} kernel does not fit a {}×{} input padded by {}",
                    self.kh, self.kw, self.h, self.w, self.pad
                ),
            ));
        }
        Ok(())
    }
    /// Output height.
    /// (Meaningful for a geometry that [`Conv2dGeom::validate`] accepts.)
    pub fn out_h(&self) -> usize {
        (self.h.saturating_add(self.pad.saturating_mul(2))).saturating_sub(self.kh)
            / self.stride.max(1)
            + 1
    }
    /// Output width (meaningful for a geometry that [`Conv2dGeom::validate`] accepts).
    pub fn out_w(&self) -> usize {
        (self.w.saturating_add(self.pad.saturating_mul(2))).saturating_sub(self.kw)
            / self.stride.max(1)
            + 1
    }
    /// Rows of the im2col matrix: `channels·kh·kw`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.kh * self.kw
    }
}

/// Geometry of a 2-D pooling window over `channels × h × w` (no padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    /// channels
    pub channels: usize,
    /// input height
    pub h: usize,
    /// input width
    pub w: usize,
    /// window side
    pub k: usize,
    /// step between windows
    pub stride: usize,
}

impl Pool2dGeom {
    /// Checks that the window fits and the stride is positive.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || self.k == 0 || self.stride == 0 || self.k > self.h.min(self.w) {
            return Err(Error::arg(
                "pool2d",
                format!("the window must be positive and fit the input: {self:?}"),
            ));
        }
        Ok(())
    }
    /// Output height.
    /// (Meaningful for a geometry that [`Pool2dGeom::validate`] accepts.)
    pub fn out_h(&self) -> usize {
        self.h.saturating_sub(self.k) / self.stride.max(1) + 1
    }
    /// Output width (meaningful for a geometry that [`Pool2dGeom::validate`] accepts).
    pub fn out_w(&self) -> usize {
        self.w.saturating_sub(self.k) / self.stride.max(1) + 1
    }
}

/// Which reduction a pooling layer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// maximum of the window
    Max,
    /// mean of the window
    Avg,
}

/// Checks that node `x` holds `channels·h·w·batch` values and returns `batch`.
fn image_batch(tape: &Tape, x: Var, what: &'static str, per_sample: usize) -> Result<usize> {
    let node = tape.check_var(x)?;
    let len = node.rows * node.cols;
    if per_sample == 0 || len % per_sample != 0 {
        return Err(Error::shape(
            what,
            format!("{len} values are not a whole batch of {per_sample}-value images"),
        ));
    }
    Ok(len / per_sample)
}

impl Tape {
    /// The im2col matrix of `x` (`[C][H][W][B]`, any `rows × cols` split of it) for the
    /// convolution `geom`: `[C·kh·kw] × [OH·OW·B]`, zeros where a window reaches into the
    /// padding. Its gradient is scattered back (col2im) only when `x` needs one.
    pub fn im2col(&mut self, x: Var, geom: Conv2dGeom) -> Result<Var> {
        geom.validate()?;
        let batch = image_batch(self, x, "im2col", geom.channels * geom.h * geom.w)?;
        let rg = self.nodes[x.0].requires_grad;
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let cols = oh * ow * batch;
        let mut out = self.pool.take(geom.patch_len() * cols);
        let src = &self.nodes[x.0].value;
        for_rows(self.par, &mut out, cols, |r, row| {
            let (c, i, j) = (r / (geom.kh * geom.kw), r / geom.kw % geom.kh, r % geom.kw);
            for oy in 0..oh {
                let iy = (oy * geom.stride + i) as isize - geom.pad as isize;
                for ox in 0..ow {
                    let ix = (ox * geom.stride + j) as isize - geom.pad as isize;
                    let dst = &mut row[(oy * ow + ox) * batch..(oy * ow + ox + 1) * batch];
                    if iy < 0 || ix < 0 || iy as usize >= geom.h || ix as usize >= geom.w {
                        dst.fill(0.0);
                    } else {
                        let s = ((c * geom.h + iy as usize) * geom.w + ix as usize) * batch;
                        dst.copy_from_slice(&src[s..s + batch]);
                    }
                }
            }
        });
        Ok(self.push(
            geom.patch_len(),
            cols,
            out,
            Op::Im2col { x, geom, batch },
            rg,
        ))
    }

    /// The convolution `geom` of `x` (`[C][H][W][B]`) with the weight `w`
    /// (`[out × C·kh·kw]`): `[out] × [OH·OW·B]`, i.e. `[out][OH][OW][B]`. A sparse weight
    /// is applied directly to the image batch ([`crate::cpu::sparse_conv2d`]; no im2col
    /// matrix, backward included); a dense one through [`Tape::im2col`] and
    /// [`Tape::linear`]. Either way the result equals `W · im2col(x)`.
    pub fn conv2d(
        &mut self,
        params: &ParamStore,
        x: Var,
        w: ParamId,
        geom: Conv2dGeom,
    ) -> Result<Var> {
        if !matches!(params.try_get(w)?.shape, ParamShape::Sparse { .. }) {
            let col = self.im2col(x, geom)?;
            return self.linear(params, col, w);
        }
        geom.validate()?;
        let batch = image_batch(self, x, "conv2d", geom.channels * geom.h * geom.w)?;
        let p = self.use_param(params, w)?;
        let pattern = p.pattern().expect("a sparse weight has a pattern");
        if pattern.ncols() != geom.patch_len() {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "weight {} has {} columns but a {}-channel {}×{} kernel needs {}",
                    p.name,
                    pattern.ncols(),
                    geom.channels,
                    geom.kh,
                    geom.kw,
                    geom.patch_len()
                ),
            ));
        }
        let (out, cols) = (pattern.nrows(), geom.out_h() * geom.out_w() * batch);
        let mut z = self.pool.take(out * cols);
        let xv = &self.nodes[x.0].value;
        sparse_conv2d(&mut z, pattern, &p.value, xv, geom, batch, self.par)?;
        Ok(self.push(out, cols, z, Op::SparseConv2d { x, w, geom, batch }, true))
    }

    /// Max or average pooling of `x` (`[C][H][W][B]`): the result is
    /// `C × (OH·OW·B)`.
    pub fn pool2d(&mut self, x: Var, geom: Pool2dGeom, kind: PoolKind) -> Result<Var> {
        geom.validate()?;
        let batch = image_batch(self, x, "pool2d", geom.channels * geom.h * geom.w)?;
        let rg = self.nodes[x.0].requires_grad;
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let plane = oh * ow * batch;
        let in_plane = geom.h * geom.w * batch;
        let mut out = self.pool.take(geom.channels * plane);
        // window offset (i·k + j) of each maximum, exact in f32
        let mut arg = match kind {
            PoolKind::Max => Some(self.pool.take(geom.channels * plane)),
            PoolKind::Avg => None,
        };
        let src = &self.nodes[x.0].value;
        let inv = 1.0 / (geom.k * geom.k) as f32;
        let one = |c: usize, o: &mut [f32], a: Option<&mut [f32]>| {
            let s = &src[c * in_plane..(c + 1) * in_plane];
            let mut a = a;
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = (oy * ow + ox) * batch;
                    let dst = &mut o[at..at + batch];
                    for i in 0..geom.k {
                        for j in 0..geom.k {
                            let (iy, ix) = (oy * geom.stride + i, ox * geom.stride + j);
                            let v = &s[(iy * geom.w + ix) * batch..(iy * geom.w + ix + 1) * batch];
                            let first = i == 0 && j == 0;
                            match a.as_deref_mut() {
                                Some(a) => {
                                    let aw = &mut a[at..at + batch];
                                    let pos = (i * geom.k + j) as f32;
                                    for ((d, aw), &v) in dst.iter_mut().zip(aw).zip(v) {
                                        if first || v > *d {
                                            *d = v;
                                            *aw = pos;
                                        }
                                    }
                                }
                                None if first => dst.copy_from_slice(v),
                                None => dst.iter_mut().zip(v).for_each(|(d, &v)| *d += v),
                            }
                        }
                    }
                    if a.is_none() {
                        dst.iter_mut().for_each(|d| *d *= inv);
                    }
                }
            }
        };
        let parallel = matches!(self.par, Par::Rayon(t) if t > 1) && out.len() >= PAR_ELEMENTWISE;
        match (arg.as_mut(), parallel) {
            (Some(a), true) => out
                .par_chunks_mut(plane)
                .zip(a.par_chunks_mut(plane))
                .enumerate()
                .for_each(|(c, (o, a))| one(c, o, Some(a))),
            (Some(a), false) => out
                .chunks_mut(plane)
                .zip(a.chunks_mut(plane))
                .enumerate()
                .for_each(|(c, (o, a))| one(c, o, Some(a))),
            (None, true) => out
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(c, o)| one(c, o, None)),
            (None, false) => out
                .chunks_mut(plane)
                .enumerate()
                .for_each(|(c, o)| one(c, o, None)),
        }
        let v = self.push(
            geom.channels,
            plane,
            out,
            Op::Pool2d {
                x,
                geom,
                batch,
                kind,
            },
            rg,
        );
        self.nodes[v.0].aux = arg;
        Ok(v)
    }

    /// `x` viewed as `rows × cols` (a copy; its gradient passes straight back), e.g. the
    /// flatten from `C × (H·W·B)` to `(C·H·W) × B` before a linear layer.
    pub fn reshape(&mut self, x: Var, rows: usize, cols: usize) -> Result<Var> {
        let (len, rg) = {
            let node = self.check_var(x)?;
            (node.rows * node.cols, node.requires_grad)
        };
        if rows * cols != len {
            return Err(Error::shape(
                "reshape",
                format!("{len} values cannot be viewed as {rows}×{cols}"),
            ));
        }
        let mut out = self.pool.take(len);
        out.copy_from_slice(&self.nodes[x.0].value);
        Ok(self.push(rows, cols, out, Op::Reshape(x), rg))
    }

    /// Batch normalisation of each row of `x` (a channel: its values over batch and
    /// positions): `γ·(x − μ)/√(σ² + ε) + β`. With `running = None` the statistics are
    /// the batch's (training; read them with [`Tape::batch_norm_stats`]), otherwise the
    /// given running mean and variance (evaluation).
    pub fn batch_norm(
        &mut self,
        params: &ParamStore,
        x: Var,
        gamma: ParamId,
        beta: ParamId,
        eps: f32,
        running: Option<(&[f32], &[f32])>,
    ) -> Result<Var> {
        let (rows, n, rg) = {
            let node = self.check_var(x)?;
            (node.rows, node.cols, node.requires_grad)
        };
        let (g, b) = (
            &self.use_param(params, gamma)?.value,
            &self.use_param(params, beta)?.value,
        );
        check_len("batch norm gamma", rows, g.len())?;
        check_len("batch norm beta", rows, b.len())?;
        if eps.is_nan() || eps <= 0.0 {
            return Err(Error::arg(
                "batch_norm",
                format!("eps must be > 0, got {eps}"),
            ));
        }
        let xv = &self.nodes[x.0].value;
        let mut stats = self.pool.take(3 * rows);
        match running {
            Some((mean, var)) => {
                check_len("batch norm running mean", rows, mean.len())?;
                check_len("batch norm running variance", rows, var.len())?;
                stats[..rows].copy_from_slice(mean);
                stats[rows..2 * rows].copy_from_slice(var);
            }
            None => {
                if n == 0 {
                    return Err(Error::arg("batch_norm", "an empty batch has no statistics"));
                }
                // each row's mean and variance, rows over threads (one row's sums in a
                // fixed order whatever the threads)
                let row_stats = |r: usize, mean: &mut f32, var: &mut f32| {
                    let row = &xv[r * n..(r + 1) * n];
                    let m = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                    let v = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
                    (*mean, *var) = (m as f32, v as f32);
                };
                let (means, rest) = stats.split_at_mut(rows);
                let vars = &mut rest[..rows];
                if matches!(self.par, Par::Rayon(t) if t > 1) && rows * n >= PAR_ELEMENTWISE {
                    means
                        .par_iter_mut()
                        .zip(vars.par_iter_mut())
                        .enumerate()
                        .for_each(|(r, (m, v))| row_stats(r, m, v));
                } else {
                    for (r, (m, v)) in means.iter_mut().zip(vars.iter_mut()).enumerate() {
                        row_stats(r, m, v);
                    }
                }
            }
        }
        for r in 0..rows {
            stats[2 * rows + r] = 1.0 / (stats[rows + r] + eps).sqrt();
        }
        let mut xhat = self.pool.take(rows * n);
        let mut out = self.pool.take(rows * n);
        for_rows(self.par, &mut xhat, n, |r, h| {
            let (mean, inv) = (stats[r], stats[2 * rows + r]);
            for (h, &v) in h.iter_mut().zip(&xv[r * n..(r + 1) * n]) {
                *h = (v - mean) * inv;
            }
        });
        for_rows(self.par, &mut out, n, |r, o| {
            let (gr, br) = (g[r], b[r]);
            for (o, &h) in o.iter_mut().zip(&xhat[r * n..(r + 1) * n]) {
                *o = gr * h + br;
            }
        });
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            train: running.is_none(),
        };
        let v = self.push(rows, n, out, op, rg);
        self.nodes[v.0].aux = Some(xhat);
        self.nodes[v.0].stats = Some(stats);
        Ok(v)
    }

    /// The mean and (biased) variance per row that a [`Tape::batch_norm`] node used.
    pub fn batch_norm_stats(&self, v: Var) -> Option<(&[f32], &[f32])> {
        let node = self.nodes.get(v.0)?;
        if !matches!(node.op, Op::BatchNorm { .. }) {
            return None;
        }
        let rows = node.rows;
        let stats = node.stats.as_deref()?;
        Some((&stats[..rows], &stats[rows..2 * rows]))
    }

    /// col2im: scatters the gradient `g` of an im2col node back onto its input.
    pub(super) fn im2col_backward(&mut self, x: Var, geom: Conv2dGeom, batch: usize, g: &[f32]) {
        let Some((mut dx, mode)) = self.grad_target(x) else {
            return;
        };
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let cols = oh * ow * batch;
        let plane = geom.h * geom.w * batch;
        for_rows(self.par, &mut dx, plane, |c, dxc| {
            if mode == Accum::Replace {
                dxc.fill(0.0);
            }
            for i in 0..geom.kh {
                for j in 0..geom.kw {
                    let r = (c * geom.kh + i) * geom.kw + j;
                    let grow = &g[r * cols..(r + 1) * cols];
                    for oy in 0..oh {
                        let iy = (oy * geom.stride + i) as isize - geom.pad as isize;
                        if iy < 0 || iy as usize >= geom.h {
                            continue;
                        }
                        for ox in 0..ow {
                            let ix = (ox * geom.stride + j) as isize - geom.pad as isize;
                            if ix < 0 || ix as usize >= geom.w {
                                continue;
                            }
                            let d = (iy as usize * geom.w + ix as usize) * batch;
                            let s = (oy * ow + ox) * batch;
                            for (a, &b) in dxc[d..d + batch].iter_mut().zip(&grow[s..s + batch]) {
                                *a += b;
                            }
                        }
                    }
                }
            }
        });
        self.nodes[x.0].grad = Some(dx);
    }

    /// The backward of a [`Tape::conv2d`] with a sparse weight, given `dZ` (`g`): `dW` on
    /// the live connections (added to the parameter's gradient) and, where `x` needs one,
    /// `dX`, both straight from the image batch.
    pub(super) fn sparse_conv2d_backward(
        &mut self,
        x: Var,
        w: ParamId,
        geom: Conv2dGeom,
        batch: usize,
        g: &[f32],
        params: &mut ParamStore,
    ) -> Result<()> {
        let par = self.par;
        let p = params.get_mut(w);
        let pattern = p
            .pattern()
            .cloned()
            .expect("a sparse conv2d node records a sparse weight");
        let xv = &self.nodes[x.0].value;
        sparse_conv2d_weight_grad(
            &mut p.grad,
            &pattern,
            g,
            xv,
            geom,
            batch,
            1.0,
            Accum::Add(1.0),
            par,
        )?;
        if let Some((mut dx, mode)) = self.grad_target(x) {
            let wv = &params.get(w).value;
            sparse_conv2d_input_grad(&mut dx, &pattern, wv, g, geom, batch, mode, par)?;
            self.nodes[x.0].grad = Some(dx);
        }
        Ok(())
    }

    /// Routes the gradient `g` of a pooling node `i` back to its input.
    pub(super) fn pool2d_backward(
        &mut self,
        i: usize,
        x: Var,
        geom: Pool2dGeom,
        batch: usize,
        kind: PoolKind,
        g: &[f32],
    ) {
        let Some((mut dx, mode)) = self.grad_target(x) else {
            return;
        };
        let (oh, ow) = (geom.out_h(), geom.out_w());
        let plane = oh * ow * batch;
        let in_plane = geom.h * geom.w * batch;
        let arg = self.nodes[i].aux.as_deref();
        let inv = 1.0 / (geom.k * geom.k) as f32;
        for_rows(self.par, &mut dx, in_plane, |c, dxc| {
            if mode == Accum::Replace {
                dxc.fill(0.0);
            }
            let gc = &g[c * plane..(c + 1) * plane];
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = (oy * ow + ox) * batch;
                    match (kind, arg) {
                        (PoolKind::Max, Some(arg)) => {
                            let ac = &arg[c * plane + at..c * plane + at + batch];
                            for (b, (&gv, &pos)) in gc[at..at + batch].iter().zip(ac).enumerate() {
                                let pos = pos as usize;
                                let (iy, ix) = (
                                    oy * geom.stride + pos / geom.k,
                                    ox * geom.stride + pos % geom.k,
                                );
                                dxc[(iy * geom.w + ix) * batch + b] += gv;
                            }
                        }
                        _ => {
                            for i in 0..geom.k {
                                for j in 0..geom.k {
                                    let (iy, ix) = (oy * geom.stride + i, ox * geom.stride + j);
                                    let d = (iy * geom.w + ix) * batch;
                                    for (a, &gv) in
                                        dxc[d..d + batch].iter_mut().zip(&gc[at..at + batch])
                                    {
                                        *a += gv * inv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        self.nodes[x.0].grad = Some(dx);
    }

    /// Batch-norm backward for node `i`: `dγ`, `dβ` into the parameters and, where `x`
    /// needs it, `dx` (through the batch statistics when they were the batch's).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn batch_norm_backward(
        &mut self,
        i: usize,
        x: Var,
        gamma: ParamId,
        beta: ParamId,
        train: bool,
        g: &[f32],
        params: &mut ParamStore,
    ) {
        let (rows, n) = (self.nodes[i].rows, self.nodes[i].cols);
        let xhat = self.nodes[i].aux.as_deref().expect("batch norm keeps x̂");
        let mut sums = vec![(0.0f32, 0.0f32); rows];
        // Σ dy and Σ dy·x̂ per row, rows over threads (each row's sums in a fixed order)
        let row_sums = |r: usize, s: &mut (f32, f32)| {
            let (gr, hr) = (&g[r * n..(r + 1) * n], &xhat[r * n..(r + 1) * n]);
            *s = gr
                .iter()
                .zip(hr)
                .fold((0.0, 0.0), |(sg, sgh), (&gv, &h)| (sg + gv, sgh + gv * h));
        };
        if matches!(self.par, Par::Rayon(t) if t > 1) && rows * n >= PAR_ELEMENTWISE {
            sums.par_iter_mut()
                .enumerate()
                .for_each(|(r, s)| row_sums(r, s));
        } else {
            sums.iter_mut()
                .enumerate()
                .for_each(|(r, s)| row_sums(r, s));
        }
        for (r, &(sg, sgh)) in sums.iter().enumerate() {
            params.get_mut(gamma).grad[r] += sgh;
            params.get_mut(beta).grad[r] += sg;
        }
        let Some((mut dx, mode)) = self.grad_target(x) else {
            return;
        };
        let node = &self.nodes[i];
        let xhat = node.aux.as_deref().expect("batch norm keeps x̂");
        let gv = &params.get(gamma).value;
        let stats = node
            .stats
            .as_deref()
            .expect("batch norm keeps its statistics");
        let inv_std = &stats[2 * rows..3 * rows];
        let inv_n = 1.0 / n.max(1) as f32;
        for_rows(self.par, &mut dx, n, |r, d| {
            let scale = gv[r] * inv_std[r];
            let (sg, sgh) = sums[r];
            let (gr, hr) = (&g[r * n..(r + 1) * n], &xhat[r * n..(r + 1) * n]);
            for ((d, &gv), &h) in d.iter_mut().zip(gr).zip(hr) {
                let v = if train {
                    scale * (gv - inv_n * (sg + h * sgh))
                } else {
                    scale * gv
                };
                *d = if mode == Accum::Replace { v } else { *d + v };
            }
        });
        self.nodes[x.0].grad = Some(dx);
    }
}
