//! Every SIMD / rayon kernel against its scalar reference on awkward shapes, plus the
//! format conversions, transposes, versions and random patterns the kernels rely on.
//!
//! Tolerance: an output element is accepted when it lies within `1e-4 · L1` of the
//! reference, where `L1` is the same expression evaluated on absolute values
//! (`|α|·Σ|a·b| + |β|·|dst|`), an upper bound on the rounding error of any f32
//! summation order for the sizes used here (K ≤ 1000).

use std::sync::{Arc, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};
use rewire::autograd::Conv2dGeom;
use rewire::cpu::dense::{gemm_ex, Trans};
use rewire::cpu::reference::{
    bsr_spmm_ref, gemm_ref, sddmm_ref, sparse_conv2d_input_grad_ref, sparse_conv2d_ref,
    sparse_conv2d_weight_grad_ref, spmm_ref, spmm_t_ref,
};
use rewire::cpu::{
    bsr_spmm, gemm, row_sum, sddmm, sparse_conv2d, sparse_conv2d_input_grad,
    sparse_conv2d_weight_grad, spmm, spmm_bias_act, spmm_t, spmm_t_act_grad, RowAct,
};
use rewire::sparse::{
    aligned_zeros, nnz_for_sparsity, seed_rng, skewed_row_nnz, Bsr, BsrPattern, Csr, CsrPattern,
};
use rewire::{Accum, Par};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// Deterministic value generator (splitmix64), independent of the crate's RNG.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Self {
        Gen(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.f32()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn abs_vec(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

fn pool(threads: usize) -> &'static ThreadPool {
    static P1: OnceLock<ThreadPool> = OnceLock::new();
    static P2: OnceLock<ThreadPool> = OnceLock::new();
    let cell = match threads {
        1 => &P1,
        2 => &P2,
        _ => unreachable!(),
    };
    cell.get_or_init(|| {
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool")
    })
}

/// The ways every kernel is run: (`Par`, threads of the rayon pool it runs inside).
const PAR_RUNS: [(Par, usize); 5] = [
    (Par::Seq, 1),
    (Par::Seq, 2),
    (Par::Rayon(2), 1),
    (Par::Rayon(2), 2),
    (Par::Rayon(3), 2),
];

/// (alpha, beta): `None` is `Accum::Replace` (destination prefilled with NaN).
const ALL_MODES: [(f32, Option<f32>); 5] = [
    (1.0, None),
    (-0.75, None),
    (1.0, Some(1.0)),
    (1.5, Some(-0.5)),
    (0.5, Some(0.0)),
];
/// A smaller set for the big cross products.
const SOME_MODES: [(f32, Option<f32>); 2] = [(-0.75, None), (1.5, Some(-0.5))];

fn accum_of(beta: Option<f32>) -> Accum {
    match beta {
        None => Accum::Replace,
        Some(b) => Accum::Add(b),
    }
}

fn assert_close(label: &str, got: &[f32], exp: &[f32], bound: &[f32]) {
    assert_eq!(got.len(), exp.len(), "{label}: output length");
    for i in 0..got.len() {
        let tol = 1e-4 * bound[i] + 1e-30;
        let ok = (got[i] - exp[i]).abs() <= tol;
        assert!(
            ok,
            "{label}: element {i} (of {}): got {}, expected {}, tolerance {tol}",
            got.len(),
            got[i],
            exp[i]
        );
    }
}

/// Runs `kernel` under every mode in `modes` and every [`PAR_RUNS`] entry and compares it
/// with `reference`. `reference(dst, alpha, accum, abs)` evaluates the oracle on the
/// real operands (`abs = false`) or on their absolute values (`abs = true`, the error
/// bound).
fn check_kernel<K, R>(
    label: &str,
    out_len: usize,
    seed: u64,
    modes: &[(f32, Option<f32>)],
    kernel: K,
    reference: R,
) where
    K: Fn(&mut [f32], f32, Accum, Par) -> rewire::Result<()> + Sync,
    R: Fn(&mut [f32], f32, Accum, bool),
{
    let mut g = Gen::new(seed);
    for &(alpha, beta) in modes {
        let accum = accum_of(beta);
        let dst0 = match beta {
            None => vec![f32::NAN; out_len],
            Some(_) => g.vec(out_len),
        };
        let mut exp = dst0.clone();
        reference(&mut exp, alpha, accum, false);
        let (mut bound, bound_accum) = match beta {
            None => (vec![0.0; out_len], Accum::Replace),
            Some(b) => (abs_vec(&dst0), Accum::Add(b.abs())),
        };
        reference(&mut bound, alpha.abs(), bound_accum, true);
        for &(par, threads) in &PAR_RUNS {
            let mut got = dst0.clone();
            let res = pool(threads).install(|| kernel(&mut got, alpha, accum, par));
            let case = format!("{label} alpha={alpha} accum={accum:?} par={par:?} pool={threads}");
            assert!(res.is_ok(), "{case}: {res:?}");
            assert_close(&case, &got, &exp, &bound);
        }
    }
}

fn rng_pattern(m: usize, k: usize, density: f64, seed: u64) -> CsrPattern {
    let nnz = nnz_for_sparsity(m, k, 1.0 - density).unwrap();
    CsrPattern::random(m, k, nnz, &mut seed_rng(seed)).unwrap()
}

/// A pattern where most rows are empty and the others have varied lengths.
fn pattern_with_empty_rows(m: usize, k: usize, seed: u64) -> CsrPattern {
    let mut g = Gen::new(seed);
    let row_nnz: Vec<usize> = (0..m)
        .map(|i| {
            if i % 3 != 1 || k == 0 {
                0
            } else {
                g.below(k + 1)
            }
        })
        .collect();
    let p = CsrPattern::random_rows(k, &row_nnz, &mut seed_rng(seed)).unwrap();
    for (i, &want) in row_nnz.iter().enumerate() {
        assert_eq!(p.row(i).len(), want);
    }
    p
}

// ---------------------------------------------------------------------------------------
// per-kernel case runners
// ---------------------------------------------------------------------------------------

fn spmm_case(label: &str, p: &CsrPattern, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    let (m, k) = (p.nrows(), p.ncols());
    let mut g = Gen::new(seed);
    let values = g.vec(p.nnz());
    let b = g.vec(k * n);
    let (values_abs, b_abs) = (abs_vec(&values), abs_vec(&b));
    let label = format!("spmm {label} M={m} K={k} N={n} nnz={}", p.nnz());
    check_kernel(
        &label,
        m * n,
        seed + 1,
        modes,
        |c, alpha, accum, par| spmm(c, p, &values, &b, n, alpha, accum, par),
        |c, alpha, accum, abs| {
            if abs {
                spmm_ref(c, p, &values_abs, &b_abs, n, alpha, accum)
            } else {
                spmm_ref(c, p, &values, &b, n, alpha, accum)
            }
        },
    );
}

fn spmm_t_case(label: &str, p: &CsrPattern, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    let (m, k) = (p.nrows(), p.ncols());
    let mut g = Gen::new(seed);
    let values = g.vec(p.nnz());
    let b = g.vec(m * n);
    let (values_abs, b_abs) = (abs_vec(&values), abs_vec(&b));
    let label = format!("spmm_t {label} M={m} K={k} N={n} nnz={}", p.nnz());
    check_kernel(
        &label,
        k * n,
        seed + 1,
        modes,
        |c, alpha, accum, par| spmm_t(c, p, &values, &b, n, alpha, accum, par),
        |c, alpha, accum, abs| {
            if abs {
                spmm_t_ref(c, p, &values_abs, &b_abs, n, alpha, accum)
            } else {
                spmm_t_ref(c, p, &values, &b, n, alpha, accum)
            }
        },
    );
}

fn sddmm_case(label: &str, p: &CsrPattern, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    let (m, k) = (p.nrows(), p.ncols());
    let mut g = Gen::new(seed);
    let l = g.vec(m * n);
    let r = g.vec(k * n);
    let (l_abs, r_abs) = (abs_vec(&l), abs_vec(&r));
    let label = format!("sddmm {label} M={m} K={k} N={n} nnz={}", p.nnz());
    check_kernel(
        &label,
        p.nnz(),
        seed + 1,
        modes,
        |v, alpha, accum, par| sddmm(v, p, &l, &r, n, alpha, accum, par),
        |v, alpha, accum, abs| {
            if abs {
                sddmm_ref(v, p, &l_abs, &r_abs, n, alpha, accum)
            } else {
                sddmm_ref(v, p, &l, &r, n, alpha, accum)
            }
        },
    );
}

/// All three CSR kernels on one pattern.
fn csr_cases(label: &str, p: &CsrPattern, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    spmm_case(label, p, n, modes, seed);
    spmm_t_case(label, p, n, modes, seed.wrapping_add(7));
    sddmm_case(label, p, n, modes, seed.wrapping_add(13));
}

fn bsr_case(label: &str, p: &BsrPattern, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    let (m, k) = (p.nrows(), p.ncols());
    let mut g = Gen::new(seed);
    let values = g.vec(p.nnz());
    let b = g.vec(k * n);
    let (values_abs, b_abs) = (abs_vec(&values), abs_vec(&b));
    let label = format!(
        "bsr_spmm {label} {}x{} blocks, {}x{} block grid, nnzb={}, N={n}",
        p.block_r(),
        p.block_c(),
        p.block_rows(),
        p.block_cols(),
        p.nnzb()
    );
    check_kernel(
        &label,
        m * n,
        seed + 1,
        modes,
        |c, alpha, accum, par| bsr_spmm(c, p, &values, &b, n, alpha, accum, par),
        |c, alpha, accum, abs| {
            if abs {
                bsr_spmm_ref(c, p, &values_abs, &b_abs, n, alpha, accum)
            } else {
                bsr_spmm_ref(c, p, &values, &b, n, alpha, accum)
            }
        },
    );
    // The element-level CSR of the same matrix through spmm gives the same product.
    let bsr = Bsr::new(Arc::new(p.clone()), &values).unwrap();
    let csr = bsr.to_csr();
    let mut via_bsr = vec![f32::NAN; m * n];
    let mut via_csr = vec![f32::NAN; m * n];
    bsr_spmm(
        &mut via_bsr,
        p,
        &values,
        &b,
        n,
        1.0,
        Accum::Replace,
        Par::Seq,
    )
    .unwrap();
    spmm(
        &mut via_csr,
        csr.pattern(),
        csr.values(),
        &b,
        n,
        1.0,
        Accum::Replace,
        Par::Seq,
    )
    .unwrap();
    let mut bound = vec![0.0; m * n];
    bsr_spmm_ref(&mut bound, p, &values_abs, &b_abs, n, 1.0, Accum::Replace);
    let bound: Vec<f32> = bound.iter().map(|x| 2.0 * x).collect();
    assert_close(&format!("{label}: bsr vs csr"), &via_bsr, &via_csr, &bound);
}

fn gemm_case(m: usize, k: usize, n: usize, modes: &[(f32, Option<f32>)], seed: u64) {
    let mut g = Gen::new(seed);
    let a = g.vec(m * k);
    let b = g.vec(k * n);
    let (a_abs, b_abs) = (abs_vec(&a), abs_vec(&b));
    let a_t = transpose_dense(&a, m, k);
    let b_t = transpose_dense(&b, k, n);
    let reference = |c: &mut [f32], alpha: f32, accum: Accum, abs: bool| {
        if abs {
            gemm_ref(c, &a_abs, &b_abs, m, k, n, alpha, accum)
        } else {
            gemm_ref(c, &a, &b, m, k, n, alpha, accum)
        }
    };
    check_kernel(
        &format!("gemm M={m} K={k} N={n}"),
        m * n,
        seed + 1,
        modes,
        |c, alpha, accum, par| gemm(c, &a, &b, m, k, n, alpha, accum, par),
        reference,
    );
    for (ta, tb) in [
        (Trans::No, Trans::No),
        (Trans::Yes, Trans::No),
        (Trans::No, Trans::Yes),
        (Trans::Yes, Trans::Yes),
    ] {
        let sa: &[f32] = if ta == Trans::Yes { &a_t } else { &a };
        let sb: &[f32] = if tb == Trans::Yes { &b_t } else { &b };
        check_kernel(
            &format!("gemm_ex {ta:?} {tb:?} M={m} K={k} N={n}"),
            m * n,
            seed + 2,
            modes,
            |c, alpha, accum, par| gemm_ex(c, sa, ta, sb, tb, m, k, n, alpha, accum, par),
            reference,
        );
    }
}

fn transpose_dense(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

const DIMS: [usize; 6] = [0, 1, 7, 8, 63, 1000];
/// N values that reach every tile width of every kernel (64, 32, 16, 8, scalar tail;
/// BSR: 24, 16, 8, scalar tail) alone and in combination.
const NS: [usize; 16] = [
    1, 7, 8, 15, 16, 31, 33, 63, 64, 65, 100, 120, 127, 128, 129, 200,
];

// ---------------------------------------------------------------------------------------
// SpMM / SpMM-T / SDDMM
// ---------------------------------------------------------------------------------------

/// The full M × K × N product of awkward sizes at density ~0.05.
#[test]
fn csr_kernels_full_dims_product() {
    let mut seed = 1u64;
    for &m in &DIMS {
        for &k in &DIMS {
            let p = rng_pattern(m, k, 0.05, seed);
            for &n in &DIMS {
                csr_cases("product d=0.05", &p, n, &SOME_MODES, seed * 31 + n as u64);
            }
            seed += 1;
        }
    }
}

/// Small awkward shapes at high density (the 0.05 product leaves them nearly empty).
#[test]
fn csr_kernels_small_dims_dense() {
    let mut seed = 100u64;
    for &m in &DIMS[..5] {
        for &k in &DIMS[..5] {
            let p = rng_pattern(m, k, 0.6, seed);
            for &n in &DIMS {
                csr_cases("small d=0.6", &p, n, &SOME_MODES, seed * 17 + n as u64);
            }
            seed += 1;
        }
    }
}

#[test]
fn csr_kernels_every_tile_width_all_modes() {
    let p = rng_pattern(150, 130, 0.1, 7);
    for (t, &n) in NS.iter().enumerate() {
        csr_cases("tiles", &p, n, &ALL_MODES, 1000 + t as u64);
    }
}

#[test]
fn csr_kernels_empty_rows() {
    for (t, &(m, k)) in [(1, 1), (7, 8), (63, 63), (300, 200), (1000, 64)]
        .iter()
        .enumerate()
    {
        let p = pattern_with_empty_rows(m, k, 40 + t as u64);
        for &n in &[1, 8, 33, 64, 129] {
            csr_cases(
                "empty rows",
                &p,
                n,
                &ALL_MODES,
                2000 + t as u64 * 10 + n as u64,
            );
        }
    }
    // Trailing and leading empty rows only, one full row in the middle.
    let p = CsrPattern::random_rows(50, &[0, 0, 0, 50, 0, 0, 0], &mut seed_rng(3)).unwrap();
    for &n in &NS {
        csr_cases("one full row", &p, n, &ALL_MODES, 2500 + n as u64);
    }
}

#[test]
fn csr_kernels_no_entries() {
    for (t, &(m, k)) in [(0, 0), (0, 5), (5, 0), (1, 1), (7, 63), (1000, 1000)]
        .iter()
        .enumerate()
    {
        let empty = CsrPattern::empty(m, k).unwrap();
        let random0 = CsrPattern::random(m, k, 0, &mut seed_rng(t as u64)).unwrap();
        assert_eq!(empty, random0);
        for &n in &[0, 1, 9, 64, 200] {
            // Replace must still overwrite the NaN prefill with zeros.
            csr_cases(
                "nnz=0",
                &empty,
                n,
                &ALL_MODES,
                3000 + t as u64 * 10 + n as u64,
            );
        }
    }
}

#[test]
fn csr_kernels_full_density() {
    for (t, &(m, k)) in [(1, 1), (8, 7), (63, 63), (100, 70), (64, 1000)]
        .iter()
        .enumerate()
    {
        let p = CsrPattern::full(m, k).unwrap();
        assert_eq!(p.nnz(), m * k);
        assert_eq!(p.density(), 1.0);
        for &n in &[1, 7, 16, 65, 127] {
            csr_cases("full", &p, n, &SOME_MODES, 4000 + t as u64 * 10 + n as u64);
        }
    }
    let p = CsrPattern::full(40, 40).unwrap();
    for &n in &NS {
        csr_cases("full 40x40", &p, n, &ALL_MODES, 4500 + n as u64);
    }
}

#[test]
fn csr_kernels_skewed_rows() {
    for (t, &(m, k, nnz, fr, fnz)) in [
        (1000, 1000, 20_000, 0.02, 0.5),
        (500, 300, 15_000, 0.1, 0.9),
        (64, 1000, 5000, 0.05, 0.6),
        (300, 64, 3000, 0.5, 0.01),
    ]
    .iter()
    .enumerate()
    {
        let lens = skewed_row_nnz(m, k, nnz, fr, fnz).unwrap();
        assert_eq!(lens.len(), m);
        assert_eq!(lens.iter().sum::<usize>(), nnz);
        let p = CsrPattern::random_rows(k, &lens, &mut seed_rng(50 + t as u64)).unwrap();
        assert_eq!(p.nnz(), nnz);
        for &n in &[1, 16, 63, 64, 100] {
            csr_cases(
                "skewed",
                &p,
                n,
                &SOME_MODES,
                5000 + t as u64 * 10 + n as u64,
            );
        }
    }
}

#[test]
fn csr_kernels_large_parallel() {
    // Enough work that Par::Rayon really splits rows across threads.
    let p = rng_pattern(1000, 800, 0.02, 11);
    for &n in &[64, 129] {
        csr_cases("large", &p, n, &ALL_MODES, 6000 + n as u64);
    }
}

/// Convolution-shaped products (few rows, `N` = batch·H·W in the thousands) take the
/// wide-`N` schedule: column panels over threads, SDDMM partial sums in scratch.
#[test]
fn csr_kernels_wide_n_panels() {
    let p = rng_pattern(20, 45, 0.3, 12);
    for &n in &[7203, 9000] {
        csr_cases("wide", &p, n, &ALL_MODES, 7000 + n as u64);
    }
    let p = pattern_with_empty_rows(12, 30, 13);
    csr_cases("wide-empty", &p, 12_001, &ALL_MODES, 7100);
}

/// The three direct sparse-convolution kernels on one weight pattern and geometry:
/// forward (no α, no accumulate), input gradient (β modes), weight gradient (all modes).
fn conv_cases(label: &str, p: &CsrPattern, geom: Conv2dGeom, batch: usize, seed: u64) {
    let mut g = Gen::new(seed);
    let values = g.vec(p.nnz());
    let x = g.vec(geom.channels * geom.h * geom.w * batch);
    let zlen = p.nrows() * geom.out_h() * geom.out_w() * batch;
    let dz = g.vec(zlen);
    let label = format!(
        "conv {label} {geom:?} out={} batch={batch} nnz={}",
        p.nrows(),
        p.nnz()
    );
    let pick = |abs: bool, a: &[f32], b: &[f32]| -> (Vec<f32>, Vec<f32>) {
        if abs {
            (abs_vec(a), abs_vec(b))
        } else {
            (a.to_vec(), b.to_vec())
        }
    };
    check_kernel(
        &format!("forward {label}"),
        zlen,
        seed + 1,
        &[(1.0, None)],
        |out, _, _, par| sparse_conv2d(out, p, &values, &x, geom, batch, par),
        |out, _, _, abs| {
            let (v, xs) = pick(abs, &values, &x);
            sparse_conv2d_ref(out, p, &v, &xs, geom, batch)
        },
    );
    check_kernel(
        &format!("input grad {label}"),
        x.len(),
        seed + 2,
        &[
            (1.0, None),
            (1.0, Some(1.0)),
            (1.0, Some(-0.5)),
            (1.0, Some(0.0)),
        ],
        |dx, _, accum, par| sparse_conv2d_input_grad(dx, p, &values, &dz, geom, batch, accum, par),
        |dx, _, accum, abs| {
            let (v, d) = pick(abs, &values, &dz);
            sparse_conv2d_input_grad_ref(dx, p, &v, &d, geom, batch, accum)
        },
    );
    check_kernel(
        &format!("weight grad {label}"),
        p.nnz(),
        seed + 3,
        &ALL_MODES,
        |dv, alpha, accum, par| {
            sparse_conv2d_weight_grad(dv, p, &dz, &x, geom, batch, alpha, accum, par)
        },
        |dv, alpha, accum, abs| {
            let (d, xs) = pick(abs, &dz, &x);
            sparse_conv2d_weight_grad_ref(dv, p, &d, &xs, geom, batch, alpha, accum)
        },
    );
}

fn geom(
    channels: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> Conv2dGeom {
    Conv2dGeom {
        channels,
        h,
        w,
        kh: k.0,
        kw: k.1,
        stride,
        pad,
    }
}

/// Direct sparse convolutions against their references: strides 1–3, padding 0–2,
/// kernels 1×1 to 5×5 (and one taller than the image, inside its padding), batches
/// that exercise every vector width and the scalar tail, empty rows, no live weights,
/// full density, one thread and two.
#[test]
fn sparse_conv_kernels_awkward_geometries() {
    let geoms = [
        geom(3, 7, 5, (3, 3), 1, 1),
        geom(2, 8, 8, (5, 5), 1, 2),
        geom(4, 9, 7, (3, 3), 2, 1),
        geom(1, 6, 6, (1, 1), 1, 0),
        geom(2, 5, 6, (3, 2), 2, 0),
        geom(3, 4, 4, (5, 4), 3, 2),
        geom(1, 1, 1, (1, 1), 1, 0),
        geom(2, 10, 9, (3, 3), 1, 0),
    ];
    for (gi, &gm) in geoms.iter().enumerate() {
        let k = gm.channels * gm.kh * gm.kw;
        for (bi, &batch) in [1usize, 8, 13, 72, 121].iter().enumerate() {
            let seed = 9000 + (gi * 10 + bi) as u64 * 17;
            let out = 1 + (gi + bi) % 6;
            conv_cases("random", &rng_pattern(out, k, 0.4, seed), gm, batch, seed);
            if bi % 2 == 0 {
                conv_cases(
                    "empty rows",
                    &pattern_with_empty_rows(out + 2, k, seed),
                    gm,
                    batch,
                    seed + 5,
                );
                conv_cases("full", &rng_pattern(out, k, 1.0, seed), gm, batch, seed + 6);
                conv_cases(
                    "no weights",
                    &CsrPattern::empty(out, k).unwrap(),
                    gm,
                    batch,
                    seed + 7,
                );
            }
        }
    }
}

/// A layer big enough that the kernels split it over threads (64 → 32 channels, 3×3,
/// 12×12, batch 16, 80% sparse).
#[test]
fn sparse_conv_kernels_parallel_layer() {
    let gm = geom(64, 12, 12, (3, 3), 1, 1);
    let p = rng_pattern(32, gm.channels * 9, 0.2, 31);
    conv_cases("parallel", &p, gm, 16, 31);
}

/// Wide SDDMMs started at once from several threads into one pool all finish, with
/// the reference's values: no call waits for a lock that another holds while it waits,
/// inside its own parallel section, for work queued on the waiting thread (a deadlock
/// two tests sharing a pool once ran into).
#[test]
fn concurrent_wide_sddmms_in_one_pool_finish() {
    let (m, k, n) = (16, 40, 9000);
    let p = Arc::new(rng_pattern(m, k, 0.3, 21));
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..4u64 {
        let (p, tx) = (p.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut g = Gen::new(100 + t);
            let (l, r) = (g.vec(m * n), g.vec(k * n));
            let mut exp = vec![0.0; p.nnz()];
            sddmm_ref(&mut exp, &p, &l, &r, n, 1.0, Accum::Replace);
            let mut bound = vec![0.0; p.nnz()];
            sddmm_ref(
                &mut bound,
                &p,
                &abs_vec(&l),
                &abs_vec(&r),
                n,
                1.0,
                Accum::Replace,
            );
            for _ in 0..25 {
                let mut got = vec![f32::NAN; p.nnz()];
                pool(2)
                    .install(|| sddmm(&mut got, &p, &l, &r, n, 1.0, Accum::Replace, Par::Rayon(2)))
                    .expect("sddmm");
                assert_close("concurrent wide sddmm", &got, &exp, &bound);
            }
            tx.send(t).expect("the test waits");
        });
    }
    drop(tx);
    for _ in 0..4 {
        rx.recv_timeout(std::time::Duration::from_secs(300))
            .expect("a concurrent SDDMM failed or never finished (deadlock)");
    }
}

/// The fused `act(A·B + bias)` equals `spmm` followed by the scalar bias add and
/// nonlinearity, bit for bit, on every tile width, empty rows, the wide-`N` schedule
/// and every thread setting; a bias of the wrong length is an error.
#[test]
fn spmm_bias_act_is_spmm_then_bias_and_act() {
    let acts = [RowAct::Identity, RowAct::Relu, RowAct::LeakyRelu(0.1)];
    let mut cases: Vec<(CsrPattern, usize)> = Vec::new();
    let tiles = rng_pattern(150, 130, 0.1, 21);
    for &n in &NS {
        cases.push((tiles.clone(), n));
    }
    cases.push((pattern_with_empty_rows(63, 40, 22), 75));
    cases.push((rng_pattern(0, 5, 0.5, 23), 9));
    cases.push((rng_pattern(7, 0, 0.5, 24), 9));
    cases.push((rng_pattern(1000, 800, 0.02, 25), 129));
    cases.push((rng_pattern(20, 45, 0.3, 26), 7203));
    for (t, (p, n)) in cases.iter().enumerate() {
        let (m, k, n) = (p.nrows(), p.ncols(), *n);
        let mut g = Gen::new(9000 + t as u64);
        let (values, b, bias) = (g.vec(p.nnz()), g.vec(k * n), g.vec(m));
        let mut z = vec![0.0; m * n];
        spmm(&mut z, p, &values, &b, n, 1.0, Accum::Replace, Par::Seq).unwrap();
        for act in acts {
            let exp: Vec<f32> = z
                .iter()
                .enumerate()
                .map(|(e, &v)| act.apply(v + bias[e / n.max(1)]))
                .collect();
            for &(par, threads) in &PAR_RUNS {
                let mut got = vec![f32::NAN; m * n];
                pool(threads)
                    .install(|| spmm_bias_act(&mut got, p, &values, &b, n, &bias, act, par))
                    .unwrap();
                assert_eq!(
                    got, exp,
                    "case {t} M={m} K={k} N={n} {act:?} {par:?} pool={threads}"
                );
            }
        }
        if m > 0 {
            let mut out = vec![0.0; m * n];
            let err = spmm_bias_act(
                &mut out,
                p,
                &values,
                &b,
                n,
                &bias[1..],
                RowAct::Relu,
                Par::Seq,
            );
            assert!(err.is_err(), "short bias accepted");
        }
    }
}

#[test]
fn row_sum_adds_every_element() {
    let mut g = Gen::new(77);
    for len in [0, 1, 7, 8, 9, 16, 63, 129, 1000] {
        let v = g.vec(len);
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        let bound: f64 = v.iter().map(|&x| x.abs() as f64).sum();
        let got = row_sum(&v) as f64;
        assert!(
            (got - exact).abs() <= 1e-6 * bound + 1e-30,
            "len {len}: {got} vs {exact}"
        );
    }
    assert_eq!(row_sum(&[1.0, 2.0, 3.0]), 6.0);
}

/// `(Aᵀ·B) ⊙ act'(Y)` with its row sums equals `spmm_t` followed by the scalar
/// multiply and `row_sum`, bit for bit, on every tile width, empty rows, the wide-`N`
/// fallback and every thread setting; operands of the wrong length are errors.
#[test]
fn spmm_t_act_grad_is_spmm_t_then_act_derivative() {
    let acts = [RowAct::Identity, RowAct::Relu, RowAct::LeakyRelu(0.1)];
    let mut cases: Vec<(CsrPattern, usize)> = Vec::new();
    let tiles = rng_pattern(130, 150, 0.1, 31);
    for &n in &NS {
        cases.push((tiles.clone(), n));
    }
    cases.push((pattern_with_empty_rows(40, 63, 32), 75));
    cases.push((rng_pattern(0, 5, 0.5, 33), 9));
    cases.push((rng_pattern(7, 0, 0.5, 34), 9));
    cases.push((rng_pattern(5, 6, 0.5, 35), 0));
    cases.push((rng_pattern(800, 1000, 0.02, 36), 129));
    cases.push((rng_pattern(45, 20, 0.3, 37), 7203));
    for (t, (p, n)) in cases.iter().enumerate() {
        let (m, k, n) = (p.nrows(), p.ncols(), *n);
        let mut g = Gen::new(9500 + t as u64);
        let (values, b) = (g.vec(p.nnz()), g.vec(m * n));
        // activations with exact zeros and negatives, as after ReLU / leaky ReLU
        let y: Vec<f32> = g
            .vec(k * n)
            .iter()
            .map(|&v| if v < -0.5 { 0.0 } else { v })
            .collect();
        let mut plain = vec![0.0; k * n];
        spmm_t(&mut plain, p, &values, &b, n, 1.0, Accum::Replace, Par::Seq).unwrap();
        for act in acts {
            let exp: Vec<f32> = plain
                .iter()
                .zip(&y)
                .map(|(&v, &yv)| v * act.deriv_from_output(yv))
                .collect();
            let exp_sums: Vec<f32> = (0..k).map(|r| row_sum(&exp[r * n..(r + 1) * n])).collect();
            for &(par, threads) in &PAR_RUNS {
                let mut got = vec![f32::NAN; k * n];
                let mut sums = vec![f32::NAN; k];
                pool(threads)
                    .install(|| {
                        spmm_t_act_grad(&mut got, p, &values, &b, n, &y, act, &mut sums, par)
                    })
                    .unwrap();
                let case = format!("case {t} M={m} K={k} N={n} {act:?} {par:?} pool={threads}");
                assert_eq!(got, exp, "{case}");
                assert_eq!(sums, exp_sums, "{case} row sums");
            }
        }
        let mut out = vec![0.0; k * n];
        let mut sums = vec![0.0; k];
        if k > 0 && n > 0 {
            let short_y = spmm_t_act_grad(
                &mut out,
                p,
                &values,
                &b,
                n,
                &y[1..],
                RowAct::Relu,
                &mut sums,
                Par::Seq,
            );
            assert!(short_y.is_err(), "short Y accepted");
            let short_sums = spmm_t_act_grad(
                &mut out,
                p,
                &values,
                &b,
                n,
                &y,
                RowAct::Relu,
                &mut sums[1..],
                Par::Seq,
            );
            assert!(short_sums.is_err(), "short row sums accepted");
        }
    }
}

/// spmm_t on a clone reuses the cached transpose and still agrees.
#[test]
fn spmm_t_after_clone_and_reuse() {
    let p = rng_pattern(90, 70, 0.2, 12);
    spmm_t_case("first", &p, 33, &ALL_MODES, 7000);
    let q = p.clone();
    spmm_t_case("clone", &q, 65, &ALL_MODES, 7001);
    spmm_t_case("again", &p, 7, &ALL_MODES, 7002);
}

// ---------------------------------------------------------------------------------------
// BSR SpMM
// ---------------------------------------------------------------------------------------

const BLOCKS: [(usize, usize); 11] = [
    (4, 4),
    (8, 8),
    (16, 16),
    (1, 1),
    (2, 2),
    (4, 8),
    (8, 4),
    (3, 5),
    (5, 3),
    (1, 7),
    (12, 4),
];

#[test]
fn bsr_kernel_every_block_shape_and_tile() {
    for (s, &(r, c)) in BLOCKS.iter().enumerate() {
        let seed = 100 * s as u64;
        // A mid-density grid with empty block rows, on every N.
        let (br, bc) = (13, 11);
        let p = BsrPattern::random(br, bc, r, c, 40, &mut seed_rng(seed)).unwrap();
        assert_eq!(p.nnzb(), 40);
        for &n in &NS {
            bsr_case("random", &p, n, &SOME_MODES, seed + n as u64);
        }
        for &n in &[1, 24, 41] {
            bsr_case("random all modes", &p, n, &ALL_MODES, seed + 50 + n as u64);
        }
    }
}

#[test]
fn bsr_kernel_edge_grids() {
    for (s, &(r, c)) in BLOCKS.iter().enumerate() {
        let seed = 10_000 + 100 * s as u64;
        let grids: Vec<BsrPattern> = vec![
            // no blocks at all, in several grid shapes
            BsrPattern::new(0, 0, r, c, vec![0], vec![]).unwrap(),
            BsrPattern::new(0, 3, r, c, vec![0], vec![]).unwrap(),
            BsrPattern::new(3, 0, r, c, vec![0; 4], vec![]).unwrap(),
            BsrPattern::new(4, 5, r, c, vec![0; 5], vec![]).unwrap(),
            // one block
            BsrPattern::new(1, 1, r, c, vec![0, 1], vec![0]).unwrap(),
            // empty first / middle / last block rows
            BsrPattern::new(4, 3, r, c, vec![0, 0, 3, 3, 4], vec![0, 1, 2, 1]).unwrap(),
            // fully dense block grid
            BsrPattern::from_block_pattern(CsrPattern::full(5, 4).unwrap(), r, c).unwrap(),
        ];
        for (t, p) in grids.iter().enumerate() {
            for &n in &[0, 1, 7, 8, 17, 24, 64, 65] {
                bsr_case("edge", p, n, &ALL_MODES, seed + 10 * t as u64 + n as u64);
            }
        }
    }
}

#[test]
fn bsr_kernel_large_parallel() {
    for (s, &(r, c)) in [(4, 4), (8, 8), (16, 16), (3, 5), (1, 1)]
        .iter()
        .enumerate()
    {
        let (br, bc) = (1000 / r, 1000 / c);
        let nnzb = (br * bc) / 20;
        let p = BsrPattern::random(br, bc, r, c, nnzb, &mut seed_rng(77 + s as u64)).unwrap();
        bsr_case("large", &p, 63, &SOME_MODES, 20_000 + s as u64);
    }
}

// ---------------------------------------------------------------------------------------
// dense GEMM
// ---------------------------------------------------------------------------------------

#[test]
fn gemm_awkward_shapes() {
    let dims = [0, 1, 7, 8, 63, 100];
    let mut seed = 0;
    for &m in &dims {
        for &k in &dims {
            for &n in &dims {
                gemm_case(m, k, n, &SOME_MODES, seed);
                seed += 1;
            }
        }
    }
}

#[test]
fn gemm_k_zero_all_modes() {
    for &(m, n) in &[(1, 1), (7, 9), (64, 65)] {
        gemm_case(m, 0, n, &ALL_MODES, 500 + m as u64);
    }
    // Replace with k = 0 writes zeros over the NaN prefill; Add scales by beta.
    let mut c = vec![f32::NAN; 6];
    gemm(&mut c, &[], &[], 2, 0, 3, 2.0, Accum::Replace, Par::Seq).unwrap();
    assert_eq!(c, vec![0.0; 6]);
    let mut c = vec![1.0, -2.0, 3.0, 4.0];
    gemm(&mut c, &[], &[], 2, 0, 2, 2.0, Accum::Add(0.5), Par::Seq).unwrap();
    assert_eq!(c, vec![0.5, -1.0, 1.5, 2.0]);
}

#[test]
fn gemm_larger_all_modes() {
    gemm_case(300, 200, 250, &ALL_MODES, 900);
    gemm_case(1000, 63, 129, &SOME_MODES, 901);
}

// ---------------------------------------------------------------------------------------
// formats
// ---------------------------------------------------------------------------------------

/// A dense matrix with about `density` nonzeros (exact zeros elsewhere).
fn sparse_dense(m: usize, k: usize, density: f64, seed: u64) -> Vec<f32> {
    let mut g = Gen::new(seed);
    (0..m * k)
        .map(|_| {
            let keep = (g.next_u64() as f64 / u64::MAX as f64) < density;
            let v = g.f32();
            if keep && v != 0.0 {
                v
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn dense_csr_dense_round_trip() {
    for (t, &(m, k, d)) in [
        (0, 0, 0.5),
        (0, 4, 0.5),
        (4, 0, 0.5),
        (1, 1, 1.0),
        (7, 8, 0.3),
        (63, 63, 0.05),
        (20, 30, 0.0),
        (10, 10, 1.0),
    ]
    .iter()
    .enumerate()
    {
        let dense = sparse_dense(m, k, d, t as u64);
        let csr = Csr::from_dense(&dense, m, k).unwrap();
        assert_eq!((csr.nrows(), csr.ncols()), (m, k));
        assert_eq!(csr.nnz(), dense.iter().filter(|&&v| v != 0.0).count());
        assert!(csr.values().iter().all(|&v| v != 0.0));
        assert_eq!(csr.to_dense(), dense);
        // The pattern alone and its mask agree with the dense matrix.
        let p = CsrPattern::from_dense(&dense, m, k).unwrap();
        assert_eq!(&p, csr.pattern());
        let mask: Vec<f32> = dense.iter().map(|&v| f32::from(v != 0.0)).collect();
        assert_eq!(p.to_dense_mask(), mask);
        // The raw arrays rebuild the same matrix through the checked constructors.
        let again = Csr::from_parts(
            m,
            k,
            p.row_ptr().to_vec(),
            p.col_idx().to_vec(),
            csr.values(),
        )
        .unwrap();
        assert_eq!(again.to_dense(), dense);
        // zeros() keeps the structure.
        let z = Csr::zeros(Arc::new(p.clone()));
        assert_eq!(z.nnz(), p.nnz());
        assert!(z.to_dense().iter().all(|&v| v == 0.0));
    }
}

#[test]
fn csr_to_bsr_to_dense_matches() {
    for (s, &(r, c)) in BLOCKS.iter().enumerate() {
        for (t, &(br, bc)) in [(0, 0), (1, 1), (3, 4), (9, 7)].iter().enumerate() {
            let (m, k) = (br * r, bc * c);
            let seed = 100 * s as u64 + t as u64;
            let p = pattern_with_empty_rows(m, k, seed);
            let values = Gen::new(seed).vec(p.nnz());
            let nonzero: Vec<f32> = values
                .iter()
                .map(|&v| if v == 0.0 { 0.5 } else { v })
                .collect();
            let csr = Csr::new(Arc::new(p), &nonzero).unwrap();
            let dense = csr.to_dense();
            let bsr = Bsr::from_csr(&csr, r, c).unwrap();
            assert_eq!(bsr.to_dense(), dense, "{r}x{c} blocks, {br}x{bc} grid");
            let bp = bsr.pattern();
            assert_eq!((bp.nrows(), bp.ncols()), (m, k));
            assert_eq!((bp.block_r(), bp.block_c()), (r, c));
            // A block is stored exactly when it holds a live entry.
            for bi in 0..br {
                for bj in 0..bc {
                    let live = (0..r).any(|i| {
                        csr.pattern()
                            .row(bi * r + i)
                            .iter()
                            .any(|&j| j as usize / c == bj)
                    });
                    let stored = bp.blocks().row(bi).contains(&(bj as u32));
                    assert_eq!(live, stored, "block ({bi},{bj})");
                }
            }
            // from_dense finds the same blocks (no value is zero).
            let from_dense = Bsr::from_dense(&dense, m, k, r, c).unwrap();
            assert_eq!(from_dense.pattern(), bp);
            assert_eq!(from_dense.values(), bsr.values());
        }
    }
}

#[test]
fn bsr_to_csr() {
    for (s, &(r, c)) in BLOCKS.iter().enumerate() {
        let p = BsrPattern::random(6, 5, r, c, 11, &mut seed_rng(s as u64)).unwrap();
        let values = Gen::new(s as u64).vec(p.nnz());
        let bsr = Bsr::new(Arc::new(p.clone()), &values).unwrap();
        let csr = bsr.to_csr();
        assert_eq!(csr.nnz(), p.nnzb() * r * c);
        assert_eq!(csr.pattern(), &p.to_csr_pattern());
        // The expanded pattern passes the checked constructor.
        let checked = CsrPattern::new(
            p.nrows(),
            p.ncols(),
            csr.pattern().row_ptr().to_vec(),
            csr.pattern().col_idx().to_vec(),
        )
        .unwrap();
        assert_eq!(&checked, csr.pattern());
        assert_eq!(csr.to_dense(), bsr.to_dense());
        // Dense element (i, j) is value (i%r, j%c) of block (i/r, j/c).
        let dense = bsr.to_dense();
        let mut expect = vec![0.0; p.nrows() * p.ncols()];
        for bi in 0..p.block_rows() {
            for blk in p.blocks().row_range(bi) {
                let bj = p.blocks().col_idx()[blk] as usize;
                for i in 0..r {
                    for j in 0..c {
                        expect[(bi * r + i) * p.ncols() + bj * c + j] =
                            values[blk * r * c + i * c + j];
                    }
                }
            }
        }
        assert_eq!(dense, expect);
        // Round trip back to BSR (every stored value nonzero).
        let back = Bsr::from_csr(&csr, r, c).unwrap();
        assert_eq!(back.pattern(), &p);
        assert_eq!(back.values(), bsr.values());
        // Bsr::zeros keeps the structure.
        let z = Bsr::zeros(Arc::new(p.clone()));
        assert_eq!(z.values().len(), p.nnz());
    }
}

#[test]
fn transpose_round_trip_and_perm() {
    let patterns = [
        CsrPattern::empty(0, 0).unwrap(),
        CsrPattern::empty(3, 5).unwrap(),
        CsrPattern::full(4, 6).unwrap(),
        rng_pattern(63, 8, 0.3, 1),
        rng_pattern(1, 1000, 0.1, 2),
        rng_pattern(1000, 1, 0.1, 3),
        pattern_with_empty_rows(40, 30, 4),
    ];
    for (t, p) in patterns.iter().enumerate() {
        let tr = p.transpose();
        assert_eq!(tr.pattern.nrows(), p.ncols());
        assert_eq!(tr.pattern.ncols(), p.nrows());
        assert_eq!(tr.pattern.nnz(), p.nnz());
        assert_eq!(tr.perm.len(), p.nnz());
        // Valid under the checked constructor.
        CsrPattern::new(
            tr.pattern.nrows(),
            tr.pattern.ncols(),
            tr.pattern.row_ptr().to_vec(),
            tr.pattern.col_idx().to_vec(),
        )
        .unwrap();
        // perm is a permutation.
        let mut seen = vec![false; p.nnz()];
        for &q in &tr.perm {
            assert!(!seen[q as usize]);
            seen[q as usize] = true;
        }
        // Transpose of transpose is the original.
        assert_eq!(&tr.pattern.transpose().pattern, p);
        // The permuted values give the transposed dense matrix.
        let values = Gen::new(t as u64).vec(p.nnz());
        let csr = Csr::new(Arc::new(p.clone()), &values).unwrap();
        let tvals: Vec<f32> = tr.perm.iter().map(|&q| values[q as usize]).collect();
        let tcsr = Csr::new(Arc::new(tr.pattern.clone()), &tvals).unwrap();
        assert_eq!(
            tcsr.to_dense(),
            transpose_dense(&csr.to_dense(), p.nrows(), p.ncols())
        );
        // Entry-wise: transposed entry q at (j, i) comes from original entry perm[q] at (i, j).
        let rows = p.row_indices();
        let trows = tr.pattern.row_indices();
        for (q, &o) in tr.perm.iter().enumerate() {
            let o = o as usize;
            assert_eq!(tr.pattern.col_idx()[q], rows[o]);
            assert_eq!(trows[q], p.col_idx()[o]);
        }
    }
}

#[test]
fn transpose_is_cached() {
    let p = rng_pattern(50, 40, 0.2, 9);
    let first: *const _ = p.transpose();
    let second: *const _ = p.transpose();
    assert!(std::ptr::eq(first, second));
    // A clone taken after the build shares the cached transpose and the version.
    let q = p.clone();
    assert!(std::ptr::eq(q.transpose(), p.transpose()));
    assert_eq!(q.version(), p.version());
    // spmm_t does not rebuild it.
    let n = 3;
    let mut c = vec![0.0; 40 * n];
    spmm_t(
        &mut c,
        &p,
        &vec![1.0; p.nnz()],
        &vec![1.0; 50 * n],
        n,
        1.0,
        Accum::Replace,
        Par::Seq,
    )
    .unwrap();
    assert!(std::ptr::eq(p.transpose(), first));
}

#[test]
fn versions_are_unique() {
    let a = CsrPattern::new(2, 2, vec![0, 1, 2], vec![0, 1]).unwrap();
    let b = CsrPattern::new(2, 2, vec![0, 1, 2], vec![0, 1]).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.version(), b.version());
    let c = CsrPattern::empty(2, 2).unwrap();
    let d = CsrPattern::random(2, 2, 2, &mut seed_rng(0)).unwrap();
    let e = unsafe { CsrPattern::new_unchecked(2, 2, vec![0, 1, 2], vec![0, 1]) };
    let mut versions = vec![
        a.version(),
        b.version(),
        c.version(),
        d.version(),
        e.version(),
    ];
    // The transpose is a pattern of its own.
    versions.push(a.transpose().pattern.version());
    let bp1 = BsrPattern::new(1, 1, 2, 2, vec![0, 1], vec![0]).unwrap();
    let bp2 = BsrPattern::new(1, 1, 2, 2, vec![0, 1], vec![0]).unwrap();
    versions.push(bp1.version());
    versions.push(bp2.version());
    versions.push(bp1.to_csr_pattern().version());
    let count = versions.len();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), count, "duplicate versions");
    assert_eq!(a.clone().version(), a.version());
}

#[test]
fn random_patterns_exact_and_deterministic() {
    for (t, &(m, k, nnz)) in [
        (0, 0, 0),
        (1, 1, 1),
        (7, 8, 0),
        (7, 8, 56),
        (63, 1000, 3000),
        (1000, 63, 3001),
        (100, 100, 9999),
    ]
    .iter()
    .enumerate()
    {
        let seed = 40 + t as u64;
        let p = CsrPattern::random(m, k, nnz, &mut seed_rng(seed)).unwrap();
        assert_eq!(p.nnz(), nnz);
        assert_eq!((p.nrows(), p.ncols()), (m, k));
        let q = CsrPattern::random(m, k, nnz, &mut seed_rng(seed)).unwrap();
        assert_eq!(p, q, "same seed, same pattern");
        if nnz > 0 && nnz < m * k {
            let other = CsrPattern::random(m, k, nnz, &mut seed_rng(seed + 1000)).unwrap();
            assert_ne!(p, other, "different seed, different pattern");
        }
        // The generator advances: a second draw from the same rng differs.
        let mut rng = seed_rng(seed);
        let first = CsrPattern::random(m, k, nnz, &mut rng).unwrap();
        assert_eq!(first, p);
        let second = CsrPattern::random(m, k, nnz, &mut rng).unwrap();
        assert_eq!(second.nnz(), nnz);
        if nnz > 0 && nnz < m * k {
            assert_ne!(first, second);
        }
    }
    // Exact per-row counts.
    let lens = [0usize, 5, 0, 64, 1, 63, 0];
    let p = CsrPattern::random_rows(64, &lens, &mut seed_rng(1)).unwrap();
    for (i, &l) in lens.iter().enumerate() {
        assert_eq!(p.row(i).len(), l);
    }
    assert_eq!(
        p,
        CsrPattern::random_rows(64, &lens, &mut seed_rng(1)).unwrap()
    );
    let q = CsrPattern::random_per_row(100, 30, 7, &mut seed_rng(2)).unwrap();
    assert_eq!(q.nnz(), 700);
    assert!((0..100).all(|i| q.row(i).len() == 7));
    assert_eq!(
        q,
        CsrPattern::random_per_row(100, 30, 7, &mut seed_rng(2)).unwrap()
    );
    // BSR: exact block count, deterministic.
    let b = BsrPattern::random(10, 12, 3, 5, 33, &mut seed_rng(3)).unwrap();
    assert_eq!(b.nnzb(), 33);
    assert_eq!(b.nnz(), 33 * 15);
    assert_eq!(
        b,
        BsrPattern::random(10, 12, 3, 5, 33, &mut seed_rng(3)).unwrap()
    );
}

#[test]
fn nnz_for_sparsity_and_skew() {
    assert_eq!(nnz_for_sparsity(10, 10, 0.0).unwrap(), 100);
    assert_eq!(nnz_for_sparsity(10, 10, 1.0).unwrap(), 0);
    assert_eq!(nnz_for_sparsity(10, 10, 0.9).unwrap(), 10);
    assert_eq!(nnz_for_sparsity(0, 10, 0.5).unwrap(), 0);
    assert_eq!(nnz_for_sparsity(1000, 1000, 0.95).unwrap(), 50_000);
    let lens = skewed_row_nnz(100, 1000, 10_000, 0.1, 0.9).unwrap();
    assert_eq!(lens.len(), 100);
    assert_eq!(lens.iter().sum::<usize>(), 10_000);
    assert_eq!(lens[..10].iter().sum::<usize>(), 9000);
    assert!(lens[..10].iter().all(|&l| l == 900));
    assert!(lens[10..]
        .iter()
        .all(|&l| l == 1000 / 90 || l == 1000 / 90 + 1));
}

#[test]
fn aligned_buffers() {
    let z = aligned_zeros(37);
    assert_eq!(z.len(), 37);
    assert!(z.iter().all(|&v| v == 0.0));
    assert_eq!(z.as_ptr() as usize % 64, 0);
    assert_eq!(aligned_zeros(0).len(), 0);
}

/// One kernel call writing into its output with the given mode.
type KernelRun<'a> = dyn Fn(&mut [f32], Accum) + 'a;

/// `Accum::Add(0.0)` is `Replace` in every kernel (BLAS's β = 0): a NaN left in the
/// destination is not read.
#[test]
fn add_with_beta_zero_does_not_read_the_destination() {
    let (m, k, n) = (16, 24, 9);
    let p = rng_pattern(m, k, 0.3, 5);
    let values: Vec<f32> = (0..p.nnz()).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let bt: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32 - 1.0).collect();
    let dense = rewire::sparse::Csr::new(Arc::new(p.clone()), &values)
        .unwrap()
        .to_dense();
    let bp = BsrPattern::random(2, 3, 8, 8, 3, &mut rewire::sparse::seed_rng(1)).unwrap();
    let bvals: Vec<f32> = (0..bp.nnz()).map(|i| (i % 9) as f32 - 4.0).collect();
    for par in [Par::Seq, Par::Rayon(2)] {
        // each kernel writes its output twice: over NaN with Add(0.0), over zeros with Replace
        let mut runs: Vec<(&str, Box<KernelRun>, usize)> = vec![
            (
                "spmm",
                Box::new(|c: &mut [f32], a| spmm(c, &p, &values, &b, n, 1.0, a, par).unwrap()),
                m * n,
            ),
            (
                "spmm_t",
                Box::new(|c: &mut [f32], a| spmm_t(c, &p, &values, &bt, n, 1.0, a, par).unwrap()),
                k * n,
            ),
            (
                "sddmm",
                Box::new(|c: &mut [f32], a| {
                    let r: Vec<f32> = b.clone();
                    sddmm(c, &p, &bt, &r, n, 1.0, a, par).unwrap()
                }),
                p.nnz(),
            ),
            (
                "gemm",
                Box::new(|c: &mut [f32], a| gemm(c, &dense, &b, m, k, n, 1.0, a, par).unwrap()),
                m * n,
            ),
            (
                "bsr_spmm",
                Box::new(|c: &mut [f32], a| bsr_spmm(c, &bp, &bvals, &b, n, 1.0, a, par).unwrap()),
                m * n,
            ),
        ];
        for (name, run, len) in runs.drain(..) {
            let mut over_nan = vec![f32::NAN; len];
            run(&mut over_nan, Accum::Add(0.0));
            let mut fresh = vec![0.0; len];
            run(&mut fresh, Accum::Replace);
            assert!(over_nan.iter().all(|v| v.is_finite()), "{name}: NaN read");
            assert_eq!(over_nan, fresh, "{name}");
        }
    }
}

/// The SDDMM of a convolution's weight gradient (a wide `N`, split into column ranges)
/// gives the same bits whatever the thread count: a CNN run does not depend on the
/// machine's cores.
#[test]
fn wide_sddmm_is_the_same_on_any_thread_count() {
    let (m, k, n) = (32, 288, 40_000); // 32 filters of 32×3×3, batch·H·W = 40000
    let p = rng_pattern(m, k, 0.1, 9);
    let l: Vec<f32> = (0..m * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let r: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104_729) % 997) as f32 / 498.0 - 1.0)
        .collect();
    let run = |par: Par| {
        let mut v = vec![0.0f32; p.nnz()];
        sddmm(&mut v, &p, &l, &r, n, 1.0, Accum::Replace, par).unwrap();
        v
    };
    let seq = run(Par::Seq);
    let two = pool(2).install(|| run(Par::Rayon(2)));
    let one = pool(1).install(|| run(Par::Rayon(1)));
    assert_eq!(seq, two);
    assert_eq!(seq, one);
    // and still the product: against the f64 reference
    let mut exp = vec![0.0f32; p.nnz()];
    sddmm_ref(&mut exp, &p, &l, &r, n, 1.0, Accum::Replace);
    for (g, e) in seq.iter().zip(&exp) {
        assert!((g - e).abs() <= 1e-3 * (1.0 + e.abs()), "{g} vs {e}");
    }
}
