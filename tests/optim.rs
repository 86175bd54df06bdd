//! Optimizers against hand-computed values and a scalar f64 re-implementation of
//! PyTorch's SGD and Adam/AdamW; the decay flag; hyper-parameter validation; state
//! remapping across a pattern change; convergence on a quadratic.

use std::sync::Arc;

use rewire::nn::{Param, ParamId, ParamShape, ParamStore};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::{aligned_from_slice, CsrPattern};
use rewire::Error;

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn vector(name: &str, values: &[f32], decay: bool) -> Param {
    Param::new(
        name,
        ParamShape::Vector { len: values.len() },
        aligned_from_slice(values),
        decay,
    )
    .unwrap()
}

/// A store with a decayed "weight" and a non-decayed "bias".
fn store(w: &[f32], b: &[f32]) -> (ParamStore, ParamId, ParamId) {
    let mut s = ParamStore::new();
    let wid = s.add(vector("w", w, true));
    let bid = s.add(vector("b", b, false));
    (s, wid, bid)
}

/// A deterministic, varying gradient for step `t`, entry `k`.
fn grad_at(t: usize, k: usize, salt: usize) -> f64 {
    let x = (t * 7 + k * 13 + salt * 29) % 17;
    (x as f64 - 8.0) * 0.125 + 0.01 * (k as f64 + 1.0)
}

fn set_grads(s: &mut ParamStore, t: usize) {
    for (id, p) in s.iter_mut() {
        for (k, g) in p.grad.iter_mut().enumerate() {
            *g = grad_at(t, k, id.0) as f32;
        }
    }
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}[{k}]: got {g}, want {w} (err {err})"
        );
    }
}

#[track_caller]
fn expect_arg(res: rewire::Result<Optimizer>, name: &str) {
    match res {
        Err(Error::InvalidArgument { name: n, .. }) => assert_eq!(n, name),
        Err(e) => panic!("expected InvalidArgument {name}, got {e}"),
        Ok(_) => panic!("expected InvalidArgument {name}, got Ok"),
    }
}

/// PyTorch's SGD, one scalar, in f64.
struct SgdRef {
    momentum: f64,
    nesterov: bool,
    wd: f64,
    buf: Option<f64>,
}

impl SgdRef {
    fn step(&mut self, w: &mut f64, grad: f64, lr: f64) {
        let mut g = grad + self.wd * *w;
        if self.momentum != 0.0 {
            let b = match self.buf {
                None => g,
                Some(b) => self.momentum * b + g,
            };
            self.buf = Some(b);
            g = if self.nesterov {
                g + self.momentum * b
            } else {
                b
            };
        }
        *w -= lr * g;
    }
}

/// PyTorch's Adam / AdamW, one scalar, in f64.
struct AdamRef {
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    decoupled: bool,
    m: f64,
    v: f64,
    t: i32,
}

impl AdamRef {
    fn new(b1: f64, b2: f64, eps: f64, wd: f64, decoupled: bool) -> Self {
        AdamRef {
            b1,
            b2,
            eps,
            wd,
            decoupled,
            m: 0.0,
            v: 0.0,
            t: 0,
        }
    }
    fn step(&mut self, w: &mut f64, grad: f64, lr: f64) {
        self.t += 1;
        let mut g = grad;
        if self.decoupled {
            *w *= 1.0 - lr * self.wd;
        } else {
            g += self.wd * *w;
        }
        self.m = self.b1 * self.m + (1.0 - self.b1) * g;
        self.v = self.b2 * self.v + (1.0 - self.b2) * g * g;
        let m_hat = self.m / (1.0 - self.b1.powi(self.t));
        let v_hat = self.v / (1.0 - self.b2.powi(self.t));
        *w -= lr * m_hat / (v_hat.sqrt() + self.eps);
    }
}

/// One scalar's reference optimizer: `(weight, grad, lr)`.
type Stepper = Box<dyn FnMut(&mut f64, f64, f64)>;

/// Runs `steps` steps of `config` on a weight (decayed) and a bias (not decayed) and
/// the scalar reference side by side; compares after every step.
fn run_against_reference(config: OptimizerConfig, steps: usize, lr: f32, tol: f64) {
    let w0 = [0.5f32, -1.25, 2.0, 0.0, -0.75, 3.5, 1.0];
    let b0 = [0.1f32, -0.2, 0.3];
    let (mut s, wid, bid) = store(&w0, &b0);
    let mut opt = Optimizer::new(config.clone(), &s).unwrap();

    let make = |decay: bool| -> Stepper {
        match config {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let mut r = SgdRef {
                    momentum: momentum as f64,
                    nesterov,
                    wd: if decay { weight_decay as f64 } else { 0.0 },
                    buf: None,
                };
                Box::new(move |w, g, lr| r.step(w, g, lr))
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let mut r = AdamRef::new(
                    beta1 as f64,
                    beta2 as f64,
                    eps as f64,
                    if decay { weight_decay as f64 } else { 0.0 },
                    decoupled,
                );
                Box::new(move |w, g, lr| r.step(w, g, lr))
            }
        }
    };
    let mut wref: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
    let mut bref: Vec<f64> = b0.iter().map(|&x| x as f64).collect();
    let mut wsteppers: Vec<_> = (0..w0.len()).map(|_| make(true)).collect();
    let mut bsteppers: Vec<_> = (0..b0.len()).map(|_| make(false)).collect();

    for t in 0..steps {
        set_grads(&mut s, t);
        opt.step(&mut s, lr).unwrap();
        for (k, (w, f)) in wref.iter_mut().zip(&mut wsteppers).enumerate() {
            f(w, grad_at(t, k, wid.0), lr as f64);
        }
        for (k, (b, f)) in bref.iter_mut().zip(&mut bsteppers).enumerate() {
            f(b, grad_at(t, k, bid.0), lr as f64);
        }
        assert_close(
            &s.get(wid).value,
            &wref,
            tol,
            &format!("{config:?} w step {t}"),
        );
        assert_close(
            &s.get(bid).value,
            &bref,
            tol,
            &format!("{config:?} b step {t}"),
        );
    }
    assert_eq!(opt.steps(), steps as u64);
}

// ---------------------------------------------------------------------------------------
// hand-computed steps
// ---------------------------------------------------------------------------------------

#[test]
fn sgd_plain_hand_computed() {
    let (mut s, wid, bid) = store(&[1.0, -2.0], &[0.5]);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(0.0), &s).unwrap();
    assert!(opt.state(wid).is_empty(), "plain SGD keeps no buffer");
    s.get_mut(wid).grad.copy_from_slice(&[0.5, -1.0]);
    s.get_mut(bid).grad.copy_from_slice(&[2.0]);
    opt.step(&mut s, 0.1).unwrap();
    assert_close(&s.get(wid).value, &[0.95, -1.9], 1e-6, "w");
    assert_close(&s.get(bid).value, &[0.3], 1e-6, "b");
    opt.step(&mut s, 0.1).unwrap();
    assert_close(&s.get(wid).value, &[0.90, -1.8], 1e-6, "w");
}

#[test]
fn sgd_momentum_hand_computed() {
    // w = 1, g = 1 every step, momentum 0.9, lr 0.1:
    // step 1: buf = 1      (PyTorch's first step: buf = g), w = 0.9
    // step 2: buf = 1.9,   w = 0.71
    // step 3: buf = 2.71,  w = 0.439
    let (mut s, wid, _) = store(&[1.0], &[]);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(0.9), &s).unwrap();
    let expect = [(1.0, 0.9), (1.9, 0.71), (2.71, 0.439)];
    for (buf, w) in expect {
        s.get_mut(wid).grad[0] = 1.0;
        opt.step(&mut s, 0.1).unwrap();
        assert_close(&opt.state(wid)[0], &[buf], 1e-6, "buf");
        assert_close(&s.get(wid).value, &[w], 1e-6, "w");
    }
}

#[test]
fn sgd_nesterov_hand_computed() {
    // w = 1, g = 1, momentum 0.9, lr 0.1, Nesterov:
    // step 1: buf = 1,   d = 1 + 0.9·1 = 1.9,     w = 0.81
    // step 2: buf = 1.9, d = 1 + 0.9·1.9 = 2.71,  w = 0.539
    let (mut s, wid, _) = store(&[1.0], &[]);
    let cfg = OptimizerConfig::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(cfg, &s).unwrap();
    for w in [0.81, 0.539] {
        s.get_mut(wid).grad[0] = 1.0;
        opt.step(&mut s, 0.1).unwrap();
        assert_close(&s.get(wid).value, &[w], 1e-6, "w");
    }
}

#[test]
fn sgd_weight_decay_hand_computed_and_decay_flag() {
    // w = 2, g = 0.5, wd = 0.1, lr = 0.5: d = 0.5 + 0.2 = 0.7, w = 1.65.
    // The bias (decay = false) ignores wd: b = 2 − 0.25 = 1.75.
    let (mut s, wid, bid) = store(&[2.0], &[2.0]);
    let cfg = OptimizerConfig::Sgd {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.1,
    };
    let mut opt = Optimizer::new(cfg, &s).unwrap();
    s.get_mut(wid).grad[0] = 0.5;
    s.get_mut(bid).grad[0] = 0.5;
    opt.step(&mut s, 0.5).unwrap();
    assert_close(&s.get(wid).value, &[1.65], 1e-6, "w");
    assert_close(&s.get(bid).value, &[1.75], 1e-6, "b");
}

#[test]
fn adam_first_step_hand_computed() {
    // First step: m̂ = g, v̂ = g², so w −= lr·g/(|g| + eps) ≈ lr·sign(g).
    let (mut s, wid, _) = store(&[1.0, 1.0, 1.0], &[]);
    let mut opt = Optimizer::new(OptimizerConfig::adam(), &s).unwrap();
    s.get_mut(wid).grad.copy_from_slice(&[0.3, -2.0, 0.0]);
    opt.step(&mut s, 0.01).unwrap();
    assert_close(&s.get(wid).value, &[0.99, 1.01, 1.0], 1e-6, "w");
    let st = opt.state(wid);
    assert_eq!(st.len(), 2);
    assert_close(&st[0], &[0.03, -0.2, 0.0], 1e-6, "m");
    assert_close(&st[1], &[0.09e-3, 4e-3, 0.0], 1e-6, "v");
}

#[test]
fn adamw_decays_weights_before_the_update() {
    // AdamW, zero gradient: m = v = 0 so the Adam term is 0; w ← w·(1 − lr·wd).
    // Adam (L2) with the same zero gradient: g = wd·w, first step moves by lr·sign(w).
    let (mut s, wid, bid) = store(&[2.0], &[2.0]);
    let mut opt = Optimizer::new(OptimizerConfig::adamw(0.5), &s).unwrap();
    opt.step(&mut s, 0.1).unwrap();
    assert_close(&s.get(wid).value, &[2.0 * (1.0 - 0.05)], 1e-6, "w AdamW");
    assert_close(
        &s.get(bid).value,
        &[2.0],
        1e-7,
        "b untouched (decay = false)",
    );

    let (mut s, wid, bid) = store(&[2.0], &[2.0]);
    let cfg = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
        decoupled: false,
    };
    let mut opt = Optimizer::new(cfg, &s).unwrap();
    opt.step(&mut s, 0.1).unwrap();
    assert_close(&s.get(wid).value, &[1.9], 1e-6, "w Adam L2");
    assert_close(
        &s.get(bid).value,
        &[2.0],
        1e-7,
        "b untouched (decay = false)",
    );
}

// ---------------------------------------------------------------------------------------
// against the scalar reference
// ---------------------------------------------------------------------------------------

#[test]
fn sgd_plain_matches_reference() {
    run_against_reference(OptimizerConfig::sgd(0.0), 10, 0.05, 1e-5);
}

#[test]
fn sgd_momentum_matches_reference() {
    run_against_reference(OptimizerConfig::sgd(0.9), 12, 0.05, 1e-5);
}

#[test]
fn sgd_nesterov_matches_reference() {
    let cfg = OptimizerConfig::Sgd {
        momentum: 0.8,
        nesterov: true,
        weight_decay: 0.0,
    };
    run_against_reference(cfg, 12, 0.05, 1e-5);
}

#[test]
fn sgd_weight_decay_matches_reference() {
    for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
        let cfg = OptimizerConfig::Sgd {
            momentum,
            nesterov,
            weight_decay: 0.05,
        };
        run_against_reference(cfg, 12, 0.05, 1e-5);
    }
}

#[test]
fn adam_matches_reference() {
    run_against_reference(OptimizerConfig::adam(), 15, 0.01, 1e-5);
    let cfg = OptimizerConfig::Adam {
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
        decoupled: false,
    };
    run_against_reference(cfg, 15, 0.01, 1e-5);
}

#[test]
fn adamw_matches_reference() {
    run_against_reference(OptimizerConfig::adamw(0.01), 15, 0.01, 1e-5);
    let cfg = OptimizerConfig::Adam {
        beta1: 0.5,
        beta2: 0.9,
        eps: 1e-3,
        weight_decay: 0.2,
        decoupled: true,
    };
    run_against_reference(cfg, 15, 0.05, 1e-5);
}

// ---------------------------------------------------------------------------------------
// validation and errors
// ---------------------------------------------------------------------------------------

#[test]
fn hyper_parameters_are_validated() {
    let (s, _, _) = store(&[1.0], &[1.0]);
    let sgd = |momentum, nesterov, weight_decay| OptimizerConfig::Sgd {
        momentum,
        nesterov,
        weight_decay,
    };
    expect_arg(Optimizer::new(sgd(1.0, false, 0.0), &s), "momentum");
    expect_arg(Optimizer::new(sgd(-0.1, false, 0.0), &s), "momentum");
    expect_arg(Optimizer::new(sgd(f32::NAN, false, 0.0), &s), "momentum");
    expect_arg(Optimizer::new(sgd(0.0, true, 0.0), &s), "nesterov");
    expect_arg(Optimizer::new(sgd(0.9, false, -1e-4), &s), "weight_decay");
    expect_arg(
        Optimizer::new(sgd(0.9, false, f32::INFINITY), &s),
        "weight_decay",
    );
    assert!(Optimizer::new(sgd(0.0, false, 0.0), &s).is_ok());
    assert!(Optimizer::new(sgd(0.99, true, 1e-4), &s).is_ok());

    let adam = |beta1, beta2, eps, weight_decay| OptimizerConfig::Adam {
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled: false,
    };
    expect_arg(Optimizer::new(adam(1.0, 0.999, 1e-8, 0.0), &s), "beta1");
    expect_arg(Optimizer::new(adam(-0.5, 0.999, 1e-8, 0.0), &s), "beta1");
    expect_arg(Optimizer::new(adam(0.9, 1.0, 1e-8, 0.0), &s), "beta2");
    expect_arg(Optimizer::new(adam(0.9, f32::NAN, 1e-8, 0.0), &s), "beta2");
    expect_arg(Optimizer::new(adam(0.9, 0.999, 0.0, 0.0), &s), "eps");
    expect_arg(Optimizer::new(adam(0.9, 0.999, -1e-8, 0.0), &s), "eps");
    expect_arg(
        Optimizer::new(adam(0.9, 0.999, 1e-8, -0.1), &s),
        "weight_decay",
    );
    assert!(Optimizer::new(adam(0.0, 0.0, 1e-8, 0.0), &s).is_ok());

    let opt = Optimizer::new(OptimizerConfig::adamw(0.01), &s).unwrap();
    assert_eq!(opt.config(), &OptimizerConfig::adamw(0.01));
}

#[test]
fn step_rejects_bad_learning_rates_and_mismatched_stores() {
    let (mut s, wid, _) = store(&[1.0, 2.0], &[1.0]);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(0.9), &s).unwrap();
    for lr in [-0.1, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            opt.step(&mut s, lr),
            Err(Error::InvalidArgument { name: "lr", .. })
        ));
    }
    // a gradient of the wrong length: nothing is updated
    s.get_mut(wid).grad = aligned_from_slice(&[1.0]);
    assert!(matches!(opt.step(&mut s, 0.1), Err(Error::Length { .. })));
    assert_eq!(&s.get(wid).value[..], &[1.0, 2.0]);
    assert_eq!(opt.steps(), 0);
    // a parameter added after the optimizer was built
    s.get_mut(wid).grad = aligned_from_slice(&[0.0, 0.0]);
    let mut s2 = s.clone();
    s2.add(vector("extra", &[1.0], false));
    assert!(opt.step(&mut s2, 0.1).is_err());
    assert!(opt.step(&mut s, 0.1).is_ok());
    // unknown ids have no state
    assert!(opt.state(ParamId(99)).is_empty());
}

// ---------------------------------------------------------------------------------------
// remap across a pattern change
// ---------------------------------------------------------------------------------------

/// 3 × 4 patterns. old: (0,0) (0,2) (1,1) (2,0) (2,3); new: (0,2) (0,3) (1,1) (2,1) (2,3).
/// Survivors: (0,2), (1,1), (2,3) — old entries 1, 2, 4, new entries 0, 2, 4.
fn patterns() -> (Arc<CsrPattern>, Arc<CsrPattern>) {
    let old = CsrPattern::new(3, 4, vec![0, 2, 3, 5], vec![0, 2, 1, 0, 3]).unwrap();
    let new = CsrPattern::new(3, 4, vec![0, 2, 3, 5], vec![2, 3, 1, 1, 3]).unwrap();
    (Arc::new(old), Arc::new(new))
}

fn sparse_store(pattern: &Arc<CsrPattern>) -> (ParamStore, ParamId) {
    let mut s = ParamStore::new();
    let values = aligned_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    let shape = ParamShape::Sparse {
        pattern: Arc::clone(pattern),
    };
    let id = s.add(Param::new("fc.weight", shape, values, true).unwrap());
    (s, id)
}

#[test]
fn remap_keeps_survivors_and_zeroes_new_connections() {
    let (old, new) = patterns();
    for cfg in [OptimizerConfig::sgd(0.9), OptimizerConfig::adam()] {
        let (mut s, id) = sparse_store(&old);
        let mut opt = Optimizer::new(cfg.clone(), &s).unwrap();
        for t in 0..3 {
            set_grads(&mut s, t);
            opt.step(&mut s, 0.01).unwrap();
        }
        let before: Vec<Vec<f32>> = opt.state(id).iter().map(|b| b.to_vec()).collect();
        assert!(before.iter().all(|b| b.iter().all(|&x| x != 0.0)));

        // changing the pattern without remapping the optimizer is an error
        s.get_mut(id).set_pattern(Arc::clone(&new), 0.0).unwrap();
        assert!(matches!(
            opt.step(&mut s, 0.01),
            Err(Error::InvalidArgument { name: "params", .. })
        ));

        opt.remap(id, &old, &new).unwrap();
        let after = opt.state(id);
        assert_eq!(after.len(), before.len(), "{cfg:?}");
        for (b, a) in before.iter().zip(after) {
            assert_eq!(a.len(), new.nnz());
            let want = [b[1], 0.0, b[2], 0.0, b[4]];
            assert_eq!(&a[..], &want, "{cfg:?}");
        }
        // and stepping works again
        set_grads(&mut s, 3);
        opt.step(&mut s, 0.01).unwrap();
    }
}

#[test]
fn remap_rejects_wrong_patterns() {
    let (old, new) = patterns();
    let (s, id) = sparse_store(&old);
    let mut opt = Optimizer::new(OptimizerConfig::sgd(0.9), &s).unwrap();
    // unknown id
    assert!(opt.remap(ParamId(5), &old, &new).is_err());
    // a different shape
    let other = CsrPattern::new(3, 5, vec![0, 1, 1, 1], vec![4]).unwrap();
    assert!(matches!(
        opt.remap(id, &old, &other),
        Err(Error::Shape { .. })
    ));
    // `old` is not the pattern the state is aligned with: another structure, or even the
    // same structure built separately (a different version)
    let wrong_old = CsrPattern::new(3, 4, vec![0, 1, 1, 1], vec![0]).unwrap();
    let rebuilt_old =
        CsrPattern::new(3, 4, old.row_ptr().to_vec(), old.col_idx().to_vec()).unwrap();
    for bad in [&wrong_old, &rebuilt_old] {
        assert!(matches!(
            opt.remap(id, bad, &new),
            Err(Error::InvalidArgument { name: "old", .. })
        ));
    }
    // state untouched by the failed calls
    assert_eq!(opt.state(id)[0].len(), old.nnz());
    // a clone keeps the version, so it is accepted
    let old_clone = (*old).clone();
    opt.remap(id, &old_clone, &new).unwrap();
    assert_eq!(opt.state(id)[0].len(), new.nnz());
    // the state now follows `new`: remapping from `old` again is refused
    assert!(opt.remap(id, &old, &new).is_err());

    // a dense parameter has no pattern version: only the length is checked
    let mut s = ParamStore::new();
    let shape = ParamShape::Dense { rows: 3, cols: 4 };
    let id = s.add(Param::new("dense", shape, aligned_from_slice(&[1.0; 12]), true).unwrap());
    let mut opt = Optimizer::new(OptimizerConfig::adam(), &s).unwrap();
    assert!(matches!(
        opt.remap(id, &old, &new),
        Err(Error::Length { .. })
    ));
    let full = CsrPattern::full(3, 4).unwrap();
    opt.remap(id, &full, &new).unwrap();
    assert_eq!(opt.state(id)[1].len(), new.nnz());
}

// ---------------------------------------------------------------------------------------
// convergence
// ---------------------------------------------------------------------------------------

/// f(w) = ½ Σ a_k (w_k − c_k)², gradient a_k (w_k − c_k).
fn minimise_quadratic(cfg: OptimizerConfig, lr: f32, steps: usize) -> f64 {
    let a = [1.0f32, 2.0, 0.5, 3.0, 1.5];
    let c = [1.0f32, -2.0, 3.0, 0.5, -1.0];
    let mut s = ParamStore::new();
    let id = s.add(vector("w", &[0.0; 5], false));
    let mut opt = Optimizer::new(cfg, &s).unwrap();
    for _ in 0..steps {
        let p = s.get_mut(id);
        for k in 0..5 {
            p.grad[k] = a[k] * (p.value[k] - c[k]);
        }
        opt.step(&mut s, lr).unwrap();
    }
    let w = &s.get(id).value;
    (0..5)
        .map(|k| 0.5 * a[k] as f64 * ((w[k] - c[k]) as f64).powi(2))
        .sum()
}

#[test]
fn sgd_minimises_a_quadratic() {
    let start = minimise_quadratic(OptimizerConfig::sgd(0.0), 0.1, 0);
    assert!(start > 1.0);
    for cfg in [
        OptimizerConfig::sgd(0.0),
        OptimizerConfig::sgd(0.9),
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        },
    ] {
        let loss = minimise_quadratic(cfg.clone(), 0.1, 300);
        assert!(loss < 1e-8, "{cfg:?}: loss {loss}");
    }
}

#[test]
fn adam_minimises_a_quadratic() {
    let loss = minimise_quadratic(OptimizerConfig::adam(), 0.05, 2000);
    assert!(loss < 1e-4, "loss {loss}");
}
