//! Criterion benches: every sparse kernel beside the dense GEMM that computes the same
//! product on the same shape, in the same group, so that criterion reports the two side
//! by side (`<kernel>/sparse/<shape>` and `<kernel>/dense/<shape>`).
//!
//! Throughput is the number of multiply-adds each kernel actually performs: `nnz·N` for
//! the sparse kernels (for BSR, every entry of the stored blocks), `M·K·N` for dense.
//! Before timing, each pair is run once and the two outputs are checked to agree, so
//! `cargo bench --bench kernels -- --test` is also a quick correctness smoke test.
//!
//! Run with `cargo bench --bench kernels` (a few minutes on 2 cores); filter with e.g.
//! `cargo bench --bench kernels -- spmm_t`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use rand::RngExt;

use rewire::bench::{BenchConfig, ConvBench, Kernel};
use rewire::cpu::{self, dense::Trans};
use rewire::sparse::{aligned_zeros, nnz_for_sparsity, seed_rng, AlignedVec, SeedRng};
use rewire::{Accum, Bsr, BsrPattern, Csr, CsrPattern, Par};

/// Rows and columns of the sparse operand A.
const MK: usize = 2048;
/// The dense (batch) dimension of the main configuration.
const N: usize = 128;
/// Sparsity of the main configuration.
const SPARSITY: f64 = 0.9;
/// Block edge of the BSR bench (square blocks).
const BLOCK: usize = 8;
/// Seed of every pattern and operand.
const SEED: u64 = 0;
/// Largest accepted |sparse − dense|, relative to the largest |dense| output value.
const TOLERANCE: f64 = 1e-3;

fn random_values(len: usize, rng: &mut SeedRng) -> AlignedVec {
    let mut v = aligned_zeros(len);
    for x in v.iter_mut() {
        *x = rng.random_range(-1.0f32..1.0);
    }
    v
}

/// A random `m × k` CSR matrix at `sparsity` and its dense equivalent.
fn random_csr(m: usize, k: usize, sparsity: f64, rng: &mut SeedRng) -> (Csr, Vec<f32>) {
    let nnz = nnz_for_sparsity(m, k, sparsity).expect("valid sparsity");
    let pattern = CsrPattern::random(m, k, nnz, rng).expect("random CSR pattern");
    let values = random_values(pattern.nnz(), rng);
    let csr = Csr::new(Arc::new(pattern), &values).expect("CSR matrix");
    let dense = csr.to_dense();
    (csr, dense)
}

/// Benchmark parameter naming the shape and sparsity.
fn shape(m: usize, k: usize, n: usize, sparsity: f64) -> String {
    format!("m{m}_k{k}_n{n}_s{sparsity}")
}

fn max_rel_diff(sparse: &[f32], dense: &[f32]) -> f64 {
    assert_eq!(sparse.len(), dense.len());
    let scale = dense
        .iter()
        .fold(0.0f64, |m, &x| m.max(f64::from(x).abs()))
        .max(1e-30);
    let diff = sparse.iter().zip(dense).fold(0.0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    diff / scale
}

fn check_agree(what: &str, sparse: &[f32], dense: &[f32]) {
    let d = max_rel_diff(sparse, dense);
    assert!(
        d <= TOLERANCE,
        "{what}: sparse and dense results differ (max rel diff {d:e})"
    );
}

/// Times `sparse` and `dense` under the same parameter in `group`, each with its own
/// multiply-add count as throughput.
fn bench_pair(
    group: &mut BenchmarkGroup<'_, WallTime>,
    param: &str,
    sparse_madds: usize,
    dense_madds: usize,
    mut sparse: impl FnMut(),
    mut dense: impl FnMut(),
) {
    group.throughput(Throughput::Elements(sparse_madds as u64));
    group.bench_function(BenchmarkId::new("sparse", param), |b| b.iter(&mut sparse));
    group.throughput(Throughput::Elements(dense_madds as u64));
    group.bench_function(BenchmarkId::new("dense", param), |b| b.iter(&mut dense));
}

/// Settings shared by every group: few samples, short measurements.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// `C[M×N] = A·B`, A CSR, against `gemm` with A dense.
fn bench_spmm(c: &mut Criterion) {
    let par = Par::current();
    let mut group = c.benchmark_group("spmm");
    configure(&mut group);
    let configs = [(N, SPARSITY), (N, 0.5), (N, 0.99), (1, SPARSITY)];
    for (n, sparsity) in configs {
        let (m, k) = (MK, MK);
        let mut rng = seed_rng(SEED);
        let (a, a_dense) = random_csr(m, k, sparsity, &mut rng);
        let b = random_values(k * n, &mut rng);
        let mut c_sparse = aligned_zeros(m * n);
        let mut c_dense = aligned_zeros(m * n);
        let (p, v) = (a.pattern(), a.values());

        let run_sparse = |c: &mut [f32]| {
            cpu::spmm(black_box(c), p, v, &b, n, 1.0, Accum::Replace, par).expect("spmm")
        };
        let run_dense = |c: &mut [f32]| {
            cpu::gemm(
                black_box(c),
                &a_dense,
                &b,
                m,
                k,
                n,
                1.0,
                Accum::Replace,
                par,
            )
            .expect("gemm")
        };
        run_sparse(&mut c_sparse);
        run_dense(&mut c_dense);
        let param = shape(m, k, n, sparsity);
        check_agree(&format!("spmm {param}"), &c_sparse, &c_dense);

        bench_pair(
            &mut group,
            &param,
            a.nnz() * n,
            m * k * n,
            || run_sparse(&mut c_sparse),
            || run_dense(&mut c_dense),
        );
    }
    group.finish();
}

/// `C[K×N] = Aᵀ·B`, A CSR, against `gemm_ex` with A dense and transposed.
fn bench_spmm_t(c: &mut Criterion) {
    let par = Par::current();
    let mut group = c.benchmark_group("spmm_t");
    configure(&mut group);
    let (m, k, n, sparsity) = (MK, MK, N, SPARSITY);
    let mut rng = seed_rng(SEED);
    let (a, a_dense) = random_csr(m, k, sparsity, &mut rng);
    let b = random_values(m * n, &mut rng);
    let mut c_sparse = aligned_zeros(k * n);
    let mut c_dense = aligned_zeros(k * n);
    let (p, v) = (a.pattern(), a.values());

    let run_sparse = |c: &mut [f32]| {
        cpu::spmm_t(black_box(c), p, v, &b, n, 1.0, Accum::Replace, par).expect("spmm_t")
    };
    let run_dense = |c: &mut [f32]| {
        let (a, b) = (&a_dense, &b);
        cpu::dense::gemm_ex(
            black_box(c),
            a,
            Trans::Yes,
            b,
            Trans::No,
            k,
            m,
            n,
            1.0,
            Accum::Replace,
            par,
        )
        .expect("gemm_ex")
    };
    // The first call also builds the cached transposed pattern, outside the timing.
    run_sparse(&mut c_sparse);
    run_dense(&mut c_dense);
    let param = shape(m, k, n, sparsity);
    check_agree(&format!("spmm_t {param}"), &c_sparse, &c_dense);

    bench_pair(
        &mut group,
        &param,
        a.nnz() * n,
        m * k * n,
        || run_sparse(&mut c_sparse),
        || run_dense(&mut c_dense),
    );
    group.finish();
}

/// `v = (L·Rᵀ)` sampled at A's pattern, against `gemm_ex` computing all of `L·Rᵀ`.
fn bench_sddmm(c: &mut Criterion) {
    let par = Par::current();
    let mut group = c.benchmark_group("sddmm");
    configure(&mut group);
    let (m, k, n, sparsity) = (MK, MK, N, SPARSITY);
    let mut rng = seed_rng(SEED);
    let (a, _) = random_csr(m, k, sparsity, &mut rng);
    let l = random_values(m * n, &mut rng);
    let r = random_values(k * n, &mut rng);
    let mut v_sparse = aligned_zeros(a.nnz());
    let mut c_dense = aligned_zeros(m * k);
    let p = a.pattern();

    let run_sparse = |v: &mut [f32]| {
        cpu::sddmm(black_box(v), p, &l, &r, n, 1.0, Accum::Replace, par).expect("sddmm")
    };
    let run_dense = |c: &mut [f32]| {
        let (l, r) = (&l, &r);
        cpu::dense::gemm_ex(
            black_box(c),
            l,
            Trans::No,
            r,
            Trans::Yes,
            m,
            n,
            k,
            1.0,
            Accum::Replace,
            par,
        )
        .expect("gemm_ex")
    };
    run_sparse(&mut v_sparse);
    run_dense(&mut c_dense);
    let sampled: Vec<f32> = p
        .row_indices()
        .iter()
        .zip(p.col_idx())
        .map(|(&i, &j)| c_dense[i as usize * k + j as usize])
        .collect();
    let param = shape(m, k, n, sparsity);
    check_agree(&format!("sddmm {param}"), &v_sparse, &sampled);

    bench_pair(
        &mut group,
        &param,
        a.nnz() * n,
        m * k * n,
        || run_sparse(&mut v_sparse),
        || run_dense(&mut c_dense),
    );
    group.finish();
}

/// `C[M×N] = A·B`, A block-sparse (8×8 blocks), against `gemm` with A dense.
fn bench_bsr_spmm(c: &mut Criterion) {
    let par = Par::current();
    let mut group = c.benchmark_group("bsr_spmm");
    configure(&mut group);
    let (m, k, n, sparsity) = (MK, MK, N, SPARSITY);
    let mut rng = seed_rng(SEED);
    let nnzb = nnz_for_sparsity(m / BLOCK, k / BLOCK, sparsity).expect("valid sparsity");
    let pattern = BsrPattern::random(m / BLOCK, k / BLOCK, BLOCK, BLOCK, nnzb, &mut rng)
        .expect("random BSR pattern");
    let values = random_values(pattern.nnz(), &mut rng);
    let a = Bsr::new(Arc::new(pattern), &values).expect("BSR matrix");
    let a_dense = a.to_dense();
    let b = random_values(k * n, &mut rng);
    let mut c_sparse = aligned_zeros(m * n);
    let mut c_dense = aligned_zeros(m * n);
    let (p, v) = (a.pattern(), a.values());

    let run_sparse = |c: &mut [f32]| {
        cpu::bsr_spmm(black_box(c), p, v, &b, n, 1.0, Accum::Replace, par).expect("bsr_spmm")
    };
    let run_dense = |c: &mut [f32]| {
        cpu::gemm(
            black_box(c),
            &a_dense,
            &b,
            m,
            k,
            n,
            1.0,
            Accum::Replace,
            par,
        )
        .expect("gemm")
    };
    run_sparse(&mut c_sparse);
    run_dense(&mut c_dense);
    let param = format!("{}_b{BLOCK}x{BLOCK}", shape(m, k, n, sparsity));
    check_agree(&format!("bsr_spmm {param}"), &c_sparse, &c_dense);

    bench_pair(
        &mut group,
        &param,
        p.nnz() * n,
        m * k * n,
        || run_sparse(&mut c_sparse),
        || run_dense(&mut c_dense),
    );
    group.finish();
}

/// A 3×3 convolution layer's forward and backward (64 → 64 channels, 28×28, batch 64),
/// the weight sparse against the same weight dense (im2col + gemm): the shape `rewire
/// bench conv` runs by default. Throughput counts the three products' multiply-adds.
fn bench_conv(c: &mut Criterion) {
    let par = Par::current();
    let mut group = c.benchmark_group("conv");
    configure(&mut group);
    let cfg = BenchConfig {
        kernel: Kernel::Conv,
        m: 64,
        k: 64,
        n: 64,
        sparsity: SPARSITY,
        seed: SEED,
        ..BenchConfig::default()
    };
    let mut conv = ConvBench::new(&cfg, par).expect("conv layer");
    let param = format!(
        "c{}to{}_{}x{}_b{}_s{}",
        cfg.k, cfg.m, cfg.image, cfg.image, cfg.n, cfg.sparsity
    );
    let diff = conv.max_rel_diff().expect("conv passes");
    assert!(
        diff <= TOLERANCE,
        "conv {param}: sparse and dense results differ (max rel diff {diff:e})"
    );
    let [m, k, n] = conv.shape();
    let (sparse_madds, dense_madds) = (3 * conv.nnz() * n, 3 * m * k * n);
    let conv = std::cell::RefCell::new(conv);
    bench_pair(
        &mut group,
        &param,
        sparse_madds,
        dense_madds,
        || conv.borrow_mut().run_sparse().expect("conv pass"),
        || conv.borrow_mut().run_dense().expect("conv pass"),
    );
    group.finish();
}

criterion_group!(
    benches,
    bench_spmm,
    bench_spmm_t,
    bench_sddmm,
    bench_bsr_spmm,
    bench_conv
);
criterion_main!(benches);
