//! RigL's grow step on the device: the dense gradient `G = dZ·Xᵀ` through cuBLAS, then
//! the `k` largest `|G|` among the positions that are not live by radix selection
//! (`kernels/select.cu`), so that only the `k` chosen positions cross to the host.
//!
//! The choice is the CPU's ([`crate::dst::TapeScores`]): the largest magnitudes, ties
//! to the lower row-major position.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaDevice, GpuCsr};
use crate::error::{Error, Result};

/// Bits of the key fixed by each radix pass.
const RADIX_BITS: u32 = 8;

/// Of the bins of one radix pass (counts of the keys that share the bits fixed so far),
/// the bin that holds the `want`-th largest key, and how many keys of that bin are
/// still wanted after the keys of the higher bins. `None` where the bins hold fewer than
/// `want` keys.
pub(crate) fn radix_pick(hist: &[u32], want: u64) -> Option<(u32, u64)> {
    let mut want = want;
    for b in (0..hist.len()).rev() {
        let h = hist[b] as u64;
        if h >= want {
            return Some((b as u32, want));
        }
        want -= h;
    }
    None
}

/// The positions of the `k` largest keys (ties: lower position first) by the same radix
/// passes as the device, on the host: the reference the GPU selection is tested
/// against. Positions come back sorted.
pub fn radix_select_host(keys: &[u32], k: usize) -> Result<Vec<u32>> {
    let (thresh, take_ties) = radix_threshold(k, |prefix, mask, shift| {
        let mut hist = vec![0u32; 1 << RADIX_BITS];
        for &key in keys {
            if key & mask == prefix {
                hist[((key >> shift) & 255) as usize] += 1;
            }
        }
        Ok(hist)
    })?;
    let Some(thresh) = thresh else {
        return Ok(Vec::new());
    };
    let mut out: Vec<u32> = (0..keys.len() as u32)
        .filter(|&i| keys[i as usize] > thresh)
        .collect();
    out.extend(
        (0..keys.len() as u32)
            .filter(|&i| keys[i as usize] == thresh)
            .take(take_ties),
    );
    out.sort_unstable();
    Ok(out)
}

/// The `k`-th largest key and how many of the keys equal to it belong to the top `k`,
/// from the histograms `hist(prefix, mask, shift)` of four radix passes (`None` for
/// `k = 0`). An error where there are fewer than `k` keys above 0.
fn radix_threshold(
    k: usize,
    mut hist: impl FnMut(u32, u32, u32) -> Result<Vec<u32>>,
) -> Result<(Option<u32>, usize)> {
    if k == 0 {
        return Ok((None, 0));
    }
    let too_few = || {
        Error::Training(format!(
            "RigL grow: fewer free positions than the {k} connections to grow"
        ))
    };
    let (mut prefix, mut mask, mut want) = (0u32, 0u32, k as u64);
    for pass in 0..32 / RADIX_BITS {
        let shift = 32 - RADIX_BITS * (pass + 1);
        let h = hist(prefix, mask, shift)?;
        let (bin, left) = radix_pick(&h, want).ok_or_else(too_few)?;
        prefix |= bin << shift;
        mask |= 255 << shift;
        want = left;
    }
    if prefix == 0 {
        // key 0 marks a live position
        return Err(too_few());
    }
    Ok((Some(prefix), want as usize))
}

/// Device buffers of the grow step, kept between calls: the gradient buffer is remade
/// when the layer's size changes (the SGEMM wants its exact length), the others grow to
/// the largest layer seen.
#[derive(Default)]
pub struct GrowScratch {
    g: Option<CudaSlice<f32>>,
    keys: Option<CudaSlice<u32>>,
    ties: Option<CudaSlice<u32>>,
    above: Option<CudaSlice<u32>>,
    hist: Option<CudaSlice<u32>>,
    counts: Option<CudaSlice<u32>>,
}

/// `slot`, reallocated (zeroed) where it holds fewer than `len` elements.
fn at_least<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    dev: &CudaDevice,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|s| s.len() < len.max(1)) {
        *slot = Some(
            dev.stream()
                .alloc_zeros::<T>(len.max(1))
                .map_err(|e| cuda_err("allocating device memory", e))?,
        );
    }
    Ok(slot.as_mut().expect("allocated above"))
}

fn grid_stride(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// RigL's grow choice for a sparse layer on the device: the `k` positions `(row,
    /// col)` with the largest `|dZ·Xᵀ|` among those not live once the entries flagged
    /// in `dropped` are gone (ties: lower row-major position), sorted. `dz` is the
    /// layer's `out × n` output gradient, `x` its `in × n` input, `csr` its pattern on
    /// the device.
    #[allow(clippy::too_many_arguments)]
    pub fn rigl_grow(
        &self,
        scratch: &mut GrowScratch,
        csr: &GpuCsr,
        dz: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
        dropped: &[bool],
        k: usize,
    ) -> Result<Vec<(u32, u32)>> {
        let (out, fan_in) = (csr.nrows, csr.ncols);
        let len = out * fan_in;
        crate::error::check_len("RigL dropped flags", csr.nnz, dropped.len())?;
        if len > u32::MAX as usize {
            return Err(Error::arg(
                "rigl",
                format!("a {out}×{fan_in} layer has more positions than the GPU grow step indexes (2³²)"),
            ));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        // G = dZ · Xᵀ (out × in); the SGEMM wants a buffer of exactly out × in
        if scratch.g.as_ref().is_none_or(|g| g.len() != len) {
            scratch.g = Some(self.zeros(len)?);
        }
        let g = scratch.g.as_mut().expect("allocated above");
        self.sgemm(g, dz, x, (out, n, fan_in), (false, true), 1.0, 0.0)?;
        let g = scratch.g.as_ref().expect("allocated above");
        let keys = at_least(self, &mut scratch.keys, len)?;
        let len64 = len as u64;
        let launch_err = |what: &str, e| cuda_err(&format!("launching {what}"), e);
        {
            let f = self.function("rigl_keys_f32")?;
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&len64).arg(g).arg(&mut *keys);
            // SAFETY: the signature of rigl_keys_f32; both buffers hold ≥ len elements.
            unsafe { launch.launch(grid_stride(len)) }.map_err(|e| launch_err("rigl_keys", e))?;
        }
        {
            let keep: Vec<u32> = dropped.iter().map(|&d| u32::from(!d)).collect();
            let keep = self.upload(&keep)?;
            let f = self.function("rigl_mask_live_u32")?;
            let (rows, cols) = (out as u32, fan_in as u32);
            let mut launch = self.stream().launch_builder(&f);
            launch
                .arg(&rows)
                .arg(&cols)
                .arg(&csr.fwd.row_ptr)
                .arg(&csr.fwd.col_idx)
                .arg(&keep)
                .arg(&mut *keys);
            let cfg = LaunchConfig {
                grid_dim: (out.clamp(1, 65_535) as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the signature of rigl_mask_live_u32; the pattern's arrays, one keep
            // flag per entry, keys of out × in.
            unsafe { launch.launch(cfg) }.map_err(|e| launch_err("rigl_mask_live", e))?;
        }
        let keys = scratch.keys.as_ref().expect("allocated above");
        let hist = at_least(self, &mut scratch.hist, 1 << RADIX_BITS)?;
        let f = self.function("radix_hist_u32")?;
        let (thresh, take_ties) = radix_threshold(k, |prefix, mask, shift| {
            self.stream()
                .memset_zeros(&mut *hist)
                .map_err(|e| cuda_err("zeroing device memory", e))?;
            let mut launch = self.stream().launch_builder(&f);
            launch
                .arg(&len64)
                .arg(keys)
                .arg(&prefix)
                .arg(&mask)
                .arg(&shift)
                .arg(&mut *hist);
            // SAFETY: the signature of radix_hist_u32; hist holds 256 counters.
            unsafe { launch.launch(grid_stride(len)) }.map_err(|e| launch_err("radix_hist", e))?;
            self.stream()
                .clone_dtoh(&hist.slice(0..1 << RADIX_BITS))
                .map_err(|e| cuda_err("copying from the device", e))
        })?;
        let Some(thresh) = thresh else {
            return Ok(Vec::new());
        };
        let above = at_least(self, &mut scratch.above, k)?;
        let ties = at_least(self, &mut scratch.ties, len)?;
        let counts = at_least(self, &mut scratch.counts, 2)?;
        self.stream()
            .memset_zeros(&mut *counts)
            .map_err(|e| cuda_err("zeroing device memory", e))?;
        {
            let f = self.function("select_collect_u32")?;
            let mut launch = self.stream().launch_builder(&f);
            launch
                .arg(&len64)
                .arg(keys)
                .arg(&thresh)
                .arg(&mut *above)
                .arg(&mut *ties)
                .arg(&mut *counts);
            // SAFETY: the signature of select_collect_u32; fewer than k keys lie above
            // the k-th largest, at most len equal it.
            unsafe { launch.launch(grid_stride(len)) }
                .map_err(|e| launch_err("select_collect", e))?;
        }
        let dtoh = |buf: &CudaSlice<u32>, n: usize| -> Result<Vec<u32>> {
            if n == 0 {
                return Ok(Vec::new());
            }
            self.stream()
                .clone_dtoh(&buf.slice(0..n))
                .map_err(|e| cuda_err("copying from the device", e))
        };
        let c = dtoh(counts, 2)?;
        let (n_above, n_ties) = (c[0] as usize, c[1] as usize);
        if n_above + take_ties != k || n_ties < take_ties {
            return Err(Error::Cuda(format!(
                "RigL grow selection is inconsistent: {n_above} above the threshold and {n_ties} at it for k = {k} ({take_ties} ties wanted)"
            )));
        }
        let mut chosen = dtoh(above, n_above)?;
        if take_ties > 0 {
            let mut t = dtoh(ties, n_ties)?;
            t.sort_unstable();
            chosen.extend_from_slice(&t[..take_ties]);
        }
        chosen.sort_unstable();
        let cols = fan_in as u32;
        Ok(chosen.into_iter().map(|p| (p / cols, p % cols)).collect())
    }
}
