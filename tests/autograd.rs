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
fn check(build: &Build, params: ParamStore, x: Vec<f32>, rows: usize) {
    check_step(build, params, x, rows, 1e-2);
}

/// [`check`] with difference step `h` (smaller for strongly curved losses).
fn check_step(build: &Build, mut params: ParamStore, x: Vec<f32>, rows: usize, h: f32) {
    let mut tape = Tape::new(Par::Seq);
    let xv = tape.input(&x, rows, BATCH, true).unwrap();
    let logits = build(&mut tape, &params, xv).unwrap();
    let l = tape.softmax_cross_entropy(logits, &labels()).unwrap();
    params.zero_grad();
    tape.backward(l, &mut params).unwrap();
    let dx = tape.grad(xv).expect("input gradient").to_vec();
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

/// A sparse layer with a bias and `act`, then a dense head: through `linear` and
/// `bias_act`, or (`one_node`) through `linear_bias_act`, which makes one fused SpMM
/// node of the sparse layer for identity, ReLU and leaky ReLU.
fn fused_case(act: rewire::autograd::Act, seed: u64, one_node: bool) {
    use rewire::autograd::Act;
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let w1 = params.add(sparse_param(HID, IN, 20, &mut rng));
    let b1 = params.add(bias_param(HID, &mut rng));
    let w2 = params.add(dense_param(CLASSES, HID, &mut rng));
    let b2 = params.add(bias_param(CLASSES, &mut rng));
    let x = input(IN, &mut rng);
    check(
        &move |t, p, x| {
            if one_node {
                let (_, h) = t.linear_bias_act(p, x, w1, b1, act)?;
                Ok(t.linear_bias_act(p, h, w2, b2, Act::Identity)?.1)
            } else {
                let z = t.linear(p, x, w1)?;
                let h = t.bias_act(p, z, b1, act)?;
                let z = t.linear(p, h, w2)?;
                t.bias_act(p, z, b2, Act::Identity)
            }
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
        fused_case(act, 20 + k as u64, false);
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

#[test]
fn fused_sparse_linear_gradients() {
    use rewire::autograd::Act;
    // the seeds of `fused_bias_activation_gradients`: their pre-activations stay clear of
    // ReLU's kink by more than the difference step (seed 40, for one, has a unit within
    // 0.01 of it, where central differences of linear + bias_act fail the same way)
    for (act, seed) in [
        (Act::Relu, 20),
        (Act::LeakyRelu(0.1), 21),
        (Act::Tanh, 22),
        (Act::Identity, 24),
    ] {
        fused_case(act, seed, true);
    }
}

/// Two fused sparse layers (`linear_bias_act`: one SpMM node each), on shapes that reach
/// every tile width of the SpMM (N = 77: 64 + 8 + 5): the second's transposed product
/// applies the first's nonlinearity and bias gradient as it writes (`spmm_t_act_grad`).
/// Values, every gradient and both retained `dZ` equal `linear` + `bias_act` bit for
/// bit — also when a second reader of the hidden layer turns the folding off.
#[test]
fn fused_backward_through_two_sparse_layers_matches_separate_ops() {
    use rewire::autograd::Act;
    for (k, act) in [Act::Relu, Act::LeakyRelu(0.05), Act::Identity]
        .into_iter()
        .enumerate()
    {
        for second_reader in [false, true] {
            let mut rng = seed_rng(70 + k as u64);
            let (fan_in, hid, out, n) = (41, 37, 9, 77);
            let mut params = ParamStore::new();
            let w1 = params.add(sparse_param(hid, fan_in, 300, &mut rng));
            let b1 = params.add(bias_param(hid, &mut rng));
            let w2 = params.add(sparse_param(out, hid, 120, &mut rng));
            let b2 = params.add(bias_param(out, &mut rng));
            let x = rand_vec(fan_in * n, &mut rng, 1.0);
            let labels: Vec<u32> = (0..n as u32).map(|j| j % out as u32).collect();
            let run = |fused: bool, params: &mut ParamStore| {
                let mut t = Tape::new(Par::Rayon(2));
                t.set_retain_linear_grads(true);
                let xv = t.input(&x, fan_in, n, true).unwrap();
                let layer = |t: &mut Tape, params: &ParamStore, h, w, b, act| {
                    if fused {
                        t.linear_bias_act(params, h, w, b, act).unwrap()
                    } else {
                        let z = t.linear(params, h, w).unwrap();
                        (z, t.bias_act(params, z, b, act).unwrap())
                    }
                };
                let (z1, h1) = layer(&mut t, params, xv, w1, b1, act);
                if second_reader {
                    t.tanh(h1).unwrap(); // read, but not part of the loss
                }
                let (z2, y) = layer(&mut t, params, h1, w2, b2, Act::Identity);
                let l = t.softmax_cross_entropy(y, &labels).unwrap();
                params.zero_grad();
                t.backward(l, params).unwrap();
                let grads: Vec<Vec<f32>> = [w1, b1, w2, b2]
                    .iter()
                    .map(|&p| params.get(p).grad.to_vec())
                    .collect();
                (
                    t.value(y).to_vec(),
                    t.grad(z1).expect("dZ1").to_vec(),
                    t.grad(z2).expect("dZ2").to_vec(),
                    t.grad(xv).unwrap().to_vec(),
                    grads,
                )
            };
            let fused = run(true, &mut params);
            let separate = run(false, &mut params);
            assert_eq!(fused, separate, "{act:?} second reader {second_reader}");
            assert!(fused.4[1].iter().any(|&v| v != 0.0), "db1 reached");
        }
    }
}

// ---------------------------------------------------------------------------------------
// convolution-network ops
// ---------------------------------------------------------------------------------------

use rewire::autograd::{Conv2dGeom, Pool2dGeom, PoolKind};

/// Input images `[C][H][W][B]` for the convolution checks.
const C_IN: usize = 2;
const SIDE: usize = 5;

/// im2col → `W` (`out × C·kh·kw`, sparse or dense) → bias → flatten → dense head; with
/// `direct`, [`Tape::conv2d`] in place of im2col and the product (for a sparse `W`, the
/// direct kernels).
fn conv_case(geom: Conv2dGeom, out: usize, sparse_nnz: Option<usize>, direct: bool, seed: u64) {
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let w = params.add(match sparse_nnz {
        Some(nnz) => sparse_param(out, geom.patch_len(), nnz, &mut rng),
        None => dense_param(out, geom.patch_len(), &mut rng),
    });
    let b = params.add(bias_param(out, &mut rng));
    let flat = out * geom.out_h() * geom.out_w();
    let head = params.add(dense_param(CLASSES, flat, &mut rng));
    let rows = C_IN * SIDE * SIDE;
    let x = input(rows, &mut rng);
    check(
        &move |t, p, x| {
            let z = if direct {
                t.conv2d(p, x, w, geom)?
            } else {
                let col = t.im2col(x, geom)?;
                t.linear(p, col, w)?
            };
            let z = t.bias_add(p, z, b)?;
            let f = t.reshape(z, flat, BATCH)?;
            t.linear(p, f, head)
        },
        params,
        x,
        rows,
    );
}

fn geom(k: usize, stride: usize, pad: usize) -> Conv2dGeom {
    Conv2dGeom {
        channels: C_IN,
        h: SIDE,
        w: SIDE,
        kh: k,
        kw: k,
        stride,
        pad,
    }
}

#[test]
fn conv_dense_gradients_padded() {
    conv_case(geom(3, 1, 1), 3, None, false, 40);
    conv_case(geom(3, 1, 1), 3, None, true, 40);
}

#[test]
fn conv_sparse_gradients_strided() {
    conv_case(geom(3, 2, 1), 3, Some(20), false, 41);
}

#[test]
fn conv_sparse_direct_gradients() {
    conv_case(geom(3, 1, 1), 3, Some(20), true, 43);
    conv_case(geom(3, 2, 1), 3, Some(20), true, 44);
    conv_case(geom(5, 1, 2), 2, Some(30), true, 45);
    let g = Conv2dGeom {
        kh: 2,
        kw: 3,
        ..geom(3, 1, 0)
    };
    conv_case(g, 4, Some(9), true, 46);
}

#[test]
fn conv_sparse_gradients_no_padding_rectangular() {
    let g = Conv2dGeom {
        kh: 2,
        kw: 3,
        ..geom(3, 1, 0)
    };
    conv_case(g, 4, Some(9), false, 42);
}

fn pool_case(kind: PoolKind, k: usize, stride: usize, seed: u64) {
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let pg = Pool2dGeom {
        channels: C_IN,
        h: SIDE,
        w: SIDE,
        k,
        stride,
    };
    let flat = C_IN * pg.out_h() * pg.out_w();
    let head = params.add(dense_param(CLASSES, flat, &mut rng));
    let rows = C_IN * SIDE * SIDE;
    // distinct values, so that no window has a tie a step of h could flip
    let mut x: Vec<f32> = (0..rows * BATCH).map(|i| i as f32 * 0.05 - 3.0).collect();
    for i in (1..x.len()).rev() {
        x.swap(i, rng.random_range(0..=i));
    }
    check(
        &move |t, p, x| {
            let y = t.pool2d(x, pg, kind)?;
            let f = t.reshape(y, flat, BATCH)?;
            t.linear(p, f, head)
        },
        params,
        x,
        rows,
    );
}

#[test]
fn max_pool_gradients() {
    pool_case(PoolKind::Max, 2, 2, 43);
}

#[test]
fn max_pool_overlapping_windows_gradients() {
    pool_case(PoolKind::Max, 3, 2, 44);
}

#[test]
fn avg_pool_gradients() {
    pool_case(PoolKind::Avg, 2, 1, 45);
}

fn batch_norm_case(eval: bool, seed: u64) {
    let mut rng = seed_rng(seed);
    let mut params = ParamStore::new();
    let gamma = params.add(bias_param(HID, &mut rng));
    let beta = params.add(bias_param(HID, &mut rng));
    let w = params.add(dense_param(HID, IN, &mut rng));
    let head = params.add(dense_param(CLASSES, HID, &mut rng));
    let x = input(IN, &mut rng);
    let mean = rand_vec(HID, &mut rng, 0.5);
    let var: Vec<f32> = rand_vec(HID, &mut rng, 0.5)
        .iter()
        .map(|v| v + 1.0)
        .collect();
    // normalising by the statistics of five samples curves the loss sharply: small step
    check_step(
        &move |t, p, x| {
            let z = t.linear(p, x, w)?;
            let running = eval.then_some((&mean[..], &var[..]));
            let y = t.batch_norm(p, z, gamma, beta, 1e-5, running)?;
            t.linear(p, y, head)
        },
        params,
        x,
        IN,
        3e-3,
    );
}

#[test]
fn batch_norm_training_gradients() {
    batch_norm_case(false, 46);
}

#[test]
fn batch_norm_eval_gradients() {
    batch_norm_case(true, 47);
}

#[test]
fn batch_norm_normalises_and_reports_stats() {
    let mut params = ParamStore::new();
    let gamma = params.add(
        Param::new(
            "g",
            ParamShape::Vector { len: 2 },
            aligned_from_slice(&[1.0, 1.0]),
            false,
        )
        .unwrap(),
    );
    let beta = params.add(
        Param::new(
            "b",
            ParamShape::Vector { len: 2 },
            aligned_from_slice(&[0.0, 0.0]),
            false,
        )
        .unwrap(),
    );
    let mut tape = Tape::new(Par::Seq);
    let x = tape
        .input(&[1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0], 2, 4, false)
        .unwrap();
    let y = tape
        .batch_norm(&params, x, gamma, beta, 1e-5, None)
        .unwrap();
    let (mean, var) = tape.batch_norm_stats(y).unwrap();
    assert_eq!(mean, &[2.5, 11.0]);
    assert_eq!(var, &[1.25, 3.0]);
    let row0 = &tape.value(y)[..4];
    let m: f32 = row0.iter().sum::<f32>() / 4.0;
    let v: f32 = row0.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 4.0;
    assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-4, "mean {m} var {v}");
}

#[test]
fn im2col_places_patches_and_padding() {
    // one 1×3×3 image, batch 2 (sample 1 = 10 × sample 0), 2×2 kernel, pad 1, stride 2
    let img: Vec<f32> = (1..=9).flat_map(|v| [v as f32, 10.0 * v as f32]).collect();
    let mut tape = Tape::new(Par::Seq);
    let x = tape.input(&img, 9, 2, false).unwrap();
    let g = Conv2dGeom {
        channels: 1,
        h: 3,
        w: 3,
        kh: 2,
        kw: 2,
        stride: 2,
        pad: 1,
    };
    let col = tape.im2col(x, g).unwrap();
    assert_eq!(tape.dims(col), (4, 2 * 2 * 2));
    // kernel offset (0, 0) over output (0,0), (0,1), (1,0), (1,1): padded, padded, padded, 5
    let row0: Vec<f32> = tape.value(col)[..8].to_vec();
    assert_eq!(row0, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 50.0]);
    // kernel offset (1, 1): pixels 1, 3, 7, 9
    let row3: Vec<f32> = tape.value(col)[24..32].to_vec();
    assert_eq!(row3, vec![1.0, 10.0, 3.0, 30.0, 7.0, 70.0, 9.0, 90.0]);
}

#[test]
fn conv_ops_reject_bad_geometry() {
    let mut tape = Tape::new(Par::Seq);
    let x = tape.input(&[0.0; 18], 9, 2, false).unwrap();
    let too_big = Conv2dGeom {
        channels: 1,
        h: 3,
        w: 3,
        kh: 5,
        kw: 5,
        stride: 1,
        pad: 0,
    };
    assert!(tape.im2col(x, too_big).is_err());
    let wrong_channels = Conv2dGeom {
        channels: 4,
        kh: 1,
        kw: 1,
        ..too_big
    };
    assert!(tape.im2col(x, wrong_channels).is_err());
    // the direct sparse convolution checks the geometry and the weight's columns
    let mut params = ParamStore::new();
    let mut rng = seed_rng(47);
    let w = params.add(sparse_param(2, 9, 5, &mut rng));
    assert!(tape.conv2d(&params, x, w, too_big).is_err());
    assert!(tape.conv2d(&params, x, w, wrong_channels).is_err());
    let one_channel_1x1 = Conv2dGeom {
        channels: 1,
        kh: 1,
        kw: 1,
        ..too_big
    };
    assert!(tape.conv2d(&params, x, w, one_channel_1x1).is_err());
    let fits = Conv2dGeom {
        kh: 3,
        kw: 3,
        ..one_channel_1x1
    };
    let z = tape.conv2d(&params, x, w, fits).unwrap();
    assert_eq!(tape.dims(z), (2, 2));
    let pool = Pool2dGeom {
        channels: 1,
        h: 3,
        w: 3,
        k: 0,
        stride: 1,
    };
    assert!(tape.pool2d(x, pool, PoolKind::Max).is_err());
    assert!(tape.reshape(x, 4, 4).is_err());
}

/// Ops with an id not in the store, and a backward pass into a store other than the one
/// the forward pass read (or after the pattern was edited), are errors, not panics or
/// gradients of the wrong weights.
#[test]
fn parameters_are_checked_between_forward_and_backward() {
    use rewire::nn::{Mlp, MlpConfig, Model};
    let mut tape = Tape::new(Par::Seq);
    let x = tape.input(&[1.0; 8 * 2], 8, 2, false).unwrap();
    assert!(tape.linear(&ParamStore::new(), x, ParamId(3)).is_err());
    assert!(tape.bias_add(&ParamStore::new(), x, ParamId(0)).is_err());

    let model = |hidden: usize| {
        Mlp::new(MlpConfig {
            sparsity: 0.5,
            ..MlpConfig::new(8, &[hidden], 3)
        })
        .unwrap()
    };
    let (a, mut b) = (model(6), model(5));
    let forward = |tape: &mut Tape, m: &Mlp| {
        tape.reset();
        let x = tape.input(&[0.5; 8 * 2], 8, 2, false).unwrap();
        let logits = m
            .forward(tape, x, true, &mut rewire::sparse::seed_rng(0))
            .unwrap();
        tape.softmax_cross_entropy(logits, &[0, 2]).unwrap()
    };
    let loss = forward(&mut tape, &a);
    let err = tape.backward(loss, &mut b.params).unwrap_err();
    assert!(err.to_string().contains("forward pass read"), "{err}");
    assert!(tape.backward(loss, &mut ParamStore::new()).is_err());

    // the same store, its first pattern replaced after the forward pass
    let mut a = a;
    let loss = forward(&mut tape, &a);
    let w = a.weight_layers()[0].weight;
    let same = a.params.get(w).pattern().unwrap().as_ref().clone();
    a.params
        .get_mut(w)
        .set_pattern(std::sync::Arc::new(same), 0.0)
        .unwrap();
    assert!(tape.backward(loss, &mut a.params).is_err());
    // recorded again, it goes through
    let loss = forward(&mut tape, &a);
    tape.backward(loss, &mut a.params).unwrap();
}
