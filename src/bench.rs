//! Sparse-vs-dense kernel benchmarks: each configuration times the sparse kernel and the
//! dense `gemm` that computes the same product on the same shape, in the same run, and
//! reports both with their ratio. Times are medians of repeats after a warm-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cpu::{self, dense::Trans, Accum, Par};
use crate::error::{Error, Result};
use crate::sparse::{
    aligned_zeros, nnz_for_sparsity, seed_rng, skewed_row_nnz, AlignedVec, Bsr, BsrPattern,
    CsrPattern, SeedRng,
};
use rand::RngExt;

/// The kernels `rewire bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernel {
    /// `C = A·B`, A CSR
    Spmm,
    /// `C = Aᵀ·B`, A CSR
    SpmmT,
    /// `v = (L·Rᵀ)` sampled at A's pattern
    Sddmm,
    /// `C = A·B`, A block-sparse
    Bsr,
    /// a convolution layer's forward and backward: im2col, `W·col`, `dW`, `dcol = Wᵀ·dZ`,
    /// col2im; `W` sparse against the same layer with `W` dense
    Conv,
}

impl Kernel {
    /// The vector width, in bits, of this kernel's sparse side on the CPU in this build
    /// ([`VectorBits`](crate::cpu::VectorBits)).
    pub fn cpu_vector_bits(self) -> u32 {
        let v = crate::cpu::vector_bits();
        match self {
            Kernel::Spmm | Kernel::SpmmT | Kernel::Sddmm => v.spmm_sddmm,
            _ => v.other_sparse,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Spmm => "spmm",
            Kernel::SpmmT => "spmm-t",
            Kernel::Sddmm => "sddmm",
            Kernel::Bsr => "bsr",
            Kernel::Conv => "conv",
        }
    }
}

/// How the random pattern's live entries are spread over rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternKind {
    /// every position equally likely
    Uniform,
    /// a tenth of the rows hold half of the entries
    Skewed,
}

/// One benchmark configuration.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// kernel to measure
    pub kernel: Kernel,
    /// rows of the sparse matrix A (conv: output channels)
    pub m: usize,
    /// columns of A (conv: input channels; A has `k·ksize²` columns)
    pub k: usize,
    /// the dense dimension, the batch (conv: images per batch; the product's N is
    /// `n·image²`)
    pub n: usize,
    /// fraction of A's entries (blocks for BSR) that are not stored
    pub sparsity: f64,
    /// block edge for BSR (square blocks)
    pub block: usize,
    /// threads for both the sparse and the dense kernel
    pub threads: usize,
    /// spread of the live entries over rows
    pub pattern: PatternKind,
    /// seed of the pattern and data
    pub seed: u64,
    /// minimum time spent timing each kernel
    pub min_time: Duration,
    /// conv: image height and width
    pub image: usize,
    /// conv: kernel side (padding keeps the image size)
    pub ksize: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            kernel: Kernel::Spmm,
            m: 2048,
            k: 2048,
            n: 128,
            sparsity: 0.9,
            block: 8,
            threads: rayon::current_num_threads(),
            pattern: PatternKind::Uniform,
            seed: 0,
            min_time: Duration::from_millis(300),
            image: 28,
            ksize: 3,
        }
    }
}

/// What one configuration measured. For `conv`, `m` is the output channels, `k` the
/// patch length (input channels · kernel area), `n` batch · output positions, and the
/// GFLOP/s count the three products of a forward and backward pass.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// kernel measured
    pub kernel: Kernel,
    /// rows of A
    pub m: usize,
    /// columns of A
    pub k: usize,
    /// dense dimension
    pub n: usize,
    /// requested sparsity
    pub sparsity: f64,
    /// block edge (BSR only)
    pub block: Option<usize>,
    /// pattern spread
    pub pattern: PatternKind,
    /// threads used
    pub threads: usize,
    /// stored entries of A (all entries of stored blocks for BSR)
    pub nnz: usize,
    /// median time of the sparse kernel, milliseconds
    pub sparse_ms: f64,
    /// median time of the dense kernel on the same shape, milliseconds
    pub dense_ms: f64,
    /// 2·nnz·N / sparse time, in GFLOP/s
    pub sparse_gflops: f64,
    /// 2·M·K·N / dense time, in GFLOP/s
    pub dense_gflops: f64,
    /// dense time / sparse time
    pub speedup: f64,
    /// sparse GFLOP/s ÷ dense GFLOP/s
    pub gflops_ratio: f64,
    /// largest |sparse − dense| over the output, relative to the largest |dense| value:
    /// both kernels compute the same product, and this checks it
    pub max_rel_diff: f64,
    /// timed calls of the kernel with fewer calls (timed in alternating rounds)
    pub repeats: usize,
    /// where both ran: `cpu`, or the CUDA device's name
    pub device: String,
    /// vector width of the sparse kernel on the CPU, in bits ([`VectorBits`]; absent
    /// on a GPU)
    ///
    /// [`VectorBits`]: crate::cpu::VectorBits
    pub sparse_vector_bits: Option<u32>,
    /// vector width of the dense `gemm` on the CPU, in bits (absent on a GPU)
    pub dense_vector_bits: Option<u32>,
}

/// Median per-call wall times of `a` and of `b`. The two are timed in alternating
/// rounds (a round is a few back-to-back calls, about 60 ms, of one of them), so that both
/// see the same machine load while each runs in its own steady state; one warm-up call
/// each first, then rounds until each has run for `min_time` (at least 5 calls each).
pub fn time_pair(
    min_time: Duration,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) -> (Duration, Duration, usize) {
    let warm = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let round_len = |first: Duration| {
        (ROUND.as_secs_f64() / first.as_secs_f64().max(1e-9)).clamp(1.0, 100.0) as usize
    };
    let (ra, rb) = (round_len(warm(&mut a)), round_len(warm(&mut b)));
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let (mut sum_a, mut sum_b) = (Duration::ZERO, Duration::ZERO);
    while ta.len() < 5
        || tb.len() < 5
        || ((sum_a < min_time || sum_b < min_time) && ta.len() + tb.len() < 20_000)
    {
        for (f, times, sum, reps) in [
            (&mut a as &mut dyn FnMut(), &mut ta, &mut sum_a, ra),
            (&mut b, &mut tb, &mut sum_b, rb),
        ] {
            for _ in 0..reps {
                let t = warm(f);
                times.push(t);
                *sum += t;
            }
        }
    }
    let median = |t: &mut Vec<Duration>| {
        t.sort();
        t[t.len() / 2]
    };
    let n = ta.len().min(tb.len());
    (median(&mut ta), median(&mut tb), n)
}

/// Length of one timing round of [`time_pair`].
const ROUND: Duration = Duration::from_millis(60);

fn random_values(len: usize, rng: &mut SeedRng) -> AlignedVec {
    let mut v = aligned_zeros(len);
    for x in v.iter_mut() {
        *x = rng.random_range(-1.0f32..1.0);
    }
    v
}

fn csr_pattern(cfg: &BenchConfig, rng: &mut SeedRng) -> Result<CsrPattern> {
    let nnz = nnz_for_sparsity(cfg.m, cfg.k, cfg.sparsity)?;
    match cfg.pattern {
        PatternKind::Uniform => CsrPattern::random(cfg.m, cfg.k, nnz, rng),
        PatternKind::Skewed => {
            let lengths = skewed_row_nnz(cfg.m, cfg.k, nnz, 0.1, 0.5)?;
            CsrPattern::random_rows(cfg.k, &lengths, rng)
        }
    }
}

/// The entries of a dense `rows × cols` matrix at the live positions of `pattern`, in
/// pattern order.
pub(crate) fn sample(pattern: &CsrPattern, dense: &[f32]) -> Vec<f32> {
    let k = pattern.ncols();
    pattern
        .row_indices()
        .iter()
        .zip(pattern.col_idx())
        .map(|(&i, &j)| dense[i as usize * k + j as usize])
        .collect()
}

pub(crate) fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

/// Bytes of host memory one configuration needs, roughly: the dense baseline's matrix,
/// the dense operands and both outputs (for `conv`, both layers' im2col matrices,
/// outputs and gradients).
pub fn host_bytes(cfg: &BenchConfig) -> u64 {
    let (m, k, n) = (cfg.m as u64, cfg.k as u64, cfg.n as u64);
    let floats = match cfg.kernel {
        Kernel::Conv => {
            let patch = k * (cfg.ksize * cfg.ksize) as u64;
            let cols = n * (cfg.image * cfg.image) as u64;
            // per layer: im2col and its gradient, output and its gradient, the input
            // and its gradient; plus the two weights
            2 * (2 * patch * cols + 2 * m * cols + 2 * k * cols) + 2 * m * patch
        }
        // dense A, B, L and both outputs, the sparse values and indices (and the
        // transposed pattern's permutation)
        _ => m * k + 4 * m.max(k) * n + (3.0 * (1.0 - cfg.sparsity) * (m * k) as f64) as u64,
    };
    floats.saturating_mul(4)
}

/// An error where `cfg` would need more memory than the machine has available, rather
/// than an abort part way through allocating it.
pub fn check_memory(cfg: &BenchConfig) -> Result<()> {
    let what = match cfg.kernel {
        Kernel::Conv => format!(
            "conv {} → {} channels, {k}×{k}, {i}×{i}, batch {} (the dense layer included)",
            cfg.k,
            cfg.m,
            cfg.n,
            k = cfg.ksize,
            i = cfg.image
        ),
        _ => format!(
            "{} at M={} K={} N={} (the dense baseline included)",
            cfg.kernel.name(),
            cfg.m,
            cfg.k,
            cfg.n
        ),
    };
    crate::error::check_memory("m/k/n", what, host_bytes(cfg))
}

impl BenchConfig {
    /// Checks that the configuration can run and times some work: every dimension at
    /// least 1, at least one stored entry (block, for BSR), BSR blocks that tile the
    /// matrix, an odd convolution kernel (same padding), the memory it needs. [`run`]
    /// checks the same first; a caller planning a sweep can check it all before timing
    /// any.
    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 {
            return Err(Error::arg("threads", "must be at least 1"));
        }
        for (name, v) in [("m", self.m), ("k", self.k), ("n", self.n)] {
            if v == 0 {
                return Err(Error::arg(
                    name,
                    "must be at least 1 (0 leaves nothing to time)",
                ));
            }
        }
        let stored = match self.kernel {
            Kernel::Bsr => {
                let bs = self.block;
                if bs == 0 || !self.m.is_multiple_of(bs) || !self.k.is_multiple_of(bs) {
                    return Err(Error::arg(
                        "block",
                        format!(
                            "a {}×{} matrix does not divide into {bs}×{bs} blocks",
                            self.m, self.k
                        ),
                    ));
                }
                nnz_for_sparsity(self.m / bs, self.k / bs, self.sparsity)?
            }
            Kernel::Conv => {
                if self.image == 0 || self.ksize.is_multiple_of(2) {
                    return Err(Error::arg(
                        "conv",
                        format!(
                            "needs an image of at least 1×1 and an odd kernel side (same \
                             padding), got image {} and kernel {}",
                            self.image, self.ksize
                        ),
                    ));
                }
                nnz_for_sparsity(
                    self.m,
                    self.k.saturating_mul(self.ksize * self.ksize),
                    self.sparsity,
                )?
            }
            _ => nnz_for_sparsity(self.m, self.k, self.sparsity)?,
        };
        if stored == 0 {
            return Err(Error::arg(
                "sparsity",
                format!(
                    "{} leaves no stored {} in a {}×{} matrix: nothing to time",
                    self.sparsity,
                    if self.kernel == Kernel::Bsr {
                        "block"
                    } else {
                        "entry"
                    },
                    self.m,
                    self.k
                ),
            ));
        }
        check_memory(self)
    }
}

/// Runs one configuration on a pool of `cfg.threads` threads.
pub fn run(cfg: &BenchConfig) -> Result<BenchResult> {
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads)
        .build()
        .map_err(|e| Error::arg("threads", e))?;
    pool.install(|| run_in_pool(cfg))
}

/// The operands of one configuration: the sparse matrix (CSR or BSR) and its dense
/// equivalent, the dense right operand `b` and SDDMM's left operand `l`.
pub(crate) struct Operands {
    pub nnz: usize,
    pub a_dense: Vec<f32>,
    pub sparse: SparseOp,
    pub block: Option<usize>,
    pub b: AlignedVec,
    pub l: AlignedVec,
    /// length of the sparse kernel's output
    pub out_len: usize,
}

pub(crate) fn operands(cfg: &BenchConfig) -> Result<Operands> {
    let (m, k, n) = (cfg.m, cfg.k, cfg.n);
    let mut rng = seed_rng(cfg.seed);
    let mut block = None;

    // The sparse operand (as CSR or BSR) and its dense equivalent.
    let (nnz, a_dense, sparse): (usize, Vec<f32>, SparseOp) = match cfg.kernel {
        Kernel::Bsr => {
            let bs = cfg.block;
            if bs == 0 || m % bs != 0 || k % bs != 0 {
                return Err(Error::arg(
                    "block",
                    format!("a {m}×{k} matrix does not divide into {bs}×{bs} blocks"),
                ));
            }
            block = Some(bs);
            let nnzb = nnz_for_sparsity(m / bs, k / bs, cfg.sparsity)?;
            let pattern = BsrPattern::random(m / bs, k / bs, bs, bs, nnzb, &mut rng)?;
            let values = random_values(pattern.nnz(), &mut rng);
            let bsr = Bsr::new(Arc::new(pattern), &values)?;
            (bsr.pattern().nnz(), bsr.to_dense(), SparseOp::Bsr(bsr))
        }
        _ => {
            let pattern = csr_pattern(cfg, &mut rng)?;
            let values = random_values(pattern.nnz(), &mut rng);
            let csr = crate::sparse::Csr::new(Arc::new(pattern), &values)?;
            (csr.nnz(), csr.to_dense(), SparseOp::Csr(csr))
        }
    };

    // Dense operands and outputs for the two computations of the same product.
    let (b_rows, out_len) = match cfg.kernel {
        Kernel::Spmm | Kernel::Bsr | Kernel::Conv => (k, m * n),
        Kernel::SpmmT => (m, k * n),
        Kernel::Sddmm => (k, nnz),
    };
    let b = random_values(b_rows * n, &mut rng);
    let l = random_values(m * n, &mut rng); // SDDMM's left operand
    Ok(Operands {
        nnz,
        a_dense,
        sparse,
        block,
        b,
        l,
        out_len,
    })
}

fn run_in_pool(cfg: &BenchConfig) -> Result<BenchResult> {
    let (m, k, n) = (cfg.m, cfg.k, cfg.n);
    let par = if cfg.threads == 1 {
        Par::Seq
    } else {
        Par::Rayon(cfg.threads)
    };
    if cfg.kernel == Kernel::Conv {
        return run_conv(cfg, par);
    }
    let Operands {
        nnz,
        a_dense,
        sparse,
        block,
        b,
        l,
        out_len,
    } = operands(cfg)?;
    let mut c_sparse = aligned_zeros(out_len);
    let mut c_dense = aligned_zeros(match cfg.kernel {
        Kernel::Sddmm => m * k,
        _ => out_len,
    });

    let one = Accum::Replace;
    let mut sparse_call = || -> Result<()> {
        match (&sparse, cfg.kernel) {
            (SparseOp::Csr(a), Kernel::Spmm) => {
                cpu::spmm(&mut c_sparse, a.pattern(), a.values(), &b, n, 1.0, one, par)
            }
            (SparseOp::Csr(a), Kernel::SpmmT) => {
                cpu::spmm_t(&mut c_sparse, a.pattern(), a.values(), &b, n, 1.0, one, par)
            }
            (SparseOp::Csr(a), Kernel::Sddmm) => {
                cpu::sddmm(&mut c_sparse, a.pattern(), &l, &b, n, 1.0, one, par)
            }
            (SparseOp::Bsr(a), _) => {
                cpu::bsr_spmm(&mut c_sparse, a.pattern(), a.values(), &b, n, 1.0, one, par)
            }
            (SparseOp::Csr(_), Kernel::Bsr | Kernel::Conv) => {
                unreachable!("BSR gets a BSR operand; conv runs elsewhere")
            }
        }
    };
    let mut dense_call = || -> Result<()> {
        match cfg.kernel {
            Kernel::Spmm | Kernel::Bsr | Kernel::Conv => {
                cpu::gemm(&mut c_dense, &a_dense, &b, m, k, n, 1.0, one, par)
            }
            Kernel::SpmmT => cpu::dense::gemm_ex(
                &mut c_dense,
                &a_dense,
                Trans::Yes,
                &b,
                Trans::No,
                k,
                m,
                n,
                1.0,
                one,
                par,
            ),
            Kernel::Sddmm => cpu::dense::gemm_ex(
                &mut c_dense,
                &l,
                Trans::No,
                &b,
                Trans::Yes,
                m,
                n,
                k,
                1.0,
                one,
                par,
            ),
        }
    };
    sparse_call()?; // surface shape errors before timing
    dense_call()?;
    let (ts, td, repeats) = time_pair(
        cfg.min_time,
        || sparse_call().expect("checked above"),
        || dense_call().expect("checked above"),
    );

    let max_rel_diff = match (&sparse, cfg.kernel) {
        (SparseOp::Csr(a), Kernel::Sddmm) => {
            max_rel_diff(&c_sparse, &sample(a.pattern(), &c_dense))
        }
        _ => max_rel_diff(&c_sparse, &c_dense),
    };
    Ok(result(
        cfg,
        [m, k, n],
        nnz,
        block,
        (ts, td, repeats),
        1.0,
        max_rel_diff,
    ))
}

/// Assembles a result from the timings; `products` counts the products of shape
/// `M×K×N` each timed call computes.
pub(crate) fn result(
    cfg: &BenchConfig,
    [m, k, n]: [usize; 3],
    nnz: usize,
    block: Option<usize>,
    (ts, td, repeats): (Duration, Duration, usize),
    products: f64,
    max_rel_diff: f64,
) -> BenchResult {
    let (sparse_s, dense_s) = (ts.as_secs_f64(), td.as_secs_f64());
    let sparse_gflops = products * 2.0 * nnz as f64 * n as f64 / sparse_s.max(1e-12) / 1e9;
    let dense_gflops = products * 2.0 * m as f64 * k as f64 * n as f64 / dense_s.max(1e-12) / 1e9;
    BenchResult {
        kernel: cfg.kernel,
        m,
        k,
        n,
        sparsity: cfg.sparsity,
        block,
        pattern: cfg.pattern,
        threads: cfg.threads,
        nnz,
        sparse_ms: sparse_s * 1e3,
        dense_ms: dense_s * 1e3,
        sparse_gflops,
        dense_gflops,
        speedup: dense_s / sparse_s.max(1e-12),
        gflops_ratio: if dense_gflops > 0.0 {
            sparse_gflops / dense_gflops
        } else {
            0.0
        },
        max_rel_diff,
        repeats,
        device: "cpu".into(),
        sparse_vector_bits: Some(cfg.kernel.cpu_vector_bits()),
        dense_vector_bits: Some(crate::cpu::vector_bits().dense),
    }
}

/// One convolution layer (`cfg.m` output channels, `cfg.k` input channels, batch
/// `cfg.n`, `image × image` inputs, `ksize × ksize` kernels with same padding), forward
/// and backward through the tape exactly as training runs it ([`Tape::conv2d`]): the
/// weight sparse, applied directly to the image batch ([`ConvBench::run_sparse`]),
/// against the same weights stored dense, im2col + gemm ([`ConvBench::run_dense`]).
/// What `rewire bench conv` and the criterion bench time.
///
/// [`Tape::conv2d`]: crate::autograd::Tape::conv2d
pub struct ConvBench {
    geom: crate::autograd::Conv2dGeom,
    batch: usize,
    pattern: Arc<CsrPattern>,
    x: AlignedVec,
    dz: AlignedVec,
    sparse: ConvSide,
    dense: ConvSide,
}

/// One side of a [`ConvBench`]: its tape and its weight.
struct ConvSide {
    tape: crate::autograd::Tape,
    params: crate::nn::ParamStore,
    w: crate::nn::ParamId,
}

impl ConvBench {
    /// Builds both layers from `cfg` (`m`, `k`, `n`, `image`, `ksize`, `sparsity`,
    /// `pattern`, `seed`) and runs each pass once.
    pub fn new(cfg: &BenchConfig, par: Par) -> Result<Self> {
        use crate::autograd::{Conv2dGeom, Tape};
        use crate::nn::{Param, ParamShape, ParamStore};

        let geom = Conv2dGeom {
            channels: cfg.k,
            h: cfg.image,
            w: cfg.image,
            kh: cfg.ksize,
            kw: cfg.ksize,
            stride: 1,
            pad: cfg.ksize / 2,
        };
        geom.validate()?;
        if cfg.m == 0 || cfg.n == 0 {
            return Err(Error::arg(
                "conv",
                "output channels and batch must be positive",
            ));
        }
        let mut rng = seed_rng(cfg.seed);
        let (m, k) = (cfg.m, geom.patch_len());
        let n = geom.out_h() * geom.out_w() * cfg.n;
        let pattern = Arc::new(csr_pattern(
            &BenchConfig {
                m,
                k,
                ..cfg.clone()
            },
            &mut rng,
        )?);
        let values = random_values(pattern.nnz(), &mut rng);
        let dense = crate::sparse::Csr::new(pattern.clone(), &values)?.to_dense();
        let mut sparse_params = ParamStore::new();
        let ws = sparse_params.add(Param::new(
            "w",
            ParamShape::Sparse {
                pattern: pattern.clone(),
            },
            values,
            true,
        )?);
        let mut dense_params = ParamStore::new();
        let wd = dense_params.add(Param::new(
            "w",
            ParamShape::Dense { rows: m, cols: k },
            crate::sparse::aligned_from_slice(&dense),
            true,
        )?);
        let x = random_values(geom.channels * geom.h * geom.w * cfg.n, &mut rng);
        let dz = random_values(m * n, &mut rng);
        let mut bench = ConvBench {
            geom,
            batch: cfg.n,
            pattern,
            x,
            dz,
            sparse: ConvSide {
                tape: Tape::new(par),
                params: sparse_params,
                w: ws,
            },
            dense: ConvSide {
                tape: Tape::new(par),
                params: dense_params,
                w: wd,
            },
        };
        bench.run_sparse()?;
        bench.run_dense()?;
        Ok(bench)
    }

    /// `[M, K, N]` of the layer's product: output channels, in·kh·kw, batch·OH·OW.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.pattern.nrows(),
            self.pattern.ncols(),
            self.geom.out_h() * self.geom.out_w() * self.batch,
        ]
    }

    /// Live weights of the sparse layer.
    pub fn nnz(&self) -> usize {
        self.pattern.nnz()
    }

    /// One forward and backward pass of `side`: its input and output variables.
    fn pass(
        side: &mut ConvSide,
        geom: crate::autograd::Conv2dGeom,
        x: &[f32],
        dz: &[f32],
        batch: usize,
    ) -> Result<(crate::autograd::Var, crate::autograd::Var)> {
        let tape = &mut side.tape;
        tape.reset();
        let xv = tape.input(x, geom.channels * geom.h * geom.w, batch, true)?;
        let z = tape.conv2d(&side.params, xv, side.w, geom)?;
        side.params.zero_grad();
        tape.backward_from(z, dz, &mut side.params)?;
        Ok((xv, z))
    }

    /// Forward and backward with the weight sparse.
    pub fn run_sparse(&mut self) -> Result<()> {
        Self::pass(&mut self.sparse, self.geom, &self.x, &self.dz, self.batch).map(|_| ())
    }

    /// Forward and backward with the weight dense.
    pub fn run_dense(&mut self) -> Result<()> {
        Self::pass(&mut self.dense, self.geom, &self.x, &self.dz, self.batch).map(|_| ())
    }

    /// Runs both and returns the largest relative difference of their outputs, input
    /// gradients and weight gradients (the dense one sampled at the live positions).
    pub fn max_rel_diff(&mut self) -> Result<f64> {
        use crate::autograd::{Tape, Var};
        let (xs, zs) = Self::pass(&mut self.sparse, self.geom, &self.x, &self.dz, self.batch)?;
        let (xd, zd) = Self::pass(&mut self.dense, self.geom, &self.x, &self.dz, self.batch)?;
        let grad = |t: &Tape, v: Var| t.grad(v).map(<[f32]>::to_vec).unwrap_or_default();
        let (s, d) = (&self.sparse, &self.dense);
        let dw_sampled = sample(&self.pattern, &d.params.get(d.w).grad);
        Ok(max_rel_diff(s.tape.value(zs), d.tape.value(zd))
            .max(max_rel_diff(&grad(&s.tape, xs), &grad(&d.tape, xd)))
            .max(max_rel_diff(&s.params.get(s.w).grad, &dw_sampled)))
    }
}

/// Times a [`ConvBench`] built from `cfg`.
fn run_conv(cfg: &BenchConfig, par: Par) -> Result<BenchResult> {
    let mut bench = ConvBench::new(cfg, par)?;
    let cell = std::cell::RefCell::new(&mut bench);
    let times = time_pair(
        cfg.min_time,
        || cell.borrow_mut().run_sparse().expect("ran once above"),
        || cell.borrow_mut().run_dense().expect("ran once above"),
    );
    let diff = bench.max_rel_diff()?;
    Ok(result(
        cfg,
        bench.shape(),
        bench.nnz(),
        None,
        times,
        3.0,
        diff,
    ))
}

pub(crate) enum SparseOp {
    Csr(crate::sparse::Csr),
    Bsr(Bsr),
}

/// The default sweep: M = K ∈ {1024, 4096}, N ∈ {1, 128}, sparsity ∈
/// {0.5, 0.8, 0.9, 0.95, 0.98, 0.99}; for `conv`, 64 → 64 channels of 28×28, batch 64,
/// at the same sparsities.
pub fn default_sweep(base: &BenchConfig) -> Vec<BenchConfig> {
    let mut out = Vec::new();
    if base.kernel == Kernel::Conv {
        for sparsity in [0.5, 0.8, 0.9, 0.95, 0.98, 0.99] {
            out.push(BenchConfig {
                m: 64,
                k: 64,
                n: 64,
                sparsity,
                ..base.clone()
            });
        }
        return out;
    }
    for mk in [1024, 4096] {
        for n in [1, 128] {
            for sparsity in [0.5, 0.8, 0.9, 0.95, 0.98, 0.99] {
                out.push(BenchConfig {
                    m: mk,
                    k: mk,
                    n,
                    sparsity,
                    ..base.clone()
                });
            }
        }
    }
    out
}

/// Header of the table [`table_row`] fills.
pub fn table_header() -> String {
    format!(
        "{:<7} {:>5} {:>5} {:>5} {:>6} {:>5} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7}",
        "kernel",
        "M",
        "K",
        "N",
        "spars",
        "block",
        "nnz",
        "sparse_ms",
        "dense_ms",
        "sp_GF/s",
        "dn_GF/s",
        "speedup",
        "GF_ratio"
    )
}

/// One result as a table row.
pub fn table_row(r: &BenchResult) -> String {
    format!(
        "{:<7} {:>5} {:>5} {:>5} {:>6.3} {:>5} {:>9} {:>10.3} {:>10.3} {:>9.2} {:>9.2} {:>7.2}x {:>7.2}",
        r.kernel.name(),
        r.m,
        r.k,
        r.n,
        r.sparsity,
        r.block.map_or("-".to_string(), |b| format!("{b}x{b}")),
        r.nnz,
        r.sparse_ms,
        r.dense_ms,
        r.sparse_gflops,
        r.dense_gflops,
        r.speedup,
        r.gflops_ratio
    )
}
