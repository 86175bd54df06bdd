//! Unaligned 8-lane loads/stores and the accumulate-mode write-back shared by the kernels.

use wide::f32x8;

use super::Accum;

/// Lanes of the SIMD vector.
pub(crate) const LANES: usize = 8;

/// Loads 8 floats from `p` (any alignment).
#[inline(always)]
pub(crate) unsafe fn load(p: *const f32) -> f32x8 {
    std::ptr::read_unaligned(p as *const f32x8)
}

/// Stores 8 floats at `p` (any alignment).
#[inline(always)]
pub(crate) unsafe fn store(p: *mut f32, v: f32x8) {
    std::ptr::write_unaligned(p as *mut f32x8, v)
}

/// Writes `α·acc` (+ `β·dst`) to the 8 floats at `dst`.
#[inline(always)]
pub(crate) unsafe fn finish8(dst: *mut f32, acc: f32x8, alpha: f32, accum: Accum) {
    let out = match accum {
        Accum::Add(beta) if beta != 0.0 => {
            acc.mul_add(f32x8::splat(alpha), load(dst) * f32x8::splat(beta))
        }
        _ => acc * f32x8::splat(alpha),
    };
    store(dst, out);
}

/// Writes `α·acc` (+ `β·dst`) to one float.
#[inline(always)]
pub(crate) fn finish1(dst: &mut f32, acc: f32, alpha: f32, accum: Accum) {
    *dst = match accum {
        Accum::Add(beta) if beta != 0.0 => alpha * acc + beta * *dst,
        _ => alpha * acc,
    };
}

/// Adds up `U` partial accumulator sets of `W` vectors.
#[inline(always)]
pub(crate) fn sum_sets<const W: usize, const U: usize>(acc: [[f32x8; W]; U]) -> [f32x8; W] {
    let mut out = acc[0];
    for set in acc.iter().skip(1) {
        for w in 0..W {
            out[w] += set[w];
        }
    }
    out
}

/// Asks for the cache lines holding `len` floats from `p` to be brought into L1.
#[inline(always)]
pub(crate) unsafe fn prefetch_span(p: *const f32, len: usize) {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_mm_prefetch, _MM_HINT_T0};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = p as *const i8;
        let mut off = 0;
        while off < len * 4 {
            _mm_prefetch::<_MM_HINT_T0>(bytes.wrapping_add(off));
            off += 64;
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    let _ = (p, len);
}

/// `[base[idx[0]·stride], …, base[idx[7]·stride]]`: an AVX2 gather where the build has
/// AVX2, eight scalar loads elsewhere.
///
/// # Safety
/// The eight indices at `idx` must be readable and every `idx[i]·stride` in bounds of
/// `base`; with AVX2, `idx[i]·stride` must also be below 2³¹ (callers check
/// [`gather_fits`]).
#[inline(always)]
pub(crate) unsafe fn gather8(base: *const f32, idx: *const u32, stride: usize) -> f32x8 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        use std::arch::x86_64::{
            _mm256_i32gather_ps, _mm256_loadu_si256, _mm256_mullo_epi32, _mm256_set1_epi32,
        };
        let mut i = _mm256_loadu_si256(idx as *const _);
        if stride != 1 {
            i = _mm256_mullo_epi32(i, _mm256_set1_epi32(stride as i32));
        }
        // SAFETY: f32x8 is a 32-byte, 32-aligned wrapper of one __m256 on AVX builds.
        std::mem::transmute::<std::arch::x86_64::__m256, f32x8>(_mm256_i32gather_ps::<4>(base, i))
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    {
        f32x8::from(std::array::from_fn::<f32, 8, _>(|l| {
            *base.add(*idx.add(l) as usize * stride)
        }))
    }
}

/// Whether every index below `rows` times `stride` fits a 32-bit signed gather offset.
pub(crate) fn gather_fits(rows: usize, stride: usize) -> bool {
    rows.saturating_mul(stride.max(1)) < i32::MAX as usize
}
