//! The `rewire` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rewire::bench::{self, BenchConfig, Kernel, PatternKind};

#[derive(Parser)]
#[command(
    name = "rewire",
    version,
    about = "Dynamic sparse training engine: real sparse kernels, measured against dense"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time a sparse kernel against dense `gemm` on the same shape, in the same run.
    ///
    /// With no shape flags it runs the default sweep (M = K in {1024, 4096}, N in {1, 128},
    /// sparsity in {0.5, 0.8, 0.9, 0.95, 0.98, 0.99}). Flags that take lists (comma
    /// separated) run every combination.
    Bench(BenchArgs),
    /// Train an MLP on MNIST / Fashion-MNIST (or generated data), dense or static sparse.
    ///
    /// After each epoch one line: loss, train and test accuracy, epoch time, live weights
    /// and training FLOPs; `--log FILE.jsonl` writes the same as JSON lines.
    Train(Box<TrainArgs>),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// mnist, fashion-mnist, or synthetic (generated, learnable; needs no files)
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// where the datasets live (scripts/fetch-data.sh puts them there)
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
    /// model: mlp:W1,W2,... (hidden widths)
    #[arg(long, default_value = "mlp:1000,1000,1000")]
    model: String,
    /// fraction of weights not stored (ignored by --method dense)
    #[arg(long, default_value_t = 0.9)]
    sparsity: f64,
    /// dense, static (a fixed random sparse pattern), set, or rigl
    #[arg(long, default_value = "static")]
    method: String,
    /// steps between rewiring updates (ΔT; set and rigl)
    #[arg(long, default_value_t = 100)]
    delta_t: usize,
    /// fraction of each layer's live weights rewired per update (α for rigl, ζ for set)
    #[arg(long, default_value_t = 0.3)]
    drop_fraction: f64,
    /// last rewiring at this fraction of training (default: 0.75 for rigl, 1 for set)
    #[arg(long)]
    t_end: Option<f64>,
    /// how sparsity is spread over layers: uniform, uniform-dense-first, er, erk
    #[arg(long, default_value = "uniform")]
    distribution: String,
    /// passes over the training set
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// samples per step
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// base learning rate
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// constant, cosine[:warmup_epochs], step:every:gamma
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// sgd, adam, adamw
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Nesterov momentum (SGD)
    #[arg(long)]
    nesterov: bool,
    /// weight decay (L2 for sgd/adam, decoupled for adamw)
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// relu, leaky-relu[:slope], tanh, sigmoid
    #[arg(long, default_value = "relu")]
    activation: String,
    /// dropout after each hidden layer
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// seed of the pattern, the initial weights, shuffling and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// write one JSON line per epoch to this file
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// stop after this many steps in all
    #[arg(long)]
    max_steps: Option<usize>,
    /// train on the first N training samples only
    #[arg(long)]
    train_subset: Option<usize>,
    /// no progress bar
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelArg {
    Spmm,
    SpmmT,
    Sddmm,
    Bsr,
}

#[derive(Clone, Copy, ValueEnum)]
enum PatternArg {
    Uniform,
    Skewed,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// kernel to measure
    kernel: KernelArg,
    /// rows of the sparse matrix A (list allowed)
    #[arg(long, value_delimiter = ',')]
    m: Vec<usize>,
    /// columns of A (list allowed; defaults to M)
    #[arg(long, value_delimiter = ',')]
    k: Vec<usize>,
    /// dense dimension, the batch (list allowed)
    #[arg(long, value_delimiter = ',')]
    n: Vec<usize>,
    /// fraction of entries (of blocks, for bsr) not stored, in [0, 1] (list allowed)
    #[arg(long, value_delimiter = ',')]
    sparsity: Vec<f64>,
    /// block edge for bsr (square blocks)
    #[arg(long, default_value_t = 8)]
    block: usize,
    /// threads for both kernels (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// how live entries spread over rows
    #[arg(long, value_enum, default_value_t = PatternArg::Uniform)]
    pattern: PatternArg,
    /// seed of the random pattern and data
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// minimum milliseconds spent timing each kernel per configuration
    #[arg(long, default_value_t = 300)]
    min_time_ms: u64,
    /// print one JSON object per configuration instead of a table
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => run_bench(args),
        Command::Train(args) => run_train(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: BenchArgs) -> rewire::Result<()> {
    let base = BenchConfig {
        kernel: match args.kernel {
            KernelArg::Spmm => Kernel::Spmm,
            KernelArg::SpmmT => Kernel::SpmmT,
            KernelArg::Sddmm => Kernel::Sddmm,
            KernelArg::Bsr => Kernel::Bsr,
        },
        block: args.block,
        threads: args.threads.unwrap_or_else(rayon::current_num_threads),
        pattern: match args.pattern {
            PatternArg::Uniform => PatternKind::Uniform,
            PatternArg::Skewed => PatternKind::Skewed,
        },
        seed: args.seed,
        min_time: Duration::from_millis(args.min_time_ms),
        ..BenchConfig::default()
    };
    let configs = if args.m.is_empty()
        && args.k.is_empty()
        && args.n.is_empty()
        && args.sparsity.is_empty()
    {
        bench::default_sweep(&base)
    } else {
        let or = |v: &Vec<usize>, d: usize| if v.is_empty() { vec![d] } else { v.clone() };
        let ms = or(&args.m, base.m);
        let ns = or(&args.n, base.n);
        let sps = if args.sparsity.is_empty() {
            vec![base.sparsity]
        } else {
            args.sparsity.clone()
        };
        let mut out = Vec::new();
        for &m in &ms {
            for &k in &or(&args.k, m) {
                for &n in &ns {
                    for &sparsity in &sps {
                        out.push(BenchConfig {
                            m,
                            k,
                            n,
                            sparsity,
                            ..base.clone()
                        });
                    }
                }
            }
        }
        out
    };
    if !args.json {
        println!("{}", bench::table_header());
    }
    for cfg in &configs {
        let r = bench::run(cfg)?;
        if args.json {
            println!("{}", serde_json::to_string(&r).expect("results serialise"));
        } else {
            println!("{}", bench::table_row(&r));
        }
    }
    if !args.json {
        println!(
            "speedup = dense ms / sparse ms; GF_ratio = sparse GFLOP/s (2·nnz·N/t) ÷ dense GFLOP/s (2·M·K·N/t); {} thread(s)",
            base.threads
        );
    }
    Ok(())
}

fn parse_hidden(model: &str) -> rewire::Result<Vec<usize>> {
    let bad = || rewire::Error::arg("model", format!("expected mlp:W1,W2,... got {model:?}"));
    let widths = model.strip_prefix("mlp:").ok_or_else(bad)?;
    widths
        .split(',')
        .map(|w| w.trim().parse::<usize>().map_err(|_| bad()))
        .collect()
}

fn run_train(args: TrainArgs) -> rewire::Result<()> {
    use rewire::data::{self, Dataset, DatasetName};
    use rewire::nn::{distribution::Distribution, Activation, Mlp, MlpConfig};
    use rewire::optim::OptimizerConfig;
    use rewire::train::{self, JsonlLog, Schedule, TrainConfig};

    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| rewire::Error::arg("threads", e))?;
    let (sparsity, rewire_cfg) = if args.method == "dense" {
        (0.0, None)
    } else {
        let kind = rewire::dst::MethodKind::parse(&args.method)?;
        let mut rc = rewire::dst::RewireConfig::defaults(kind);
        rc.delta_t = args.delta_t;
        rc.drop_fraction = args.drop_fraction;
        rc.seed = args.seed;
        if let Some(t) = args.t_end {
            rc.end_fraction = t;
        }
        (
            args.sparsity,
            (kind != rewire::dst::MethodKind::Static).then_some(rc),
        )
    };
    let (train_set, test_set) = if args.dataset == "synthetic" {
        Dataset::synthetic(12_000, 784, 10, args.seed).split(10_000)
    } else {
        let name = DatasetName::parse(&args.dataset)?;
        let splits = data::load(name, &args.data_dir)?;
        (splits.train, splits.test)
    };
    let train_set = match args.train_subset {
        Some(n) => train_set.subset(n),
        None => train_set,
    };
    let config = MlpConfig {
        activation: Activation::parse(&args.activation)?,
        dropout: args.dropout,
        sparsity,
        distribution: Distribution::parse(&args.distribution)?,
        seed: args.seed,
        ..MlpConfig::new(
            train_set.dim,
            &parse_hidden(&args.model)?,
            train_set.classes,
        )
    };
    let optimizer = match args.optimizer.as_str() {
        "sgd" => OptimizerConfig::Sgd {
            momentum: args.momentum,
            nesterov: args.nesterov,
            weight_decay: args.weight_decay,
        },
        "adam" | "adamw" => OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: args.weight_decay,
            decoupled: args.optimizer == "adamw",
        },
        other => {
            return Err(rewire::Error::arg(
                "optimizer",
                format!("unknown optimizer {other:?} (sgd, adam, adamw)"),
            ))
        }
    };
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        schedule: Schedule::parse(&args.schedule)?,
        optimizer,
        seed: args.seed,
        max_steps: args.max_steps,
        progress: !args.no_progress,
        par: if threads > 1 {
            rewire::Par::Rayon(threads)
        } else {
            rewire::Par::Seq
        },
        rewire: rewire_cfg,
    };
    let mut log = args.log.as_deref().map(JsonlLog::create).transpose()?;
    pool.install(|| {
        let mut model = Mlp::new(config)?;
        println!(
            "{} {}: {} · method {} · sparsity {:.4} ({}) · live weights {} of {} · {} train / {} test samples · {} thread(s)",
            args.dataset,
            args.model,
            model.layers.iter().map(|l| format!("{}x{}", l.fan_out, l.fan_in)).collect::<Vec<_>>().join(" "),
            args.method,
            1.0 - model.live_weights() as f64 / model.dense_weights() as f64,
            args.distribution,
            model.live_weights(),
            model.dense_weights(),
            train_set.n,
            test_set.n,
            threads
        );
        let epochs = cfg.epochs;
        train::train(&mut model, &train_set, &test_set, &cfg, |r| {
            println!(
                "epoch {:>3}/{epochs}  loss {:.4}  train {:6.2}%  test {:6.2}%  time {:7.2}s  live {} ({:.2}% of dense)  train FLOPs {:.3e}  lr {:.4}  rewired {}",
                r.epoch,
                r.loss,
                100.0 * r.train_acc,
                100.0 * r.test_acc,
                r.epoch_s,
                r.live_weights,
                100.0 * r.live_weights as f64 / r.dense_weights as f64,
                r.train_flops,
                r.lr,
                r.rewired
            );
            if let Some(log) = log.as_mut() {
                log.write(&serde_json::json!({
                    "dataset": args.dataset,
                    "model": args.model,
                    "method": args.method,
                    "sparsity": sparsity,
                    "distribution": args.distribution,
                    "seed": args.seed,
                    "threads": threads,
                    "report": r,
                }))?;
            }
            Ok(())
        })?;
        Ok(())
    })
}
