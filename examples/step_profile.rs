//! Where the time of one training step goes: forward (split into input, linear layers,
//! fused bias + activation, softmax), backward and optimizer, and the sparse kernels
//! alone in training order on the model's own patterns. For tuning the engine.
//!
//! `cargo run --release --example step_profile [-- SPARSITY]` (`SEQ=1`: one thread)

use rand::RngExt;
use rewire::autograd::Tape;
use rewire::cpu::Par;
use rewire::nn::{Mlp, MlpConfig, Model};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::seed_rng;
use std::time::Instant;

/// Runs on a rayon pool thread, as [`rewire::train::train`] does.
fn main() -> rewire::Result<()> {
    rayon::scope(|_| profile())
}

fn profile() -> rewire::Result<()> {
    let sparsity: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.95);
    let mut model = Mlp::new(MlpConfig {
        sparsity,
        ..MlpConfig::new(784, &[1000, 1000, 1000], 10)
    })?;
    let b = 128;
    let mut rng = seed_rng(1);
    let x: Vec<f32> = (0..784 * b).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<u32> = (0..b as u32).map(|j| j % 10).collect();
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        &model.params,
    )?;
    let mut tape = Tape::new(if std::env::var_os("SEQ").is_some() {
        Par::Seq
    } else {
        Par::current()
    });
    let (mut tf, mut tb, mut to, mut tz) = (0.0, 0.0, 0.0, 0.0);
    let steps = 300;
    for s in 0..steps + 20 {
        let t0 = Instant::now();
        tape.reset();
        let xv = tape.input(&x, 784, b, false)?;
        let logits = model.forward(&mut tape, xv, true, &mut rng)?;
        let loss = tape.softmax_cross_entropy(logits, &labels)?;
        let t1 = Instant::now();
        model.params.zero_grad();
        let t2 = Instant::now();
        tape.backward(loss, &mut model.params)?;
        let t3 = Instant::now();
        opt.step(&mut model.params, 0.01)?;
        let t4 = Instant::now();
        if s >= 20 {
            tf += (t1 - t0).as_secs_f64();
            tz += (t2 - t1).as_secs_f64();
            tb += (t3 - t2).as_secs_f64();
            to += (t4 - t3).as_secs_f64();
        }
    }
    let ms = |t: f64| t * 1e3 / steps as f64;
    {
        let (mut ti, mut tl, mut tba, mut tsm) = (0.0, 0.0, 0.0, 0.0);
        for s in 0..steps + 20 {
            let t0 = Instant::now();
            tape.reset();
            let mut h = tape.input(&x, 784, b, false)?;
            let t1 = Instant::now();
            let (mut l_t, mut b_t) = (0.0, 0.0);
            for (l, layer) in model.layers.iter().enumerate() {
                let a = Instant::now();
                h = tape.linear(&model.params, h, layer.weight)?;
                let bb = Instant::now();
                let act = if l < 3 {
                    rewire::autograd::Act::Relu
                } else {
                    rewire::autograd::Act::Identity
                };
                h = tape.bias_act(&model.params, h, layer.bias, act)?;
                let c = Instant::now();
                l_t += (bb - a).as_secs_f64();
                b_t += (c - bb).as_secs_f64();
            }
            let t2 = Instant::now();
            let _loss = tape.softmax_cross_entropy(h, &labels)?;
            let t3 = Instant::now();
            if s >= 20 {
                ti += (t1 - t0).as_secs_f64();
                tl += l_t;
                tba += b_t;
                tsm += (t3 - t2).as_secs_f64();
            }
        }
        println!(
            "forward parts: reset+input {:.3} ms, linear {:.3}, bias_act {:.3}, softmax {:.3}",
            ms(ti),
            ms(tl),
            ms(tba),
            ms(tsm)
        );
    }
    // kernels alone, in training order, on the model's own patterns
    {
        use rewire::cpu::{sddmm, spmm, spmm_t, Accum};
        let par = Par::current();
        let ws: Vec<_> = model
            .layers
            .iter()
            .map(|l| model.params.get(l.weight).clone())
            .collect();
        let mut acts: Vec<Vec<f32>> = vec![x.clone()];
        for w in &ws {
            acts.push(vec![0.5f32; w.shape.dims().0 * b]);
        }
        let mut grads: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0f32; w.value.len()]).collect();
        let mut dxs: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| vec![0.0f32; w.shape.dims().1 * b])
            .collect();
        let (mut f, mut g) = (0.0, 0.0);
        for s in 0..steps + 20 {
            let t0 = Instant::now();
            for (l, w) in ws.iter().enumerate() {
                let p = w.pattern().unwrap();
                let (inp, out) = acts.split_at_mut(l + 1);
                spmm(
                    &mut out[0],
                    p,
                    &w.value,
                    &inp[l],
                    b,
                    1.0,
                    Accum::Replace,
                    par,
                )
                .unwrap();
            }
            let t1 = Instant::now();
            for (l, w) in ws.iter().enumerate().rev() {
                let p = w.pattern().unwrap();
                sddmm(
                    &mut grads[l],
                    p,
                    &acts[l + 1],
                    &acts[l],
                    b,
                    1.0,
                    Accum::Add(1.0),
                    par,
                )
                .unwrap();
                if l > 0 {
                    spmm_t(
                        &mut dxs[l],
                        p,
                        &w.value,
                        &acts[l + 1],
                        b,
                        1.0,
                        Accum::Replace,
                        par,
                    )
                    .unwrap();
                }
            }
            let t2 = Instant::now();
            if s >= 20 {
                f += (t1 - t0).as_secs_f64();
                g += (t2 - t1).as_secs_f64();
            }
        }
        println!(
            "kernels alone: forward {:.3} ms, backward {:.3} ms",
            ms(f),
            ms(g)
        );
    }
    println!(
        "per step: forward {:.3} ms, zero_grad {:.3}, backward {:.3}, optimizer {:.3}, total {:.3}",
        ms(tf),
        ms(tz),
        ms(tb),
        ms(to),
        ms(tf + tz + tb + to)
    );
    Ok(())
}
