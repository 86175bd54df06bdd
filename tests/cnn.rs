//! Convolutional networks: shapes and counts of LeNet-5 and vgg-small, ERK over kernel
//! dims, training on generated images, every rewiring method on conv layers (with the
//! edit invariants), batch-norm running statistics, and determinism.

use std::collections::HashSet;

use rewire::autograd::Tape;
use rewire::cpu::Par;
use rewire::data::Dataset;
use rewire::dst::{MethodKind, RewireConfig, Rewirer};
use rewire::nn::distribution::{layer_densities, Distribution};
use rewire::nn::{Cnn, CnnConfig, CnnLayer, Model};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::{seed_rng, CsrPattern};
use rewire::train::{train, TrainConfig};

/// 8×8 one-channel images: 2400 to train on, 600 held out.
fn data() -> (Dataset, Dataset) {
    Dataset::synthetic(3000, 64, 10, 5).split(2400)
}

fn small(sparsity: f64, batch_norm: bool, seed: u64) -> Cnn {
    Cnn::new(CnnConfig {
        sparsity,
        batch_norm,
        seed,
        ..CnnConfig::new(
            [1, 8, 8],
            vec![
                CnnLayer::Conv {
                    out: 8,
                    k: 3,
                    stride: 1,
                    pad: 1,
                },
                CnnLayer::MaxPool { k: 2, stride: 2 },
                CnnLayer::Conv {
                    out: 16,
                    k: 3,
                    stride: 1,
                    pad: 1,
                },
                CnnLayer::AvgPool { k: 2, stride: 2 },
                CnnLayer::Linear { out: 32 },
            ],
            10,
        )
    })
    .unwrap()
}

fn cfg(epochs: usize, rewire: Option<RewireConfig>) -> TrainConfig {
    // SGD momentum 0.9, lr 0.05 with cosine decay: the defaults
    TrainConfig {
        epochs,
        batch_size: 32,
        seed: 2,
        rewire,
        ..TrainConfig::default()
    }
}

fn patterns(m: &dyn Model) -> Vec<CsrPattern> {
    m.weight_layers()
        .iter()
        .filter_map(|l| m.params().get(l.weight).pattern().map(|p| (**p).clone()))
        .collect()
}

#[test]
fn lenet5_and_vgg_small_shapes() {
    let m = Cnn::new(CnnConfig::lenet5([1, 28, 28], 10)).unwrap();
    let layers = m.weight_layers();
    let shapes: Vec<_> = layers
        .iter()
        .map(|l| {
            (
                l.shape.fan_out,
                l.shape.fan_in,
                l.shape.kh,
                l.shape.kw,
                l.positions,
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            (20, 1, 5, 5, 24 * 24),
            (50, 20, 5, 5, 8 * 8),
            (500, 800, 1, 1, 1),
            (10, 500, 1, 1, 1)
        ]
    );
    assert_eq!(m.dense_weights(), 500 + 25_000 + 400_000 + 5_000);
    assert_eq!(m.live_weights(), m.dense_weights());
    // 2·MACs forward; the first layer has no input gradient
    let macs = [500.0 * 576.0, 25_000.0 * 64.0, 400_000.0, 5_000.0];
    assert_eq!(m.forward_flops_per_sample(), 2.0 * macs.iter().sum::<f64>());
    assert_eq!(
        m.train_flops_per_sample(),
        4.0 * macs[0] + 6.0 * (macs[1] + macs[2] + macs[3])
    );

    let v = Cnn::new(CnnConfig::vgg_small([1, 28, 28], 10)).unwrap();
    let fan: Vec<_> = v
        .weight_layers()
        .iter()
        .map(|l| (l.shape.fan_out, l.shape.fan_in))
        .collect();
    assert_eq!(
        fan,
        vec![
            (32, 1),
            (32, 32),
            (64, 32),
            (64, 64),
            (256, 64 * 7 * 7),
            (10, 256)
        ]
    );
    // batch norm scale and shift per conv channel, no conv bias
    let names: Vec<_> = v.params().iter().map(|(_, p)| p.name.clone()).collect();
    assert!(names.contains(&"bn4.weight".to_string()));
    assert!(!names.contains(&"conv1.bias".to_string()));
}

#[test]
fn bad_cnn_configs_are_errors() {
    let conv = CnnLayer::Conv {
        out: 4,
        k: 9,
        stride: 1,
        pad: 0,
    };
    assert!(Cnn::new(CnnConfig::new([1, 8, 8], vec![conv], 10)).is_err());
    let after_linear = vec![
        CnnLayer::Linear { out: 8 },
        CnnLayer::MaxPool { k: 2, stride: 2 },
    ];
    assert!(Cnn::new(CnnConfig::new([1, 8, 8], after_linear, 10)).is_err());
    assert!(Cnn::new(CnnConfig::new([0, 8, 8], vec![], 10)).is_err());
    assert!(CnnConfig::named("resnet", [1, 28, 28], 10).is_err());
    let mut sparse = CnnConfig::lenet5([1, 28, 28], 10);
    sparse.sparsity = 1.0;
    assert!(Cnn::new(sparse).is_err());
}

#[test]
fn erk_counts_kernel_dims_and_hits_the_budget() {
    for dist in [Distribution::Erk, Distribution::Er] {
        let m = Cnn::new(CnnConfig {
            sparsity: 0.9,
            distribution: dist,
            ..CnnConfig::vgg_small([1, 28, 28], 10)
        })
        .unwrap();
        let target = 0.1 * m.dense_weights() as f64;
        let live = m.live_weights() as f64;
        assert!(
            (live - target).abs() <= m.weight_layers().len() as f64,
            "{dist}: {live} live, target {target}"
        );
        for l in m.weight_layers() {
            let stored = m.params().get(l.weight).live();
            assert!(stored <= l.shape.size());
        }
    }
    let shapes = CnnConfig::vgg_small([1, 28, 28], 10)
        .layer_shapes()
        .unwrap();
    let erk = layer_densities(Distribution::Erk, &shapes, 0.9).unwrap();
    let er = layer_densities(Distribution::Er, &shapes, 0.9).unwrap();
    // conv layers: ERK's (i + o + kh + kw)/(i·o·kh·kw) differs from ER's (i + o)/(i·o)
    assert!((erk[1] - er[1]).abs() > 1e-3, "ERK {erk:?} vs ER {er:?}");
    // the 9-weight-fan-in first conv is dense under ERK
    assert_eq!(erk[0], 1.0);
}

#[test]
fn cnn_learns_generated_images_dense_sparse_and_batch_norm() {
    let (tr, te) = data();
    for (sparsity, bn) in [(0.0, false), (0.8, false), (0.8, true)] {
        let mut m = small(sparsity, bn, 1);
        let start = std::time::Instant::now();
        let reports = train(&mut m, &tr, &te, &cfg(4, None), |_| Ok(())).unwrap();
        let last = reports.last().unwrap();
        println!(
            "sparsity {sparsity} bn {bn}: test {:.4} in {:?}",
            last.test_acc,
            start.elapsed()
        );
        assert!(
            last.test_acc >= 0.95,
            "sparsity {sparsity} bn {bn}: {}",
            last.test_acc
        );
        assert!(reports[0].loss > last.loss);
    }
}

#[test]
fn every_method_rewires_conv_layers_and_keeps_its_budget() {
    let (tr, te) = data();
    for kind in [
        MethodKind::Static,
        MethodKind::Set,
        MethodKind::RigL,
        MethodKind::Dsr,
        MethodKind::Gmp,
        MethodKind::PruneFinetune,
    ] {
        let dense_to_sparse = kind.is_dense_to_sparse();
        let mut m = Cnn::new(CnnConfig {
            sparsity: if dense_to_sparse { 0.0 } else { 0.8 },
            sparse_storage: dense_to_sparse,
            batch_norm: true,
            seed: 4,
            ..small(0.0, true, 4).config
        })
        .unwrap();
        let before = patterns(&m);
        let live_before = m.live_weights();
        let rc = RewireConfig {
            delta_t: 10,
            target_sparsity: 0.8,
            ..RewireConfig::defaults(kind)
        };
        let reports = train(&mut m, &tr, &te, &cfg(3, Some(rc)), |_| Ok(())).unwrap();
        let after = patterns(&m);
        let rewired: usize = reports.iter().map(|r| r.rewired).sum();
        for p in &after {
            CsrPattern::new(
                p.nrows(),
                p.ncols(),
                p.row_ptr().to_vec(),
                p.col_idx().to_vec(),
            )
            .unwrap();
        }
        let conv_changed = before[..2] != after[..2];
        match kind {
            MethodKind::Static => {
                assert_eq!(rewired, 0);
                assert_eq!(before, after);
            }
            MethodKind::Set | MethodKind::RigL => {
                assert!(rewired > 0 && conv_changed, "{kind:?} left the convs alone");
                for (l, (b, a)) in before.iter().zip(&after).enumerate() {
                    assert_eq!(b.nnz(), a.nnz(), "{kind:?} changed layer {l}'s nnz");
                }
            }
            MethodKind::Dsr => {
                assert!(rewired > 0 && conv_changed);
                assert_eq!(m.live_weights(), live_before, "DSR changed the total");
            }
            MethodKind::Gmp | MethodKind::PruneFinetune => {
                let target = (0.2 * m.dense_weights() as f64).round();
                let live = m.live_weights() as f64;
                assert!(
                    (live - target).abs() <= 4.0,
                    "{kind:?}: {live} live, target {target}"
                );
            }
        }
        let acc = reports.last().unwrap().test_acc;
        println!("{kind:?}: rewired {rewired}, test {acc:.4}");
        assert!(acc >= 0.9, "{kind:?} test accuracy {acc}");
    }
}

#[test]
fn rigl_update_on_a_conv_layer_keeps_survivors_and_zeroes_growth() {
    let (tr, _) = data();
    let mut m = small(0.7, false, 6);
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        m.params(),
    )
    .unwrap();
    let rc = RewireConfig {
        delta_t: 1,
        end_fraction: 1.0,
        ..RewireConfig::defaults(MethodKind::RigL)
    };
    let mut rw = Rewirer::new(rc, 100).unwrap();
    let mut tape = Tape::new(Par::Seq);
    let idx: Vec<u32> = (0..16).collect();
    let (mut x, mut labels) = (vec![0.0; 64 * 16], vec![0u32; 16]);
    tr.fill_batch(&idx, &mut x, &mut labels).unwrap();
    tape.set_retain_linear_grads(true);
    let xv = tape.input(&x, 64, 16, false).unwrap();
    let logits = m
        .forward_traced(&mut tape, xv, true, &mut seed_rng(0), Some(rw.trace_mut()))
        .unwrap();
    let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
    m.params_mut().zero_grad();
    tape.backward(loss, m.params_mut()).unwrap();
    let conv = m.weight_layers()[1].weight;
    let old = m.params().get(conv).pattern().unwrap().clone();
    let old_values = m.params().get(conv).value.to_vec();
    let report = rw.update(1, &mut m, &mut opt, &tape).unwrap();
    assert!(report.rewired > 0);
    // RigL's dense gradient of a conv: 2·out·(in·kh·kw)·(batch·OH·OW) per layer, summed
    assert!(report.flops >= 2.0 * 16.0 * 72.0 * (16.0 * 16.0));
    let new = m.params().get(conv).pattern().unwrap().clone();
    assert_eq!(old.nnz(), new.nnz());
    assert_ne!(*old, *new);
    let old_set: HashSet<(u32, u32)> = old
        .row_indices()
        .into_iter()
        .zip(old.col_idx().iter().copied())
        .collect();
    let p = m.params().get(conv);
    for (q, (r, c)) in new
        .row_indices()
        .into_iter()
        .zip(new.col_idx().iter().copied())
        .enumerate()
    {
        if old_set.contains(&(r, c)) {
            let op = old
                .row_range(r as usize)
                .find(|&op| old.col_idx()[op] == c)
                .unwrap();
            assert_eq!(p.value[q], old_values[op], "survivor changed");
        } else {
            assert_eq!(p.value[q], 0.0, "grown weight not zero");
            assert_eq!(opt.state(conv)[0][q], 0.0, "grown state not zero");
        }
    }
}

#[test]
fn batch_norm_running_statistics_serve_evaluation() {
    let (tr, te) = data();
    let mut m = small(0.0, true, 7);
    let mut tape = Tape::new(Par::Seq);
    let idx: Vec<u32> = (0..64).collect();
    let (mut x, mut labels) = (vec![0.0; 64 * 64], vec![0u32; 64]);
    tr.fill_batch(&idx, &mut x, &mut labels).unwrap();
    let eval_logits = |m: &Cnn, tape: &mut Tape| {
        tape.reset();
        let xv = tape.input(&x, 64, 64, false).unwrap();
        let l = m.forward(tape, xv, false, &mut seed_rng(0)).unwrap();
        tape.value(l).to_vec()
    };
    let fresh = eval_logits(&m, &mut tape);
    train(&mut m, &tr, &te, &cfg(2, None), |_| Ok(())).unwrap();
    let trained = eval_logits(&m, &mut tape);
    assert_ne!(fresh, trained);
    // evaluation does not move the running statistics: the same logits twice
    assert_eq!(trained, eval_logits(&m, &mut tape));
    // a training-mode pass does move them
    tape.reset();
    let xv = tape.input(&x, 64, 64, false).unwrap();
    m.forward(&mut tape, xv, true, &mut seed_rng(0)).unwrap();
    assert_ne!(trained, eval_logits(&m, &mut tape));
}

/// One batch-norm model evaluated, and run forward in training mode, from several
/// threads at once in one pool: every pass finishes (the running statistics' lock is
/// not held while the parallel normalisation runs), and concurrent evaluations give
/// what one alone gets.
#[test]
fn one_batch_norm_model_serves_concurrent_passes() {
    use std::sync::Arc;
    let (tr, te) = data();
    let mut m = small(0.5, true, 11);
    train(&mut m, &tr.subset(600), &te, &cfg(1, None), |_| Ok(())).unwrap();
    let (m, te) = (Arc::new(m), Arc::new(te));
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let idx: Vec<u32> = (0..128).collect();
    let (mut x, mut labels) = (vec![0.0; 64 * 128], vec![0u32; 128]);
    tr.fill_batch(&idx, &mut x, &mut labels).unwrap();
    let x = Arc::new(x);
    let alone = pool
        .install(|| rewire::train::evaluate(&*m, &te, 128, &mut Tape::new(Par::Rayon(2))))
        .unwrap();
    // first evaluations only (the running statistics stay), then evaluations beside
    // training-mode passes (which move them)
    for with_training in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..4u64 {
            let (m, te, x, pool, tx) = (m.clone(), te.clone(), x.clone(), pool.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut tape = Tape::new(Par::Rayon(2));
                for i in 0..10 {
                    if with_training && (t + i) % 2 == 1 {
                        pool.install(|| {
                            tape.reset();
                            let xv = tape.input(&x, 64, 128, false).unwrap();
                            m.forward(&mut tape, xv, true, &mut seed_rng(t)).unwrap();
                        });
                    } else {
                        let got = pool
                            .install(|| rewire::train::evaluate(&*m, &te, 128, &mut tape))
                            .unwrap();
                        assert!(with_training || got == alone, "{got:?} vs {alone:?}");
                    }
                }
                tx.send(t).expect("the test waits");
            });
        }
        drop(tx);
        for _ in 0..4 {
            rx.recv_timeout(std::time::Duration::from_secs(300))
                .expect("a concurrent pass failed or never finished (deadlock)");
        }
    }
}

#[test]
fn same_seed_same_cnn_run() {
    let (tr, te) = data();
    let run = || {
        let mut m = small(0.8, true, 9);
        let rc = RewireConfig {
            delta_t: 10,
            ..RewireConfig::defaults(MethodKind::RigL)
        };
        let reports = train(&mut m, &tr.subset(600), &te, &cfg(2, Some(rc)), |_| Ok(())).unwrap();
        (
            reports
                .iter()
                .map(|r| (r.loss, r.test_acc))
                .collect::<Vec<_>>(),
            patterns(&m),
        )
    };
    assert_eq!(run(), run());
}

/// Sizes whose products overflow (or pass the kernels' u32 indices) are errors from
/// `Cnn::new`, in debug builds (no overflow panic) and release builds (no wrap-around).
#[test]
fn huge_geometries_are_errors_not_overflows() {
    let huge_input = CnnConfig::new([1 << 22; 3], vec![], 10);
    assert!(Cnn::new(huge_input).is_err());
    let huge_pad = CnnConfig::new(
        [1, 28, 28],
        vec![CnnLayer::Conv {
            out: 4,
            k: 3,
            stride: 1,
            pad: usize::MAX / 2,
        }],
        10,
    );
    let err = Cnn::new(huge_pad)
        .err()
        .expect("a pad of usize::MAX / 2 is refused");
    assert!(err.to_string().contains("u32"), "{err}");
}
