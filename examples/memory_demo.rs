//! One training step of a 784-20000-20000-20000-10 MLP at 99.5% sparsity, batch 128,
//! and the process's peak resident memory. The dense model's weights alone would take
//! 3.3 GB (and 10 GB with gradients and momentum); a sparse layer here never allocates
//! anything of size out × in.
//!
//! `cargo run --release --example memory_demo [-- SPARSITY BATCH]`

use std::time::Instant;

use rand::RngExt;
use rewire::autograd::Tape;
use rewire::cpu::Par;
use rewire::nn::distribution::Distribution;
use rewire::nn::{Mlp, MlpConfig, Model};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::seed_rng;

/// Peak resident set size (VmHWM) in bytes, where /proc tells it.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gb(bytes: f64) -> String {
    format!("{:.3} GB", bytes / 1e9)
}

fn main() -> rewire::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sparsity: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.995);
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let t = Instant::now();
    let model = Mlp::new(MlpConfig {
        sparsity,
        distribution: Distribution::Uniform { dense_first: false },
        ..MlpConfig::new(784, &[20_000, 20_000, 20_000], 10)
    })?;
    let mut model = model;
    println!(
        "model 784-20000-20000-20000-10 at sparsity {sparsity}: {} live weights of {} ({:.2}%), built in {:.1?}",
        model.live_weights(),
        model.dense_weights(),
        100.0 * model.live_weights() as f64 / model.dense_weights() as f64,
        t.elapsed()
    );
    let dense_bytes = model.dense_weights() as f64 * 4.0;
    println!(
        "dense equivalent: weights {}, with gradients and momentum {}",
        gb(dense_bytes),
        gb(3.0 * dense_bytes)
    );
    let mut rng = seed_rng(1);
    let x: Vec<f32> = (0..784 * batch)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels: Vec<u32> = (0..batch as u32).map(|j| j % 10).collect();
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        &model.params,
    )?;
    let mut tape = Tape::new(Par::current());
    let before = peak_rss();
    let t = Instant::now();
    let xv = tape.input(&x, 784, batch, false)?;
    let logits = model.forward(&mut tape, xv, true, &mut rng)?;
    let loss = tape.softmax_cross_entropy(logits, &labels)?;
    model.params.zero_grad();
    tape.backward(loss, &mut model.params)?;
    opt.step(&mut model.params, 0.01)?;
    println!(
        "one training step (batch {batch}): loss {:.4}, {:.1?}",
        tape.value(loss)[0],
        t.elapsed()
    );
    match (before, peak_rss()) {
        (Some(b), Some(a)) => println!(
            "peak RSS: {} before the step, {} after it (limit in the issue: 1.5 GB)",
            gb(b as f64),
            gb(a as f64)
        ),
        _ => println!("peak RSS: not available on this platform (/proc/self/status)"),
    }
    Ok(())
}
