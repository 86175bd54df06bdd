//! Rewiring methods on an MLP: invariants after every update, RigL's choices against a
//! brute-force dense gradient, determinism, and schedules.

use std::collections::HashSet;

use rewire::autograd::Tape;
use rewire::cpu::Par;
use rewire::data::Dataset;
use rewire::dst::{MethodKind, RewireConfig, Rewirer, UpdateSchedule};
use rewire::nn::distribution::Distribution;
use rewire::nn::{Mlp, MlpConfig, Model, ParamShape};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::{seed_rng, CsrPattern};

fn model(seed: u64) -> Mlp {
    Mlp::new(MlpConfig {
        sparsity: 0.8,
        distribution: Distribution::Uniform { dense_first: false },
        seed,
        ..MlpConfig::new(32, &[48, 40], 10)
    })
    .unwrap()
}

fn sgd(m: &Mlp) -> Optimizer {
    Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        &m.params,
    )
    .unwrap()
}

/// One forward/backward on a batch, recording what RigL needs.
fn step(m: &mut Mlp, rw: &mut Rewirer, tape: &mut Tape, data: &Dataset, seed: u64) {
    let idx: Vec<u32> = data.epoch_order(seed, 0)[..16].to_vec();
    let mut x = vec![0.0; data.dim * 16];
    let mut labels = vec![0u32; 16];
    data.fill_batch(&idx, &mut x, &mut labels).unwrap();
    tape.reset();
    tape.set_retain_linear_grads(true);
    let xv = tape.input(&x, data.dim, 16, false).unwrap();
    let mut rng = seed_rng(seed);
    let logits = m
        .forward_traced(tape, xv, true, &mut rng, Some(rw.trace_mut()))
        .unwrap();
    let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
    m.params.zero_grad();
    tape.backward(loss, &mut m.params).unwrap();
}

/// A rewirer of `kind` that updates at every step of 100, dropping `drop_fraction`
/// without decay.
fn every_step(kind: MethodKind, drop_fraction: f64) -> Rewirer {
    let cfg = RewireConfig {
        delta_t: 1,
        drop_fraction,
        end_fraction: 1.0,
        cosine: false,
        ..RewireConfig::defaults(kind)
    };
    Rewirer::new(cfg, 100).unwrap()
}

fn patterns(m: &Mlp) -> Vec<CsrPattern> {
    m.layers
        .iter()
        .filter_map(|l| m.params.get(l.weight).pattern().map(|p| (**p).clone()))
        .collect()
}

/// Each layer's weight values.
fn weight_values(m: &Mlp) -> Vec<Vec<f32>> {
    m.layers
        .iter()
        .map(|l| m.params.get(l.weight).value.to_vec())
        .collect()
}

fn live_set(p: &CsrPattern) -> HashSet<(u32, u32)> {
    let rows = p.row_indices();
    rows.into_iter().zip(p.col_idx().iter().copied()).collect()
}

fn check_update(kind: MethodKind) {
    let data = Dataset::synthetic(64, 32, 10, 3);
    let mut m = model(1);
    let mut opt = sgd(&m);
    let cfg = RewireConfig {
        delta_t: 1,
        drop_fraction: 0.3,
        end_fraction: 1.0,
        ..RewireConfig::defaults(kind)
    };
    let mut rw = Rewirer::new(cfg, 1000).unwrap();
    let mut tape = Tape::new(Par::Seq);
    for s in 1..6 {
        step(&mut m, &mut rw, &mut tape, &data, s);
        opt.step(&mut m.params, 0.05).unwrap();
        step(&mut m, &mut rw, &mut tape, &data, s + 100);
        let before = patterns(&m);
        let values_before = weight_values(&m);
        let report = rw.update(s as usize, &mut m, &mut opt, &tape).unwrap();
        assert!(report.rewired > 0, "{kind:?} rewired nothing");
        let after = patterns(&m);
        for (l, (old, new)) in before.iter().zip(&after).enumerate() {
            assert_eq!(
                old.nnz(),
                new.nnz(),
                "{kind:?}: layer {l} lost or gained connections"
            );
            // CsrPattern::new re-validates: sorted, unique, in range
            CsrPattern::new(
                new.nrows(),
                new.ncols(),
                new.row_ptr().to_vec(),
                new.col_idx().to_vec(),
            )
            .unwrap();
            let (old_set, new_set) = (live_set(old), live_set(new));
            let id = m.layers[l].weight;
            let p = m.params.get(id);
            let state = &opt.state(id)[0];
            for (q, (r, c)) in new
                .row_indices()
                .into_iter()
                .zip(new.col_idx().iter().copied())
                .enumerate()
            {
                if old_set.contains(&(r, c)) {
                    // survivor keeps its value
                    let op = old
                        .row_range(r as usize)
                        .find(|&op| old.col_idx()[op] == c)
                        .unwrap();
                    assert_eq!(p.value[q], values_before[l][op]);
                } else {
                    assert_eq!(p.value[q], 0.0, "grown weight not zero");
                    assert_eq!(state[q], 0.0, "grown optimizer state not zero");
                }
            }
            assert!(new_set.len() == old_set.len());
        }
        // the optimizer accepts the new patterns
        step(&mut m, &mut rw, &mut tape, &data, s + 200);
        opt.step(&mut m.params, 0.05).unwrap();
    }
}

#[test]
fn rigl_updates_keep_invariants() {
    check_update(MethodKind::RigL);
}

#[test]
fn set_updates_keep_invariants() {
    check_update(MethodKind::Set);
}

#[test]
fn rigl_grows_where_the_dense_gradient_is_largest() {
    let data = Dataset::synthetic(64, 32, 10, 4);
    let mut m = model(2);
    let mut opt = sgd(&m);
    let cfg = RewireConfig {
        delta_t: 1,
        drop_fraction: 0.25,
        end_fraction: 1.0,
        cosine: false,
        ..RewireConfig::defaults(MethodKind::RigL)
    };
    let mut rw = Rewirer::new(cfg, 100).unwrap();
    let mut tape = Tape::new(Par::Seq);
    step(&mut m, &mut rw, &mut tape, &data, 9);
    // brute force, layer 1 (48×32): G = dZ·Xᵀ in f64, drop the 25% smallest |w|
    let (x, z) = rw.trace_mut()[0];
    let (dz, xv) = (tape.grad(z).unwrap().to_vec(), tape.value(x).to_vec());
    let n = 16;
    let id = m.layers[0].weight;
    let old = (**m.params.get(id).pattern().unwrap()).clone();
    let w = m.params.get(id).value.to_vec();
    let k = (0.25 * old.nnz() as f64).round() as usize;
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| (w[a].abs(), a).partial_cmp(&(w[b].abs(), b)).unwrap());
    let dropped: HashSet<usize> = order[..k].iter().copied().collect();
    let rows = old.row_indices();
    let kept: HashSet<(u32, u32)> = (0..old.nnz())
        .filter(|p| !dropped.contains(p))
        .map(|p| (rows[p], old.col_idx()[p]))
        .collect();
    let mut cand: Vec<(f64, u32, u32)> = Vec::new();
    for i in 0..old.nrows() {
        for j in 0..old.ncols() {
            if !kept.contains(&(i as u32, j as u32)) {
                let g: f64 = (0..n)
                    .map(|t| dz[i * n + t] as f64 * xv[j * n + t] as f64)
                    .sum();
                cand.push((g.abs(), i as u32, j as u32));
            }
        }
    }
    cand.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap()
            .then((a.1, a.2).cmp(&(b.1, b.2)))
    });
    let expected: HashSet<(u32, u32)> = kept
        .iter()
        .copied()
        .chain(cand[..k].iter().map(|&(_, i, j)| (i, j)))
        .collect();
    rw.update(1, &mut m, &mut opt, &tape).unwrap();
    let got = live_set(m.params.get(id).pattern().unwrap());
    // allow for float ties at the boundary: at most one connection may differ
    let diff = expected.symmetric_difference(&got).count();
    assert!(
        diff <= 2,
        "{diff} connections differ from the brute-force RigL choice"
    );
}

#[test]
fn same_seed_same_rewiring() {
    let run = |kind| {
        let data = Dataset::synthetic(64, 32, 10, 5);
        let mut m = model(3);
        let mut opt = sgd(&m);
        let cfg = RewireConfig {
            delta_t: 1,
            end_fraction: 1.0,
            ..RewireConfig::defaults(kind)
        };
        let mut rw = Rewirer::new(cfg, 100).unwrap();
        let mut tape = Tape::new(Par::Seq);
        for s in 1..4 {
            step(&mut m, &mut rw, &mut tape, &data, s);
            rw.update(s as usize, &mut m, &mut opt, &tape).unwrap();
        }
        patterns(&m)
    };
    for kind in [MethodKind::RigL, MethodKind::Set] {
        assert_eq!(run(kind), run(kind), "{kind:?} is not deterministic");
    }
}

#[test]
fn schedules() {
    let s = UpdateSchedule {
        delta_t: 100,
        t_start: 0,
        t_end: 750,
        alpha: 0.3,
        cosine: true,
    };
    assert!(
        !s.is_update(0)
            && s.is_update(100)
            && !s.is_update(150)
            && s.is_update(700)
            && !s.is_update(800)
    );
    assert!((s.drop_fraction(0) - 0.3).abs() < 1e-12);
    assert!((s.drop_fraction(375) - 0.15).abs() < 1e-9);
    assert!(s.drop_fraction(750).abs() < 1e-12);
    assert!(Rewirer::new(
        RewireConfig {
            drop_fraction: 1.5,
            ..RewireConfig::defaults(MethodKind::RigL)
        },
        10
    )
    .is_err());
    assert!(Rewirer::new(
        RewireConfig {
            delta_t: 0,
            ..RewireConfig::defaults(MethodKind::Set)
        },
        10
    )
    .is_err());
    assert!(MethodKind::parse("rigl").is_ok() && MethodKind::parse("lottery").is_err());
}

#[test]
fn dense_layers_are_not_rewired() {
    let data = Dataset::synthetic(64, 32, 10, 6);
    let mut m = Mlp::new(MlpConfig {
        sparsity: 0.5,
        distribution: Distribution::Uniform { dense_first: true },
        ..MlpConfig::new(32, &[48], 10)
    })
    .unwrap();
    let first = m.layers[0].weight;
    assert!(matches!(
        m.params.get(first).shape,
        ParamShape::Dense { .. }
    ));
    let dense_before = m.params.get(first).value.to_vec();
    let mut opt = sgd(&m);
    let cfg = RewireConfig {
        delta_t: 1,
        end_fraction: 1.0,
        ..RewireConfig::defaults(MethodKind::RigL)
    };
    let mut rw = Rewirer::new(cfg, 100).unwrap();
    let mut tape = Tape::new(Par::Seq);
    step(&mut m, &mut rw, &mut tape, &data, 1);
    let report = rw.update(1, &mut m, &mut opt, &tape).unwrap();
    assert!(report.rewired > 0);
    assert_eq!(m.params.get(first).value.to_vec(), dense_before);
}

#[test]
fn set_keeps_the_size_of_nearly_dense_layers() {
    let data = Dataset::synthetic(64, 32, 10, 7);
    let mut m = Mlp::new(MlpConfig {
        sparsity: 0.6,
        distribution: Distribution::Erk,
        seed: 7,
        ..MlpConfig::new(32, &[64], 10)
    })
    .unwrap();
    // the 10×64 output layer ends up nearly dense but still sparse
    let last = m.params.get(m.layers[1].weight);
    assert!(last.pattern().is_some());
    let free = 640 - last.live();
    let before = m.live_weights();
    let mut opt = sgd(&m);
    let mut rw = every_step(MethodKind::Set, 0.5);
    let mut tape = Tape::new(Par::Seq);
    step(&mut m, &mut rw, &mut tape, &data, 1);
    let report = rw.update(1, &mut m, &mut opt, &tape).unwrap();
    assert!(report.rewired > 0);
    assert_eq!(
        m.live_weights(),
        before,
        "SET changed the number of live weights"
    );
    assert!(
        free < (0.5 * (640 - free) as f64) as usize,
        "the test layer should be nearly dense"
    );
}

/// A 180-step run (30 per epoch) of a dense-to-sparse `kind` to 90% sparsity, ΔT = 10
/// unless `adjust`, applied to the method's settings, says otherwise.
fn prune_run(
    kind: MethodKind,
    adjust: impl FnOnce(&mut RewireConfig),
) -> (Mlp, Vec<rewire::train::EpochReport>) {
    use rewire::train::{train, Schedule, TrainConfig};
    let (tr, te) = Dataset::synthetic(2000, 32, 10, 8).split(1500);
    let mut m = Mlp::new(MlpConfig {
        sparse_storage: true,
        distribution: Distribution::Erk,
        ..MlpConfig::new(32, &[64, 64], 10)
    })
    .unwrap();
    assert_eq!(m.live_weights(), m.dense_weights());
    let cfg = TrainConfig {
        epochs: 6,
        batch_size: 50,
        lr: 0.05,
        schedule: Schedule::Constant,
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        seed: 1,
        max_steps: None,
        progress: false,
        par: Par::Seq,
        rewire: Some({
            let mut r = RewireConfig {
                delta_t: 10,
                target_sparsity: 0.9,
                ..RewireConfig::defaults(kind)
            };
            adjust(&mut r);
            r
        }),
    };
    let reports = train(&mut m, &tr, &te, &cfg, |_| Ok(())).unwrap();
    (m, reports)
}

#[test]
fn gradual_magnitude_pruning_reaches_the_target_monotonically() {
    let (m, reports) = prune_run(MethodKind::Gmp, |_| ());
    let live: Vec<usize> = reports.iter().map(|r| r.live_weights).collect();
    assert!(
        live.windows(2).all(|w| w[1] <= w[0]),
        "live weights grew: {live:?}"
    );
    assert!(
        live.iter()
            .filter(|&&l| l < m.dense_weights() && l > live[5])
            .count()
            >= 1,
        "not gradual: {live:?}"
    );
    let target = (0.1 * m.dense_weights() as f64).round() as usize;
    assert!(
        live[5].abs_diff(target) <= m.layers.len(),
        "{} vs target {target}",
        live[5]
    );
    assert!(reports.last().unwrap().test_acc > 0.9);
}

#[test]
fn prune_then_finetune_prunes_once() {
    let (m, reports) = prune_run(MethodKind::PruneFinetune, |_| ());
    let live: Vec<usize> = reports.iter().map(|r| r.live_weights).collect();
    let pruned_epochs = reports.iter().filter(|r| r.rewired > 0).count();
    assert_eq!(pruned_epochs, 1, "{live:?}");
    assert_eq!(live[0], m.dense_weights());
    let target = (0.1 * m.dense_weights() as f64).round() as usize;
    assert!(
        live[5].abs_diff(target) <= m.layers.len(),
        "{} vs target {target}",
        live[5]
    );
}

/// Pruning scheduled to the very end (T_end = 1 with the run a multiple of ΔT, or the
/// one prune-then-finetune step at 100%) still happens within the run and reaches the
/// target; a schedule with no pruning step inside the run is an error, not a dense
/// model reported under a sparse method.
#[test]
fn pruning_scheduled_at_the_end_still_reaches_the_target() {
    for (kind, adjust) in [
        // updates at 60 and 120 of 180: the schedule's end (step 180) never runs
        (
            MethodKind::Gmp,
            (|c| {
                c.end_fraction = 1.0;
                c.delta_t = 60;
            }) as fn(&mut RewireConfig),
        ),
        (MethodKind::PruneFinetune, |c| c.start_fraction = 1.0),
    ] {
        let (m, reports) = prune_run(kind, adjust);
        let target = (0.1 * m.dense_weights() as f64).round() as usize;
        let last = reports.last().unwrap().live_weights;
        assert!(
            last.abs_diff(target) <= m.layers.len(),
            "{kind:?}: {last} live at the end vs target {target}"
        );
    }
    let gmp = RewireConfig {
        delta_t: 100,
        target_sparsity: 0.9,
        ..RewireConfig::defaults(MethodKind::Gmp)
    };
    // updates at multiples of 100 within [12, 91): none
    let err = Rewirer::new(gmp.clone(), 120)
        .err()
        .expect("no pruning step");
    assert!(err.to_string().contains("no such step"), "{err}");
    assert!(Rewirer::new(gmp.clone(), 1000).is_ok());
    let backwards = RewireConfig {
        start_fraction: 0.8,
        end_fraction: 0.5,
        ..gmp
    };
    assert!(Rewirer::new(backwards.clone(), 1000).is_err());
    assert!(backwards.validate().is_err());
}

#[test]
fn dsr_keeps_the_total_and_moves_weights_between_layers() {
    let data = Dataset::synthetic(64, 32, 10, 9);
    let mut m = model(9);
    let mut opt = sgd(&m);
    let cfg = RewireConfig {
        delta_t: 1,
        drop_fraction: 0.2,
        end_fraction: 1.0,
        ..RewireConfig::defaults(MethodKind::Dsr)
    };
    let mut rw = Rewirer::new(cfg, 1000).unwrap();
    let mut tape = Tape::new(Par::Seq);
    let total = m.live_weights();
    let per_layer = |m: &Mlp| {
        m.layers
            .iter()
            .map(|l| m.params.get(l.weight).live())
            .collect::<Vec<_>>()
    };
    let start = per_layer(&m);
    let (mut moved, mut restarted) = (false, false);
    for s in 1..8 {
        step(&mut m, &mut rw, &mut tape, &data, s);
        opt.step(&mut m.params, 0.1).unwrap();
        step(&mut m, &mut rw, &mut tape, &data, s + 50);
        let before = patterns(&m);
        let values_before = weight_values(&m);
        let rep = rw.update(s as usize, &mut m, &mut opt, &tape).unwrap();
        assert!(rep.rewired > 0);
        assert_eq!(m.live_weights(), total, "DSR changed the total");
        for (l, (old, new)) in before.iter().zip(patterns(&m)).enumerate() {
            CsrPattern::new(
                new.nrows(),
                new.ncols(),
                new.row_ptr().to_vec(),
                new.col_idx().to_vec(),
            )
            .unwrap();
            let id = m.layers[l].weight;
            let (value, state) = (&m.params.get(id).value, &opt.state(id)[0]);
            for (q, (r, c)) in new
                .row_indices()
                .into_iter()
                .zip(new.col_idx().iter().copied())
                .enumerate()
            {
                // a connection live before either survived the prune (value and state
                // kept) or was pruned and drawn again (restarted at zero, as a new one)
                let old_value = old
                    .row_range(r as usize)
                    .find(|&op| old.col_idx()[op] == c)
                    .map(|op| values_before[l][op]);
                match old_value {
                    Some(v) if value[q] == v => {}
                    _ => {
                        assert_eq!(value[q], 0.0, "layer {l} ({r},{c}): grown weight not zero");
                        assert_eq!(state[q], 0.0, "layer {l} ({r},{c}): grown state not zero");
                        restarted |= old_value.is_some_and(|v| v != 0.0);
                    }
                }
            }
        }
        moved |= per_layer(&m) != start;
    }
    assert!(moved, "DSR never reallocated between layers");
    assert!(
        restarted,
        "DSR never drew a just-pruned connection again (it regrows among them too)"
    );
}

/// RigL's grow scan splits each block of the dense gradient over the threads, one
/// selection per thread, merged: with three threads over a layer taller than one block
/// (300 rows of 4096 inputs, blocks of 256 rows) it makes the choice the single-thread
/// scan makes.
#[test]
fn rigl_threaded_scan_chooses_as_the_sequential_one() {
    let data = Dataset::synthetic(64, 4096, 10, 4);
    let run = |par: Par| {
        let mut m = Mlp::new(MlpConfig {
            sparsity: 0.95,
            seed: 2,
            ..MlpConfig::new(4096, &[300], 10)
        })
        .unwrap();
        let mut opt = sgd(&m);
        let mut rw = every_step(MethodKind::RigL, 0.3);
        let mut tape = Tape::new(par);
        step(&mut m, &mut rw, &mut tape, &data, 1);
        let before = patterns(&m);
        rw.update(1, &mut m, &mut opt, &tape).unwrap();
        let after = patterns(&m);
        assert_ne!(
            before[0], after[0],
            "{par:?}: the first layer was not rewired"
        );
        after
    };
    let seq = run(Par::Seq);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let threaded = pool.install(|| run(Par::Rayon(3)));
    assert_eq!(seq, threaded);
}

#[test]
fn rigl_update_with_a_stale_or_foreign_trace_is_an_error() {
    let (data, _) = Dataset::synthetic(64, 32, 10, 3).split(48);
    let mut m = model(1);
    let mut opt = sgd(&m);
    let mut rw = every_step(MethodKind::RigL, 0.3);
    let mut tape = Tape::new(Par::Seq);
    step(&mut m, &mut rw, &mut tape, &data, 1);
    // the trace's nodes are not on a fresh tape
    let err = rw
        .update(1, &mut m, &mut opt, &Tape::new(Par::Seq))
        .unwrap_err();
    assert!(err.to_string().contains("another tape"), "{err}");
    // a trace recorded on a model of other shapes
    let mut other = Mlp::new(MlpConfig {
        sparsity: 0.8,
        ..MlpConfig::new(32, &[20, 40], 10)
    })
    .unwrap();
    step(&mut other, &mut rw, &mut tape, &data, 2);
    let err = rw.update(1, &mut m, &mut opt, &tape).unwrap_err();
    assert!(err.to_string().contains("trace holds"), "{err}");
}

#[test]
fn pruning_a_model_without_sparse_storage_is_an_error() {
    use rewire::train::{train, TrainConfig};
    let (tr, te) = Dataset::synthetic(200, 32, 10, 8).split(150);
    let mut m = Mlp::new(MlpConfig::new(32, &[16], 10)).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 10,
        par: Par::Seq,
        rewire: Some(RewireConfig {
            delta_t: 5,
            target_sparsity: 0.9,
            ..RewireConfig::defaults(MethodKind::Gmp)
        }),
        ..TrainConfig::default()
    };
    let err = train(&mut m, &tr, &te, &cfg, |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("sparse_storage"), "{err}");
    // test data of another width is refused before the first epoch, not after it
    let (_, wide) = Dataset::synthetic(200, 40, 10, 8).split(150);
    let mut epochs = 0;
    let cfg = TrainConfig {
        rewire: None,
        ..cfg
    };
    let err = train(&mut m, &tr, &wide, &cfg, |_| {
        epochs += 1;
        Ok(())
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("test data has 40 features"),
        "{err}"
    );
    assert_eq!(epochs, 0);
}
