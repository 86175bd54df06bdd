//! Finite-difference checks of every autograd op: the analytic gradient of each parameter
//! and of the input agrees with central differences of the loss.

use std::sync::Arc;

use rand::RngExt;
use rewire::autograd::{Tape, Var};
use rewire::cpu::Par;
use rewire::nn::{Param, ParamId, ParamShape, ParamStore};
use rewire::sparse::{aligned_from_slice, seed_rng, CsrPattern, SeedRng};

const IN: usize = 7;
const HID: usize = 6;
const CLASSES: usize = 4;
const BATCH: usize = 5;

type Build = dyn Fn(&mut Tape, &ParamStore, Var) -> rewire::Result<Var>;

fn rand_vec(len: usize, rng: &mut SeedRng, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

fn sparse_param(rows: usize, cols: usize, nnz: usize, rng: &mut SeedRng) -> Param {
    let pattern = Arc::new(CsrPattern::random(rows, cols, nnz, rng).unwrap());
    let values = rand_vec(nnz, rng, 0.8);
    Param::new(
        "w",
        ParamShape::Sparse { pattern },
        aligned_from_slice(&values),
        true,
    )
    .unwrap()
}

fn dense_param(rows: usize, cols: usize, rng: &mut SeedRng) -> Param {
    let values = rand_vec(rows * cols, rng, 0.8);
    Param::new(
        "w",
        ParamShape::Dense { rows, cols },
        aligned_from_slice(&values),
        true,
    )
    .unwrap()
}

fn bias_param(len: usize, rng: &mut SeedRng) -> Param {
    let values = rand_vec(len, rng, 0.5);
    Param::new(
        "b",
        ParamShape::Vector { len },
        aligned_from_slice(&values),
        false,
    )
    .unwrap()
}

fn labels() -> Vec<u32> {
    (0..BATCH as u32).map(|j| j % CLASSES as u32).collect()
}

/// Loss of `build` at the given parameters and input (a fresh tape each time).
fn loss(build: &Build, params: &ParamStore, x: &[f32], rows: usize) -> f64 {
    let mut tape = Tape::new(Par::Seq);
    let xv = tape.input(x, rows, BATCH, true).unwrap();
    let logits = build(&mut tape, params, xv).unwrap();
    let l = tape.softmax_cross_entropy(logits, &labels()).unwrap();
    tape.value(l)[0] as f64
}

fn close(analytic: f32, numeric: f64, what: &str) {
    let tol = 2e-3 + 2e-2 * numeric.abs();
    assert!(
        (analytic as f64 - numeric).abs() <= tol,
        "{what}: analytic {analytic} vs finite difference {numeric}"
    );
}

/// Compares analytic gradients of every parameter value and every input entry with
/// central differences.
fn check(build: &Build, mut params: ParamStore, x: Vec<f32>, rows: usize) {
    let mut tape = Tape::new(Par::Seq);
    let xv = tape.input(&x, rows, BATCH, true).unwrap();
    let logits = build(&mut tape, &params, xv).unwrap();
    let l = tape.softmax_cross_entropy(logits, &labels()).unwrap();
    params.zero_grad();
    tape.backward(l, &mut params).unwrap();
    let dx = tape.grad(xv).expect("input gradient").to_vec();
    let h = 1e-2f32;
    let ids: Vec<ParamId> = params.iter().map(|(id, _)| id).collect();
    let mut checked = 0;
    for id in ids {
        let grad = params.get(id).grad.to_vec();
        for (k, &analytic) in grad.iter().enumerate() {
            let orig = params.get(id).value[k];
            params.get_mut(id).value[k] = orig + h;
            let up = loss(build, &params, &x, rows);
            params.get_mut(id).value[k] = orig - h;
            let down = loss(build, &params, &x, rows);
            params.get_mut(id).value[k] = orig;
            close(
                analytic,
                (up - down) / (2.0 * h as f64),
                &format!("{} [{k}]", params.get(id).name),
            );
            checked += 1;
        }
    }
    for k in 0..x.len() {
        let mut xp = x.clone();
        xp[k] += h;
        let up = loss(build, &params, &xp, rows);
        xp[k] -= 2.0 * h;
        let down = loss(build, &params, &xp, rows);
        close(
            dx[k],
            (up - down) / (2.0 * h as f64),
            &format!("input [{k}]"),
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// Inputs bounded away from zero, so ReLU-like kinks are not crossed by ±h.
fn input(rows: usize, rng: &mut SeedRng) -> Vec<f32> {
    (0..rows * BATCH)
        .map(|_| {
            let v: f32 = rng.random_range(0.2..1.0);
            if rng.random::<bool>() {
                v
            } else {
                -v
            }
        })
        .collect()
}

#[test]
fn sparse_linear_gradients() {
    let mut rng = seed_rng(1);
    let mut params = ParamStore::new();
    let w = params.add(sparse_param(CLASSES, IN, 12, &mut rng));
    let x = input(IN, &mut rng);
    check(&move |t, p, x| t.linear(p, x, w), params, x, IN);
}

#[test]
fn sparse_linear_with_empty_rows_and_columns() {
    let mut rng = seed_rng(2);
    let mut params = ParamStore::new();
    // rows 1 and 3 empty; column 0 never used
    let pattern = CsrPattern::new(CLASSES, IN, vec![0, 2, 2, 5, 5], vec![1, 4, 2, 3, 6]).unwrap();
    let values = rand_vec(5, &mut rng, 0.8);
    let w = params.add(
        Param::new(
            "w",
            ParamShape::Sparse {
                pattern: Arc::new(pattern),
            },
            aligned_from_slice(&values),
            true,
        )
        .unwrap(),
    );
    let x = input(IN, &mut rng);
    check(&move |t, p, x| t.linear(p, x, w), params, x, IN);
}

#[test]
fn dense_linear_and_bias_gradients() {
    let mut rng = seed_rng(3);
    let mut params = ParamStore::new();
    let w = params.add(dense_param(CLASSES, IN, &mut rng));
    let b = params.add(bias_param(CLASSES, &mut rng));
    let x = input(IN, &mut rng);
    check(
        &move |t, p, x| {
            let z = t.linear(p, x, w)?;
            t.bias_add(p, z, b)
        },
        params,
        x,
        IN,
    );
}

fn two_layer(act: fn(&mut Tape, Var) -> rewire::Result<Var>, seed: u64) {
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let w1 = params.add(sparse_param(HID, IN, 20, &mut rng));
    let b1 = params.add(bias_param(HID, &mut rng));
    let w2 = params.add(dense_param(CLASSES, HID, &mut rng));
    let x = input(IN, &mut rng);
    check(
        &move |t, p, x| {
            let z = t.linear(p, x, w1)?;
            let z = t.bias_add(p, z, b1)?;
            let h = act(t, z)?;
            t.linear(p, h, w2)
        },
        params,
        x,
        IN,
    );
}

#[test]
fn relu_gradients() {
    two_layer(|t, x| t.relu(x), 4);
}

#[test]
fn leaky_relu_gradients() {
    two_layer(|t, x| t.leaky_relu(x, 0.1), 5);
}

#[test]
fn tanh_gradients() {
    two_layer(|t, x| t.tanh(x), 6);
}

#[test]
fn sigmoid_gradients() {
    two_layer(|t, x| t.sigmoid(x), 7);
}

#[test]
fn dropout_gradients() {
    // The same seed gives the same mask on every evaluation, so the loss is a fixed
    // function of the parameters.
    two_layer(
        |t, x| {
            let mut rng = seed_rng(99);
            t.dropout(x, 0.3, &mut rng)
        },
        8,
    );
}

#[test]
fn softmax_cross_entropy_gradients() {
    let mut rng = seed_rng(9);
    let x = input(CLASSES, &mut rng);
    check(&|_, _, x| Ok(x), ParamStore::new(), x, CLASSES);
}

#[test]
fn softmax_cross_entropy_is_stable_for_huge_logits() {
    let mut tape = Tape::new(Par::Seq);
    let logits: Vec<f32> = (0..CLASSES * BATCH)
        .map(|k| if k % 3 == 0 { 1e4 } else { -1e4 })
        .collect();
    let xv = tape.input(&logits, CLASSES, BATCH, true).unwrap();
    let l = tape.softmax_cross_entropy(xv, &labels()).unwrap();
    assert!(tape.value(l)[0].is_finite());
    let mut params = ParamStore::new();
    tape.backward(l, &mut params).unwrap();
    assert!(tape.grad(xv).unwrap().iter().all(|g| g.is_finite()));
}

#[test]
fn bad_shapes_and_labels_are_errors() {
    let mut rng = seed_rng(10);
    let mut params = ParamStore::new();
    let w = params.add(dense_param(CLASSES, IN, &mut rng));
    let mut tape = Tape::new(Par::Seq);
    let x = tape
        .input(&[0.0; (IN + 1) * BATCH], IN + 1, BATCH, false)
        .unwrap();
    assert!(tape.linear(&params, x, w).is_err());
    let logits = tape
        .input(&[0.0; CLASSES * BATCH], CLASSES, BATCH, false)
        .unwrap();
    assert!(tape.softmax_cross_entropy(logits, &[0, 1]).is_err());
    assert!(tape
        .softmax_cross_entropy(logits, &[0, 1, 2, 3, 4])
        .is_err()); // label 4 ≥ 4 classes
    assert!(tape.input(&[0.0; 3], 2, 2, false).is_err());
    assert!(tape.dropout(logits, 1.0, &mut rng).is_err());
}

#[test]
fn sparse_weight_gradient_is_values_length() {
    let mut rng = seed_rng(11);
    let mut params = ParamStore::new();
    let w = params.add(sparse_param(300, 400, 600, &mut rng));
    let mut tape = Tape::new(Par::Seq);
    let x = tape
        .input(&rand_vec(400 * BATCH, &mut rng, 1.0), 400, BATCH, false)
        .unwrap();
    let z = tape.linear(&params, x, w).unwrap();
    let l = tape.softmax_cross_entropy(z, &[0, 1, 2, 3, 299]).unwrap();
    tape.backward(l, &mut params).unwrap();
    assert_eq!(params.get(w).grad.len(), 600);
    assert!(params.get(w).grad.iter().any(|&g| g != 0.0));
}

fn fused(act: rewire::autograd::Act, seed: u64) {
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let w1 = params.add(sparse_param(HID, IN, 20, &mut rng));
    let b1 = params.add(bias_param(HID, &mut rng));
    let w2 = params.add(dense_param(CLASSES, HID, &mut rng));
    let b2 = params.add(bias_param(CLASSES, &mut rng));
    let x = input(IN, &mut rng);
    check(
        &move |t, p, x| {
            let z = t.linear(p, x, w1)?;
            let h = t.bias_act(p, z, b1, act)?;
            let z = t.linear(p, h, w2)?;
            t.bias_act(p, z, b2, rewire::autograd::Act::Identity)
        },
        params,
        x,
        IN,
    );
}

#[test]
fn fused_bias_activation_gradients() {
    use rewire::autograd::Act;
    for (k, act) in [
        Act::Relu,
        Act::LeakyRelu(0.1),
        Act::Tanh,
        Act::Sigmoid,
        Act::Identity,
    ]
    .into_iter()
    .enumerate()
    {
        fused(act, 20 + k as u64);
    }
}

#[test]
fn fused_bias_activation_matches_separate_ops() {
    let mut rng = seed_rng(30);
    let mut params = ParamStore::new();
    let w = params.add(sparse_param(HID, IN, 20, &mut rng));
    let b = params.add(bias_param(HID, &mut rng));
    let x = input(IN, &mut rng);
    let mut t1 = Tape::new(Par::Seq);
    let xv = t1.input(&x, IN, BATCH, false).unwrap();
    let z1 = t1.linear(&params, xv, w).unwrap();
    let fused = t1
        .bias_act(&params, z1, b, rewire::autograd::Act::Tanh)
        .unwrap();
    let mut t2 = Tape::new(Par::Seq);
    let xv = t2.input(&x, IN, BATCH, false).unwrap();
    let z = t2.linear(&params, xv, w).unwrap();
    let z = t2.bias_add(&params, z, b).unwrap();
    let sep = t2.tanh(z).unwrap();
    assert_eq!(t1.value(fused), t2.value(sep));
    let err = t1
        .bias_act(&params, z1, b, rewire::autograd::Act::LeakyRelu(-0.5))
        .unwrap_err();
    assert!(err.to_string().contains("slope"), "{err}");
}
