//! End-to-end training on generated, learnable data: dense and static sparse MLPs reach
//! high accuracy in seconds, runs are reproducible, and a NaN loss is an error.

use rewire::cpu::Par;
use rewire::data::Dataset;
use rewire::nn::distribution::Distribution;
use rewire::nn::{Mlp, MlpConfig, Model};
use rewire::optim::OptimizerConfig;
use rewire::train::{train, Schedule, TrainConfig};

/// 3000 training and 1000 test samples from the same class centres.
fn data() -> (Dataset, Dataset) {
    Dataset::synthetic(4000, 64, 10, 1).split(3000)
}

fn cfg(epochs: usize, lr: f32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        lr,
        schedule: Schedule::Cosine { warmup_epochs: 0 },
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        seed: 3,
        max_steps: None,
        progress: false,
        par: Par::current(),
        rewire: None,
    }
}

fn model(sparsity: f64, seed: u64) -> Mlp {
    Mlp::new(MlpConfig {
        sparsity,
        distribution: Distribution::Erk,
        seed,
        ..MlpConfig::new(64, &[128, 128], 10)
    })
    .unwrap()
}

#[test]
fn dense_mlp_learns_generated_data() {
    let (tr, te) = data();
    let mut m = model(0.0, 1);
    let start = std::time::Instant::now();
    let reports = train(&mut m, &tr, &te, &cfg(5, 0.05), |_| Ok(())).unwrap();
    let last = reports.last().unwrap();
    println!(
        "dense: test acc {:.4} in {:?}",
        last.test_acc,
        start.elapsed()
    );
    assert!(last.test_acc >= 0.95, "test accuracy {}", last.test_acc);
    assert!(reports[0].loss > last.loss);
}

#[test]
fn static_sparse_mlp_learns_generated_data() {
    let (tr, te) = data();
    let mut m = model(0.9, 2);
    assert!(m.live_weights() < m.dense_weights() / 5);
    let reports = train(&mut m, &tr, &te, &cfg(5, 0.05), |_| Ok(())).unwrap();
    let last = reports.last().unwrap();
    println!("static 90%: test acc {:.4}", last.test_acc);
    assert!(last.test_acc >= 0.95, "test accuracy {}", last.test_acc);
    // static sparse: the pattern never changes, the live count stays exact
    assert!(reports.iter().all(|r| r.live_weights == m.live_weights()));
}

#[test]
fn same_seed_same_run() {
    let (tr, te) = data();
    let run = || {
        let mut m = model(0.8, 5);
        train(&mut m, &tr.subset(600), &te, &cfg(2, 0.05), |_| Ok(())).unwrap()
    };
    let (a, b) = (run(), run());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.loss, y.loss);
        assert_eq!(x.test_acc, y.test_acc);
    }
}

#[test]
fn diverging_run_is_an_error() {
    let (tr, te) = data();
    let mut m = model(0.0, 6);
    let err = train(&mut m, &tr, &te, &cfg(3, 1e6), |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("loss became"), "{err}");
}

/// The methods other than RigL take the optimizer step at an update step and then
/// rewire: SET with ζ = 0 (nothing to rewire) trains exactly as static sparse, and DSR on
/// a model with no sparse layer (nothing to rewire, which once panicked) exactly as
/// dense.
#[test]
fn update_steps_still_step_the_optimizer_for_set_and_dsr() {
    use rewire::dst::{MethodKind, RewireConfig};
    let (tr, te) = data();
    for (kind, sparsity) in [(MethodKind::Set, 0.9), (MethodKind::Dsr, 0.0)] {
        let mut plain = model(sparsity, 4);
        let base = cfg(2, 0.05);
        let a = train(&mut plain, &tr, &te, &base, |_| Ok(())).unwrap();
        let mut rewired = model(sparsity, 4);
        let with = TrainConfig {
            rewire: Some(RewireConfig {
                delta_t: 7,
                drop_fraction: if kind == MethodKind::Set { 0.0 } else { 0.3 },
                ..RewireConfig::defaults(kind)
            }),
            ..base
        };
        let b = train(&mut rewired, &tr, &te, &with, |_| Ok(())).unwrap();
        assert_eq!(b.iter().map(|r| r.rewired).sum::<usize>(), 0, "{kind:?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x.loss.to_bits(),
                y.loss.to_bits(),
                "{kind:?} epoch {}",
                x.epoch
            );
            assert_eq!(x.test_acc, y.test_acc, "{kind:?} epoch {}", x.epoch);
        }
    }
}
