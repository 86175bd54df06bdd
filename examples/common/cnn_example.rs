//! Shared body of the CNN examples: train one CNN with a rewiring method on MNIST or
//! Fashion-MNIST (from `data/`, see `scripts/fetch-data.sh`), printing each epoch.

use rewire::cpu::Par;
use rewire::data::{self, DatasetName};
use rewire::dst::{MethodKind, RewireConfig};
use rewire::nn::{Cnn, CnnConfig, Model};
use rewire::optim::OptimizerConfig;
use rewire::train::{train, Schedule, TrainConfig};

/// Runs [`run`] and turns its error into a message and a failing exit status.
pub fn main(model: &str, dataset: DatasetName, lr: f32) -> std::process::ExitCode {
    match run(model, dataset, lr) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Arguments: `[method] [sparsity] [epochs]` (defaults: rigl, 0.9, 3); `dense` trains the
/// dense baseline.
pub fn run(model: &str, dataset: DatasetName, lr: f32) -> rewire::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "usage: [METHOD] [SPARSITY] [EPOCHS] (METHOD: dense, static, set, \
                         rigl, dsr, gmp, prune-finetune; defaults rigl 0.9 3)";
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    if args.len() > 3 {
        return Err(rewire::Error::arg("arguments", USAGE));
    }
    let method = args
        .first()
        .map_or("rigl", String::as_str)
        .to_ascii_lowercase();
    let sparsity: f64 = match args.get(1) {
        None => 0.9,
        Some(s) => s.parse().map_err(|_| {
            rewire::Error::arg(
                "sparsity",
                format!("expected a number such as 0.9, got {s:?}"),
            )
        })?,
    };
    let epochs: usize = match args.get(2) {
        None => 3,
        Some(s) => s.parse().ok().filter(|&e: &usize| e >= 1).ok_or_else(|| {
            rewire::Error::arg("epochs", format!("expected a whole number ≥ 1, got {s:?}"))
        })?,
    };
    let splits = data::load(dataset, std::path::Path::new("data")).inspect_err(|_| {
        eprintln!("(fetch the datasets first: scripts/fetch-data.sh)");
    })?;
    // `None`: the dense baseline
    let kind = match method.as_str() {
        "dense" => None,
        m => Some(MethodKind::parse(m)?),
    };
    let to_prune = kind.is_some_and(MethodKind::is_dense_to_sparse);
    let mut config = CnnConfig::named(model, [1, 28, 28], splits.train.classes)?;
    config.sparsity = if kind.is_none() || to_prune {
        0.0
    } else {
        sparsity
    };
    config.sparse_storage = to_prune;
    let mut net = Cnn::new(config)?;
    let rewire = kind
        .filter(|&k| k != MethodKind::Static)
        .map(|k| RewireConfig {
            target_sparsity: sparsity,
            ..RewireConfig::defaults(k)
        });
    let cfg = TrainConfig {
        epochs,
        batch_size: 128,
        lr,
        schedule: Schedule::Cosine { warmup_epochs: 0 },
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
        },
        seed: 0,
        max_steps: None,
        progress: true,
        par: Par::current(),
        rewire,
    };
    println!(
        "{model} on {}, {method}{}: {} of {} weights live",
        dataset.dir_name(),
        if kind.is_some() {
            format!(" at sparsity {sparsity}")
        } else {
            String::new()
        },
        net.live_weights(),
        net.dense_weights()
    );
    train(&mut net, &splits.train, &splits.test, &cfg, |r| {
        println!(
            "epoch {}: loss {:.4}, test {:.2}%, {:.1} s, {} live",
            r.epoch,
            r.loss,
            100.0 * r.test_acc,
            r.epoch_s,
            r.live_weights
        );
        Ok(())
    })?;
    Ok(())
}
