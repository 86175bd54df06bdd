//! Shared body of the CNN examples: train one CNN with a rewiring method on MNIST or
//! Fashion-MNIST (from `data/`, see `scripts/fetch-data.sh`), printing each epoch.

use rewire::cpu::Par;
use rewire::data::{self, DatasetName};
use rewire::dst::{MethodKind, RewireConfig};
use rewire::nn::{Cnn, CnnConfig, Model};
use rewire::optim::OptimizerConfig;
use rewire::train::{train, Schedule, TrainConfig};

/// Arguments: `[method] [sparsity] [epochs]` (defaults: rigl, 0.9, 3).
pub fn run(model: &str, dataset: DatasetName, lr: f32) -> rewire::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let method = args.first().map_or("rigl", String::as_str);
    let sparsity: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.9);
    let epochs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let splits = match data::load(dataset, std::path::Path::new("data")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}\nfetch the datasets first: scripts/fetch-data.sh");
            return Ok(());
        }
    };
    let kind = MethodKind::parse(method)?;
    let mut config = CnnConfig::named(model, [1, 28, 28], splits.train.classes)?;
    config.sparsity = if kind.is_dense_to_sparse() {
        0.0
    } else {
        sparsity
    };
    config.sparse_storage = kind.is_dense_to_sparse();
    let mut net = Cnn::new(config)?;
    let rewire = RewireConfig {
        target_sparsity: sparsity,
        ..RewireConfig::defaults(kind)
    };
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
        rewire: (kind != MethodKind::Static).then_some(rewire),
    };
    println!(
        "{model} on {dataset:?}, {method} at sparsity {sparsity}: {} of {} weights live",
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
