//! The CUDA backend: every kernel source compiles with NVRTC (needs only libnvrtc),
//! asking for a device where there is none is an error, and every GPU kernel agrees
//! with the CPU reference over awkward shapes (needs a device).
//!
//! Without NVRTC or a device the tests print why and pass; with `REWIRE_REQUIRE_CUDA=1`
//! they fail instead.
#![cfg(feature = "cuda")]

use std::sync::{Arc, OnceLock};

use rand::RngExt;
use rewire::cpu::reference::{bsr_spmm_ref, gemm_ref, sddmm_ref, spmm_ref, spmm_t_ref};
use rewire::cuda::{self, CudaDevice, GpuBsr, GpuCsr};
use rewire::sparse::{seed_rng, BsrPattern, CsrPattern, SeedRng};
use rewire::Accum;

fn required() -> bool {
    std::env::var("REWIRE_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// Skips (printing why) or, where CUDA is required, fails.
fn skip(why: &str) {
    assert!(!required(), "REWIRE_REQUIRE_CUDA=1 but {why}");
    eprintln!("skipped: {why}");
}

fn device() -> Option<Arc<CudaDevice>> {
    static DEV: OnceLock<Result<Arc<CudaDevice>, String>> = OnceLock::new();
    match DEV.get_or_init(|| CudaDevice::new(0).map_err(|e| e.to_string())) {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            skip(&format!("no CUDA device: {e}"));
            None
        }
    }
}

#[test]
fn every_kernel_source_compiles_with_nvrtc() {
    if !cuda::nvrtc_present() {
        return skip("NVRTC (libnvrtc) is not installed");
    }
    for (file, _) in rewire::kernels::SOURCES {
        if !file.ends_with(".cu") {
            continue;
        }
        for arch in ["sm_80", "sm_90"] {
            let ptx = cuda::compile(file, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            let entries: &[&str] = match *file {
                "sparse.cu" => &[
                    "spmm_csr_f32_vec4",
                    "sddmm_csr_f32_vec1",
                    "bsr_spmm_f32_b16",
                ],
                "select.cu" => &[
                    "rigl_keys_f32",
                    "rigl_mask_live_u32",
                    "radix_hist_u32",
                    "select_collect_u32",
                ],
                "train.cu" => &["bias_act_f32", "softmax_ce_f32", "adam_f32"],
                "cnn.cu" => &[
                    "im2col_f32",
                    "col2im_f32",
                    "maxpool_f32",
                    "maxpool_backward_f32",
                    "avgpool_f32",
                    "avgpool_backward_f32",
                    "batch_norm_f32",
                    "batch_norm_backward_f32",
                    "batch_norm_running_f32",
                ],
                _ => &[],
            };
            for entry in entries {
                assert!(text.contains(entry), "{file} for {arch} lacks {entry}");
            }
            // the machine code devices load first: an ELF image naming the same entries
            let bin = cuda::compile_cubin(file, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                bin.starts_with(b"\x7fELF"),
                "{file} for {arch}: not an ELF CUBIN"
            );
            for entry in entries {
                assert!(
                    bin.windows(entry.len()).any(|w| w == entry.as_bytes()),
                    "{file}'s CUBIN for {arch} lacks {entry}"
                );
            }
        }
    }
}

#[test]
fn asking_for_cuda_without_a_driver_is_an_error() {
    if cuda::driver_present() {
        return eprintln!("skipped: this machine has a CUDA driver");
    }
    let err = CudaDevice::new(0).expect_err("no driver, no device");
    assert!(err.to_string().contains("CUDA"), "{err}");
}

/// A device buffer's logical contents (an empty one is held in one padding element).
fn down(dev: &CudaDevice, buf: &cuda::CudaSlice<f32>, len: usize) -> Vec<f32> {
    let mut v = dev.download(buf).unwrap();
    v.truncate(len);
    v
}

fn rand_vec(len: usize, rng: &mut SeedRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `got` within `1e-4·L1` of `exp`, `L1` the same sum on absolute values.
fn assert_close(what: &str, got: &[f32], exp: &[f32], bound: &[f32]) {
    assert_eq!(got.len(), exp.len(), "{what}: lengths");
    for (i, ((g, e), b)) in got.iter().zip(exp).zip(bound).enumerate() {
        let tol = 1e-4 * b.abs().max(1e-3);
        assert!(
            (g - e).abs() <= tol,
            "{what}[{i}]: gpu {g} vs cpu {e} (tol {tol})"
        );
    }
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The reference result of `run` on a destination starting as `c0`, and its error bound:
/// the same computation on absolute values (`run` gets the operand map to apply).
fn expected(
    c0: &[f32],
    accum: Accum,
    run: impl Fn(&mut [f32], &dyn Fn(&[f32]) -> Vec<f32>, Accum),
) -> (Vec<f32>, Vec<f32>) {
    let mut exp = c0.to_vec();
    run(&mut exp, &|v| v.to_vec(), accum);
    let mut bound = abs(c0);
    let abs_accum = match accum {
        Accum::Add(b) => Accum::Add(b.abs()),
        a => a,
    };
    run(&mut bound, &|v| abs(v), abs_accum);
    (exp, bound)
}

fn patterns(rng: &mut SeedRng) -> Vec<CsrPattern> {
    let mut out = Vec::new();
    for &(m, k, density) in &[
        (1, 1, 1.0),
        (7, 63, 0.3),
        (63, 7, 0.5),
        (130, 257, 0.05),
        (300, 200, 1.0),
    ] {
        let nnz = ((m * k) as f64 * density).round() as usize;
        out.push(CsrPattern::random(m, k, nnz, rng).unwrap());
    }
    // rows 1 and 3 empty, column 0 unused
    out.push(CsrPattern::new(5, 6, vec![0, 2, 2, 5, 5, 6], vec![1, 4, 2, 3, 5, 5]).unwrap());
    // no entries at all
    out.push(CsrPattern::new(4, 3, vec![0; 5], vec![]).unwrap());
    out
}

#[test]
fn gpu_csr_kernels_match_the_cpu_reference() {
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(1);
    for p in patterns(&mut rng) {
        let (m, k) = (p.nrows(), p.ncols());
        let gp = GpuCsr::new(&dev, &p).unwrap();
        let values = rand_vec(p.nnz(), &mut rng);
        let dv = dev.upload(&values).unwrap();
        for n in [1, 7, 8, 130, 256] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 2.0)] {
                let accum = if beta == 0.0 {
                    Accum::Replace
                } else {
                    Accum::Add(beta)
                };
                let label = format!("{m}x{k} nnz {} n {n} α {alpha} β {beta}", p.nnz());
                // spmm
                let b = rand_vec(k * n, &mut rng);
                let c0 = rand_vec(m * n, &mut rng);
                let (exp, bound) = expected(&c0, accum, |out, abs_of, acc| {
                    spmm_ref(out, &p, &abs_of(&values), &abs_of(&b), n, alpha, acc)
                });
                let mut dc = dev.upload(&c0).unwrap();
                dev.spmm(&mut dc, &gp, &dv, &dev.upload(&b).unwrap(), n, alpha, beta)
                    .unwrap();
                let got = down(&dev, &dc, exp.len());
                assert_close(&format!("spmm {label}"), &got, &exp, &bound);
                // spmm_t
                let bt = rand_vec(m * n, &mut rng);
                let ct = rand_vec(k * n, &mut rng);
                let (exp, bound) = expected(&ct, accum, |out, abs_of, acc| {
                    spmm_t_ref(out, &p, &abs_of(&values), &abs_of(&bt), n, alpha, acc)
                });
                let mut dc = dev.upload(&ct).unwrap();
                dev.spmm_t(&mut dc, &gp, &dv, &dev.upload(&bt).unwrap(), n, alpha, beta)
                    .unwrap();
                let got = down(&dev, &dc, exp.len());
                assert_close(&format!("spmm_t {label}"), &got, &exp, &bound);
                // sddmm
                let l = rand_vec(m * n, &mut rng);
                let r = rand_vec(k * n, &mut rng);
                let v0 = rand_vec(p.nnz(), &mut rng);
                let (exp, bound) = expected(&v0, accum, |out, abs_of, acc| {
                    sddmm_ref(out, &p, &abs_of(&l), &abs_of(&r), n, alpha, acc)
                });
                let mut dout = dev.upload(&v0).unwrap();
                let (dl, dr) = (dev.upload(&l).unwrap(), dev.upload(&r).unwrap());
                dev.sddmm(&mut dout, &gp, &dl, &dr, n, alpha, beta).unwrap();
                let got = down(&dev, &dout, exp.len());
                assert_close(&format!("sddmm {label}"), &got, &exp, &bound);
            }
        }
    }
}

#[test]
fn gpu_bsr_kernel_matches_the_cpu_reference() {
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(2);
    for bs in [4, 8, 16] {
        for &(mb, kb, nnzb) in &[(1, 1, 1), (5, 7, 12), (16, 9, 0), (12, 12, 144)] {
            let p = BsrPattern::random(mb, kb, bs, bs, nnzb, &mut rng).unwrap();
            let gp = GpuBsr::new(&dev, &p).unwrap();
            let values = rand_vec(p.nnz(), &mut rng);
            for n in [1, 7, 128, 300] {
                let b = rand_vec(kb * bs * n, &mut rng);
                let c0 = rand_vec(mb * bs * n, &mut rng);
                let mut exp = c0.clone();
                bsr_spmm_ref(&mut exp, &p, &values, &b, n, 0.5, Accum::Add(2.0));
                let mut bound = abs(&c0);
                bsr_spmm_ref(
                    &mut bound,
                    &p,
                    &abs(&values),
                    &abs(&b),
                    n,
                    0.5,
                    Accum::Add(2.0),
                );
                let mut dc = dev.upload(&c0).unwrap();
                let (dv, db) = (dev.upload(&values).unwrap(), dev.upload(&b).unwrap());
                dev.bsr_spmm(&mut dc, &gp, &dv, &db, n, 0.5, 2.0).unwrap();
                let label = format!("bsr {bs}x{bs} {mb}x{kb} blocks, {nnzb} stored, n {n}");
                assert_close(&label, &dev.download(&dc).unwrap(), &exp, &bound);
            }
        }
    }
}

#[test]
fn cublas_sgemm_matches_the_cpu_reference() {
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(3);
    for &(m, k, n) in &[(1, 1, 1), (7, 63, 8), (130, 65, 257)] {
        let a = rand_vec(m * k, &mut rng);
        let b = rand_vec(k * n, &mut rng);
        let mut exp = vec![0.0; m * n];
        gemm_ref(&mut exp, &a, &b, m, k, n, 1.0, Accum::Replace);
        let mut bound = vec![0.0; m * n];
        gemm_ref(&mut bound, &abs(&a), &abs(&b), m, k, n, 1.0, Accum::Replace);
        let mut dc = dev.zeros(m * n).unwrap();
        let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
        dev.sgemm(&mut dc, &da, &db, (m, k, n), (false, false), 1.0, 0.0)
            .unwrap();
        assert_close(
            &format!("sgemm {m}x{k}x{n}"),
            &dev.download(&dc).unwrap(),
            &exp,
            &bound,
        );
    }
}

/// The settings of the CPU-against-GPU training runs: a cosine schedule, a learning rate
/// for the optimizer, a fixed seed.
fn agreement_config(
    optimizer: rewire::optim::OptimizerConfig,
    rewire: Option<rewire::dst::RewireConfig>,
    epochs: usize,
    batch_size: usize,
) -> rewire::train::TrainConfig {
    use rewire::optim::OptimizerConfig;
    rewire::train::TrainConfig {
        epochs,
        batch_size,
        lr: if matches!(optimizer, OptimizerConfig::Adam { .. }) {
            0.002
        } else {
            0.05
        },
        schedule: rewire::train::Schedule::Cosine { warmup_epochs: 0 },
        optimizer,
        seed: 6,
        max_steps: None,
        progress: false,
        par: rewire::Par::current(),
        rewire,
    }
}

/// The same seeded run on the CPU and on the GPU (no dropout) gives the same curve up to
/// summation order: losses within 1e-3 relative, test accuracy within 0.3 points (2
/// points where the pattern is rewired); the rewiring methods keep their budgets on the
/// device.
#[test]
fn gpu_training_agrees_with_the_cpu() {
    use rewire::data::Dataset;
    use rewire::dst::{MethodKind, RewireConfig};
    use rewire::nn::distribution::Distribution;
    use rewire::nn::{Mlp, MlpConfig, Model};
    use rewire::optim::OptimizerConfig;
    use rewire::train::train;

    let Some(dev) = device() else { return };
    let (tr, te) = Dataset::synthetic(3000, 64, 10, 4).split(2400);
    for (kind, optimizer) in [
        (None, OptimizerConfig::sgd(0.9)),
        (Some(MethodKind::RigL), OptimizerConfig::sgd(0.9)),
        (Some(MethodKind::Set), OptimizerConfig::adam()),
        (Some(MethodKind::Dsr), OptimizerConfig::sgd(0.9)),
        (Some(MethodKind::Gmp), OptimizerConfig::sgd(0.9)),
    ] {
        let dense_to_sparse = kind.is_some_and(|k| k.is_dense_to_sparse());
        let model = || {
            Mlp::new(MlpConfig {
                sparsity: if dense_to_sparse { 0.0 } else { 0.8 },
                sparse_storage: dense_to_sparse,
                distribution: Distribution::Erk,
                seed: 5,
                ..MlpConfig::new(64, &[128, 64], 10)
            })
            .unwrap()
        };
        let rewire = kind.map(|k| RewireConfig {
            delta_t: 20,
            target_sparsity: 0.8,
            ..RewireConfig::defaults(k)
        });
        let cfg = agreement_config(optimizer, rewire, 3, 64);
        let (mut cpu_model, mut gpu_model) = (model(), model());
        let cpu = train(&mut cpu_model, &tr, &te, &cfg, |_| Ok(())).unwrap();
        let gpu = rewire::cuda::train::train_mlp(&dev, &mut gpu_model, &tr, &te, &cfg, |_| Ok(()))
            .unwrap();
        // rewiring chooses from values that differ in their last bits, so those runs
        // may part ways a little (as the CNN test allows); 0.003 is about one of the
        // 600 test samples
        let acc_tol = if kind.is_some() { 0.02 } else { 0.003 };
        assert_runs_agree(&format!("{kind:?}"), kind.is_some(), &cpu, &gpu, acc_tol);
        assert_eq!(cpu_model.live_weights(), gpu_model.live_weights());
    }
}

/// Per epoch of two runs of the same training, the CPU's and the GPU's: without edits
/// (`edits` false: the same arithmetic in another order) losses within 1e-3 relative;
/// test accuracies within `acc_tol` (with edits, chosen from values that differ in the
/// last bits, only the outcome is compared); the same live weights.
fn assert_runs_agree(
    label: &str,
    edits: bool,
    cpu: &[rewire::train::EpochReport],
    gpu: &[rewire::train::EpochReport],
    acc_tol: f64,
) {
    assert_eq!(cpu.len(), gpu.len(), "{label}: epochs");
    for (c, g) in cpu.iter().zip(gpu) {
        println!(
            "{label} epoch {}: loss cpu {:.5} gpu {:.5}, test cpu {:.4} gpu {:.4}",
            c.epoch, c.loss, g.loss, c.test_acc, g.test_acc
        );
        if !edits {
            let tol = 1e-3 * c.loss.abs().max(1e-3);
            assert!((c.loss - g.loss).abs() <= tol, "{label}: loss");
        }
        assert!(
            (c.test_acc - g.test_acc).abs() <= acc_tol,
            "{label}: accuracy"
        );
        assert_eq!(c.live_weights, g.live_weights, "{label}: live weights");
    }
}

/// `got` within `rel·max(|exp|, 1)` of `exp`.
fn assert_near(what: &str, got: &[f32], exp: &[f32], rel: f32) {
    assert_eq!(got.len(), exp.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(exp).enumerate() {
        let tol = rel * e.abs().max(1.0);
        assert!(
            (g - e).abs() <= tol,
            "{what}[{i}]: gpu {g} vs cpu {e} (tol {tol})"
        );
    }
}

#[test]
fn gpu_im2col_and_col2im_match_the_cpu() {
    use rewire::autograd::{Conv2dGeom, Tape};
    use rewire::nn::ParamStore;
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(31);
    // (channels, h, w, k, stride, pad, batch): batch 1, stride 2 with padding, 1×1
    // kernels, odd sizes, windows that skip pixels, padding wider than the stride
    for (channels, h, w, k, stride, pad, batch) in [
        (1, 5, 5, 3, 1, 0, 1),
        (3, 7, 6, 3, 2, 1, 2),
        (2, 4, 4, 1, 1, 0, 3),
        (2, 5, 7, 1, 2, 0, 1),
        (4, 9, 7, 2, 2, 0, 5),
        (2, 6, 5, 5, 3, 2, 1),
        (3, 1, 1, 3, 1, 1, 7),
    ] {
        let geom = Conv2dGeom {
            channels,
            h,
            w,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        let label = format!("{geom:?} batch {batch}");
        let x = rand_vec(channels * h * w * batch, &mut rng);
        let mut tape = Tape::new(rewire::Par::Seq);
        let xv = tape.input(&x, channels * h * w, batch, true).unwrap();
        let col = tape.im2col(xv, geom).unwrap();
        let exp_col = tape.value(col).to_vec();
        let dcol = rand_vec(exp_col.len(), &mut rng);
        tape.backward_from(col, &dcol, &mut ParamStore::new())
            .unwrap();
        let exp_dx = tape.grad(xv).unwrap().to_vec();

        let mut got_col = dev.zeros(exp_col.len()).unwrap();
        dev.im2col(&mut got_col, &dev.upload(&x).unwrap(), &geom, batch)
            .unwrap();
        // a copy: exact
        assert_eq!(
            down(&dev, &got_col, exp_col.len()),
            exp_col,
            "im2col {label}"
        );
        let mut got_dx = dev.zeros(x.len()).unwrap();
        dev.col2im(&mut got_dx, &dev.upload(&dcol).unwrap(), &geom, batch)
            .unwrap();
        assert_near(
            &format!("col2im {label}"),
            &down(&dev, &got_dx, x.len()),
            &exp_dx,
            1e-5,
        );
    }
}

#[test]
fn gpu_pooling_matches_the_cpu() {
    use rewire::autograd::{Pool2dGeom, PoolKind, Tape};
    use rewire::nn::ParamStore;
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(32);
    // (channels, h, w, k, stride, batch): batch 1, overlapping windows, pixels no window
    // covers, 1×1 windows, odd sizes
    for (channels, h, w, k, stride, batch) in [
        (1, 4, 4, 2, 2, 1),
        (3, 7, 5, 3, 2, 2),
        (2, 5, 5, 2, 2, 3),
        (2, 3, 3, 1, 1, 1),
        (1, 6, 7, 3, 1, 4),
        (4, 9, 9, 2, 3, 5),
    ] {
        let geom = Pool2dGeom {
            channels,
            h,
            w,
            k,
            stride,
        };
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let label = format!("{kind:?} {geom:?} batch {batch}");
            let x = rand_vec(channels * h * w * batch, &mut rng);
            let mut tape = Tape::new(rewire::Par::Seq);
            let xv = tape.input(&x, channels * h * w, batch, true).unwrap();
            let y = tape.pool2d(xv, geom, kind).unwrap();
            let exp_y = tape.value(y).to_vec();
            let dy = rand_vec(exp_y.len(), &mut rng);
            tape.backward_from(y, &dy, &mut ParamStore::new()).unwrap();
            let exp_dx = tape.grad(xv).unwrap().to_vec();

            let mut got_y = dev.zeros(exp_y.len()).unwrap();
            let mut arg = dev.upload(&vec![0u32; exp_y.len()]).unwrap();
            dev.pool2d(
                &mut got_y,
                Some(&mut arg),
                &dev.upload(&x).unwrap(),
                &geom,
                kind,
                batch,
            )
            .unwrap();
            assert_near(
                &format!("pool {label}"),
                &down(&dev, &got_y, exp_y.len()),
                &exp_y,
                1e-6,
            );
            let mut got_dx = dev.zeros(x.len()).unwrap();
            dev.pool2d_backward(
                &mut got_dx,
                &dev.upload(&dy).unwrap(),
                Some(&arg),
                &geom,
                kind,
                batch,
            )
            .unwrap();
            assert_near(
                &format!("pool backward {label}"),
                &down(&dev, &got_dx, x.len()),
                &exp_dx,
                1e-5,
            );
        }
    }
}

#[test]
fn gpu_batch_norm_matches_the_cpu() {
    use rewire::autograd::Tape;
    use rewire::nn::{Param, ParamShape, ParamStore};
    use rewire::sparse::aligned_from_slice;
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(33);
    for (rows, n) in [(1, 1), (3, 7), (2, 65), (5, 1000), (4, 4097)] {
        for train in [true, false] {
            let label = format!("{rows}x{n} train {train}");
            let vector = |v: &[f32]| {
                let shape = ParamShape::Vector { len: v.len() };
                Param::new("bn", shape, aligned_from_slice(v), false).unwrap()
            };
            let (gamma_v, beta_v) = (rand_vec(rows, &mut rng), rand_vec(rows, &mut rng));
            let mut params = ParamStore::new();
            let gamma = params.add(vector(&gamma_v));
            let beta = params.add(vector(&beta_v));
            // a shifted, scaled input, so that the mean matters
            let x: Vec<f32> = rand_vec(rows * n, &mut rng)
                .iter()
                .map(|v| 3.0 * v + 0.5)
                .collect();
            let mean = rand_vec(rows, &mut rng);
            let var: Vec<f32> = rand_vec(rows, &mut rng)
                .iter()
                .map(|v| v.abs() + 0.5)
                .collect();
            let mut tape = Tape::new(rewire::Par::Seq);
            let xv = tape.input(&x, rows, n, true).unwrap();
            let running = (!train).then_some((&mean[..], &var[..]));
            let y = tape
                .batch_norm(&params, xv, gamma, beta, 1e-5, running)
                .unwrap();
            let exp_y = tape.value(y).to_vec();
            let (exp_mean, exp_var) = tape.batch_norm_stats(y).unwrap();
            let (exp_mean, exp_var) = (exp_mean.to_vec(), exp_var.to_vec());
            let g = rand_vec(rows * n, &mut rng);
            tape.backward_from(y, &g, &mut params).unwrap();
            let exp_dx = tape.grad(xv).unwrap().to_vec();

            let mut stats = cuda::BnStats::new(&dev, rows).unwrap();
            if !train {
                dev.upload_into(&mean, &mut stats.mean).unwrap();
                dev.upload_into(&var, &mut stats.var).unwrap();
            }
            let (dgamma_v, dbeta_v) = (dev.upload(&gamma_v).unwrap(), dev.upload(&beta_v).unwrap());
            let mut got_y = dev.zeros(rows * n).unwrap();
            let mut xhat = dev.zeros(rows * n).unwrap();
            dev.batch_norm(
                &mut got_y,
                &mut xhat,
                &mut stats,
                &dev.upload(&x).unwrap(),
                (rows, n),
                (&dgamma_v, &dbeta_v),
                1e-5,
                train,
            )
            .unwrap();
            assert_near(
                &format!("bn mean {label}"),
                &down(&dev, &stats.mean, rows),
                &exp_mean,
                1e-6,
            );
            assert_near(
                &format!("bn var {label}"),
                &down(&dev, &stats.var, rows),
                &exp_var,
                1e-6,
            );
            assert_near(
                &format!("bn y {label}"),
                &down(&dev, &got_y, rows * n),
                &exp_y,
                1e-5,
            );

            let mut dx = dev.zeros(rows * n).unwrap();
            let mut dgamma = dev.zeros(rows).unwrap();
            let mut dbeta = dev.zeros(rows).unwrap();
            dev.batch_norm_backward(
                &mut dx,
                (&mut dgamma, &mut dbeta),
                &dev.upload(&g).unwrap(),
                &xhat,
                (&dgamma_v, &stats.inv_std),
                (rows, n),
                train,
            )
            .unwrap();
            // the CPU sums in f32 in order, the GPU in f64 in a tree
            let sum_tol = 1e-6 * n as f32;
            assert_near(
                &format!("bn dgamma {label}"),
                &down(&dev, &dgamma, rows),
                &params.get(gamma).grad,
                sum_tol,
            );
            assert_near(
                &format!("bn dbeta {label}"),
                &down(&dev, &dbeta, rows),
                &params.get(beta).grad,
                sum_tol,
            );
            assert_near(
                &format!("bn dx {label}"),
                &down(&dev, &dx, rows * n),
                &exp_dx,
                1e-4,
            );

            if train {
                // the running update, as Cnn's on the CPU (momentum 0.1, unbiased)
                let (mut rm, mut rv) = (dev.upload(&mean).unwrap(), dev.upload(&var).unwrap());
                dev.batch_norm_running((&mut rm, &mut rv), &stats, (rows, n), 0.1)
                    .unwrap();
                let unbias = if n > 1 {
                    n as f32 / (n as f32 - 1.0)
                } else {
                    1.0
                };
                let want_m: Vec<f32> = mean
                    .iter()
                    .zip(&exp_mean)
                    .map(|(&r, &m)| r + 0.1 * (m - r))
                    .collect();
                let want_v: Vec<f32> = var
                    .iter()
                    .zip(&exp_var)
                    .map(|(&r, &v)| r + 0.1 * (v * unbias - r))
                    .collect();
                assert_near(
                    &format!("bn running mean {label}"),
                    &down(&dev, &rm, rows),
                    &want_m,
                    1e-6,
                );
                assert_near(
                    &format!("bn running var {label}"),
                    &down(&dev, &rv, rows),
                    &want_v,
                    1e-6,
                );
            }
        }
    }
}

/// A tiny CNN (convolution, max-pool, convolution at stride 2, overlapping average pool,
/// hidden linear, classifier; batch norm after the convolutions, or biases) trained on
/// the CPU and on the GPU from the same seed: static sparse gives the same curve up to
/// summation order; RigL and SET rewiring at every step keep their budgets and reach the
/// same accuracy; and the CPU evaluates the GPU-trained model (its batch-norm running
/// statistics included) as the GPU did.
#[test]
fn gpu_cnn_training_agrees_with_the_cpu() {
    use rewire::autograd::Tape;
    use rewire::data::Dataset;
    use rewire::dst::{MethodKind, RewireConfig};
    use rewire::nn::{Cnn, CnnConfig, CnnLayer, Model};
    use rewire::optim::OptimizerConfig;
    use rewire::train::{evaluate, train};

    let Some(dev) = device() else { return };
    let (tr, te) = Dataset::synthetic(1500, 64, 10, 4).split(1200);
    for (kind, optimizer, batch_norm) in [
        (None, OptimizerConfig::sgd(0.9), true),
        (None, OptimizerConfig::sgd(0.9), false),
        (Some(MethodKind::RigL), OptimizerConfig::sgd(0.9), true),
        (Some(MethodKind::Set), OptimizerConfig::adam(), false),
    ] {
        let model = || {
            let layers = vec![
                CnnLayer::Conv {
                    out: 6,
                    k: 3,
                    stride: 1,
                    pad: 1,
                },
                CnnLayer::MaxPool { k: 2, stride: 2 },
                CnnLayer::Conv {
                    out: 8,
                    k: 3,
                    stride: 2,
                    pad: 1,
                },
                CnnLayer::AvgPool { k: 2, stride: 1 },
                CnnLayer::Linear { out: 32 },
            ];
            let mut config = CnnConfig::new([1, 8, 8], layers, 10);
            config.batch_norm = batch_norm;
            config.sparsity = 0.5;
            config.seed = 5;
            Cnn::new(config).unwrap()
        };
        let rewire = kind.map(|k| RewireConfig {
            delta_t: 1,
            ..RewireConfig::defaults(k)
        });
        let cfg = agreement_config(optimizer, rewire, 2, 32);
        let (mut cpu_model, mut gpu_model) = (model(), model());
        let cpu = train(&mut cpu_model, &tr, &te, &cfg, |_| Ok(())).unwrap();
        let gpu =
            rewire::cuda::cnn::train_cnn(&dev, &mut gpu_model, &tr, &te, &cfg, |_| Ok(())).unwrap();
        let label = format!("CNN {kind:?} batch norm {batch_norm}");
        // 300 test samples: a tolerance of one sample, or six with rewiring
        let acc_tol = if kind.is_some() { 0.02 } else { 0.004 };
        assert_runs_agree(&label, kind.is_some(), &cpu, &gpu, acc_tol);
        assert_eq!(cpu_model.live_weights(), gpu_model.live_weights());
        // the host model holds what the GPU trained, running statistics included
        let last = gpu.last().unwrap();
        let mut tape = Tape::new(rewire::Par::current());
        let (loss, acc) = evaluate(&gpu_model, &te, 256, &mut tape).unwrap();
        assert!(
            (loss - last.test_loss).abs() <= 1e-3 * last.test_loss.abs().max(1e-3),
            "{label}: CPU evaluation of the GPU model: loss {loss} vs {}",
            last.test_loss
        );
        assert!((acc - last.test_acc).abs() <= 0.004, "{label}: accuracy");
    }
}

/// The top `k` positions of `keys` above 0 by (key descending, position ascending), sorted.
fn top_k_by_sort(keys: &[u32], k: usize) -> Vec<u32> {
    let mut pos: Vec<u32> = (0..keys.len() as u32)
        .filter(|&i| keys[i as usize] > 0)
        .collect();
    pos.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
    pos.truncate(k);
    pos.sort_unstable();
    pos
}

#[test]
fn radix_selection_matches_a_sort() {
    // the host side of the GPU's top-k (the same passes, histograms counted on the host)
    let mut rng = seed_rng(21);
    for (len, range) in [
        (1usize, 2u32),
        (10, 2),
        (100, 3),
        (1000, 40),
        (5000, 1 << 12),
        (5000, u32::MAX),
    ] {
        let keys: Vec<u32> = (0..len)
            .map(|_| {
                let v = rng.random_range(0..range);
                // spread small ranges over every byte, so that each pass matters
                if range < 256 {
                    v.wrapping_mul(0x0101_0101)
                } else {
                    v
                }
            })
            .collect();
        let candidates = keys.iter().filter(|&&k| k > 0).count();
        for k in [
            0,
            1,
            candidates / 3,
            candidates.saturating_sub(1),
            candidates,
        ] {
            let got = cuda::radix_select_host(&keys, k).unwrap();
            assert_eq!(
                got,
                top_k_by_sort(&keys, k),
                "len {len} range {range} k {k}"
            );
        }
        assert!(cuda::radix_select_host(&keys, candidates + 1).is_err());
    }
}

#[test]
fn gpu_rigl_grow_matches_the_cpu_choice() {
    use rewire::autograd::Tape;
    use rewire::dst::{GrowScores, TapeScores};
    let Some(dev) = device() else { return };
    let mut rng = seed_rng(22);
    let mut scratch = cuda::GrowScratch::default();
    for (out, fan_in, n, density) in [
        (1usize, 1usize, 1usize, 0.0f64),
        (7, 9, 3, 0.3),
        (64, 100, 8, 0.1),
        (300, 784, 16, 0.05),
        (10, 1000, 4, 0.9),
        (33, 65, 5, 1.0),
    ] {
        let nnz = ((out * fan_in) as f64 * density).round() as usize;
        let pattern = CsrPattern::random(out, fan_in, nnz, &mut rng).unwrap();
        // small integers, so that both sides form the same gradient exactly; zero input
        // rows (as MNIST's border pixels) give whole columns of tied zeros
        let x: Vec<f32> = (0..fan_in * n)
            .map(|i| {
                if (i / n) % 5 == 0 {
                    0.0
                } else {
                    rng.random_range(-2i32..=2) as f32
                }
            })
            .collect();
        let dz: Vec<f32> = (0..out * n)
            .map(|_| rng.random_range(-2i32..=2) as f32)
            .collect();
        let dropped: Vec<bool> = (0..nnz).map(|_| rng.random_bool(0.3)).collect();
        let free = out * fan_in - (nnz - dropped.iter().filter(|&&d| d).count());
        let (csr, dzd, xd) = (
            GpuCsr::new(&dev, &pattern).unwrap(),
            dev.upload(&dz).unwrap(),
            dev.upload(&x).unwrap(),
        );
        let mut tape = Tape::new(rewire::Par::Seq);
        let xv = tape.input(&x, fan_in, n, false).unwrap();
        let zv = tape
            .input_with_grad(&vec![0.0; out * n], out, n, &dz)
            .unwrap();
        let trace = [(xv, zv)];
        let mut cpu = TapeScores {
            tape: &tape,
            trace: &trace,
        };
        for k in [0, 1, free / 3, free] {
            let (want, _) = cpu.largest(0, &pattern, &dropped, k).unwrap();
            let got = dev
                .rigl_grow(&mut scratch, &csr, &dzd, &xd, n, &dropped, k)
                .unwrap();
            assert_eq!(got, want, "{out}x{fan_in} n {n} density {density} k {k}");
        }
        assert!(dev
            .rigl_grow(&mut scratch, &csr, &dzd, &xd, n, &dropped, free + 1)
            .is_err());
    }
}
