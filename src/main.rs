//! The `rewire` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rewire::bench::{self, BenchConfig, Kernel, PatternKind};

/// `println!` that never panics: when stdout is closed (a pipe into `head`, say) the
/// line is dropped and the run goes on, so its log and model file are still written.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

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
    /// sparsity in {0.5, 0.8, 0.9, 0.95, 0.98, 0.99}; for conv, 64 → 64 channels, batch
    /// 64, at those sparsities). Flags that take lists (comma separated) run every
    /// combination; every configuration is checked before the first is timed.
    Bench(BenchArgs),
    /// Train a model (an MLP, LeNet-5 or vgg-small) on MNIST / Fashion-MNIST (or generated
    /// data), dense or sparse under a method (static, SET, RigL, DSR, GMP,
    /// prune-then-finetune).
    ///
    /// After each epoch one line: loss, train and test accuracy, epoch time, live weights
    /// and training FLOPs; `--log FILE.jsonl` writes the same as JSON lines.
    Train(Box<TrainArgs>),
    /// Train dense and each sparse method at each sparsity on the same data and model;
    /// print a table (test accuracy, Δ vs dense, epoch time, speedup, live weights,
    /// training FLOPs) and write CSV, JSON and SVG plots of accuracy and epoch time
    /// against sparsity.
    Compare(Box<CompareArgs>),
    /// Evaluate a model file written by `train --save` (or `compare --save-models`) on
    /// the test split of its dataset: loss, accuracy, live weights per layer.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct EvalArgs {
    /// the model file (safetensors)
    file: std::path::PathBuf,
    /// mnist, fashion-mnist or synthetic (default: the dataset it was trained on)
    #[arg(long)]
    dataset: Option<String>,
    /// where the datasets live
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
    /// samples per forward pass
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    batch_size: usize,
    /// threads (default: all cores)
    #[arg(long, value_parser = at_least_one())]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// dense, static (a fixed random sparse pattern), set, rigl, dsr, gmp, prune-finetune
    #[arg(long, default_value = "static")]
    method: String,
    /// fraction of weights not stored [default: 0.9] (ignored by --method dense; with
    /// --init the file's pattern decides it)
    #[arg(long, value_parser = trimmed_f64, allow_negative_numbers = true)]
    sparsity: Option<f64>,
    /// start from the weights and storage (dense, or sparse with its pattern) of this
    /// model file instead of a random initialisation; optimizer state starts at zero
    #[arg(long)]
    init: Option<std::path::PathBuf>,
    /// write one JSON line per epoch to this file
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// write the trained model to this file (safetensors: sparse weights as pattern and
    /// live values); `rewire eval FILE` evaluates it
    #[arg(long)]
    save: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    run: RunArgs,
    /// sparse methods to run beside dense (comma separated: static, set, rigl, dsr, gmp,
    /// prune-finetune)
    #[arg(long, value_delimiter = ',', default_value = "static,set,rigl")]
    methods: Vec<String>,
    /// sparsities to run each method at (comma separated)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.9",
        value_parser = trimmed_f64,
        allow_negative_numbers = true
    )]
    sparsities: Vec<f64>,
    /// folder for compare.csv, compare.json, the plots and one JSON-lines log per run
    #[arg(long, default_value = "out/compare")]
    out: std::path::PathBuf,
    /// also write each trained model to the folder, as METHOD-SPARSITY.safetensors
    #[arg(long)]
    save_models: bool,
}

/// Settings shared by `train` and `compare`.
#[derive(clap::Args)]
struct RunArgs {
    /// mnist, fashion-mnist, or synthetic (generated, learnable; needs no files)
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// where the datasets live (scripts/fetch-data.sh puts them there)
    #[arg(long, default_value = "data")]
    data_dir: std::path::PathBuf,
    /// model: mlp:W1,W2,... (hidden widths), lenet5 (LeNet-5, Caffe variant) or vgg-small
    /// (a small VGG-style CNN with batch norm)
    #[arg(long, default_value = "mlp:1000,1000,1000")]
    model: String,
    /// where to train: cpu, or cuda / cuda:N (MLPs and CNNs)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// steps between rewiring updates (ΔT; set, rigl, dsr and gmp)
    #[arg(long, default_value_t = 100)]
    delta_t: usize,
    /// fraction of each layer's live weights rewired per update (α for rigl, ζ for set)
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    drop_fraction: f64,
    /// last rewiring at this fraction of training (default 0.75; for gmp, where the target
    /// sparsity is reached; for prune-finetune, its one pruning step, default 0.5)
    #[arg(long, allow_negative_numbers = true)]
    t_end: Option<f64>,
    /// how sparsity is spread over layers: uniform, uniform-dense-first, er, erk
    #[arg(long, default_value = "uniform")]
    distribution: String,
    /// passes over the training set
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    epochs: usize,
    /// samples per step
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// base learning rate
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    lr: f32,
    /// constant, cosine[:warmup_epochs], step:every:gamma
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// sgd, adam, adamw
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// SGD momentum; Adam's β1
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    /// Nesterov momentum (SGD)
    #[arg(long)]
    nesterov: bool,
    /// weight decay (L2 for sgd/adam, decoupled for adamw)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    weight_decay: f32,
    /// relu, leaky-relu[:slope], tanh, sigmoid
    #[arg(long, default_value = "relu")]
    activation: String,
    /// dropout after each hidden layer
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    dropout: f32,
    /// seed of the pattern, the initial weights, shuffling and dropout
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// threads (default: all cores)
    #[arg(long, value_parser = at_least_one())]
    threads: Option<usize>,
    /// stop after this many steps in all
    #[arg(long, value_parser = at_least_one())]
    max_steps: Option<usize>,
    /// train on the first N training samples only
    #[arg(long, value_parser = at_least_one())]
    train_subset: Option<usize>,
    /// hold out the last N training samples and report accuracy on them instead of on the
    /// test set: for choosing settings without looking at the test set (--train-subset
    /// then takes from the samples left)
    #[arg(long, value_parser = at_least_one())]
    holdout: Option<usize>,
    /// no progress bar
    #[arg(long)]
    no_progress: bool,
}

/// A count that must be at least 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A number, spaces around it allowed (`--sparsities "0.9, 0.98"`).
fn trimmed_f64(s: &str) -> Result<f64, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{:?} is not a number ({e})", s.trim()))
}

/// A count, spaces around it allowed (`--m "1024, 2048"`).
fn trimmed_usize(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{:?} is not a whole number ({e})", s.trim()))
}

/// Names as the parsers read them: spaces trimmed, lower case (`--method RigL`).
fn tidy(s: &mut String) {
    *s = s.trim().to_ascii_lowercase();
}

impl RunArgs {
    /// Every name-valued setting in the form the parsers read.
    fn tidy(&mut self) {
        for s in [
            &mut self.dataset,
            &mut self.model,
            &mut self.device,
            &mut self.distribution,
            &mut self.schedule,
            &mut self.optimizer,
            &mut self.activation,
        ] {
            tidy(s);
        }
    }
}

/// `dense`, or the canonical name of a sparse method (`ptf` is `prune-finetune`).
fn method_name(m: &str) -> rewire::Result<&'static str> {
    let m = m.trim();
    if m.eq_ignore_ascii_case("dense") {
        return Ok("dense");
    }
    rewire::dst::MethodKind::parse(m)
        .map(|k| k.name())
        .map_err(|_| {
            rewire::Error::arg(
                "method",
                format!(
                    "unknown method {m:?} (dense, static, set, rigl, dsr, gmp, prune-finetune)"
                ),
            )
        })
}

#[derive(Clone, Copy, ValueEnum)]
enum KernelArg {
    Spmm,
    SpmmT,
    Sddmm,
    Bsr,
    /// a convolution layer's forward + backward (--m out channels, --k in channels,
    /// --n batch, --image, --ksize)
    Conv,
}

#[derive(Clone, Copy, ValueEnum)]
enum PatternArg {
    Uniform,
    Skewed,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// kernel to measure
    #[arg(ignore_case = true)]
    kernel: KernelArg,
    /// rows of the sparse matrix A, output channels for conv (list allowed; default 2048,
    /// 64 for conv)
    #[arg(long, value_delimiter = ',', value_parser = trimmed_usize)]
    m: Vec<usize>,
    /// columns of A, input channels for conv (list allowed; defaults to M)
    #[arg(long, value_delimiter = ',', value_parser = trimmed_usize)]
    k: Vec<usize>,
    /// dense dimension, the batch (list allowed; default 128, 64 for conv)
    #[arg(long, value_delimiter = ',', value_parser = trimmed_usize)]
    n: Vec<usize>,
    /// fraction of entries (of blocks, for bsr) not stored, in [0, 1] (list allowed)
    #[arg(long, value_delimiter = ',', value_parser = trimmed_f64)]
    sparsity: Vec<f64>,
    /// block edge for bsr (square blocks)
    #[arg(long, default_value_t = 8)]
    block: usize,
    /// threads for both kernels (default: all cores)
    #[arg(long, value_parser = at_least_one())]
    threads: Option<usize>,
    /// how live entries spread over rows
    #[arg(long, value_enum, ignore_case = true, default_value_t = PatternArg::Uniform)]
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
    /// where to run both kernels: cpu, or cuda (the sparse kernel against cuBLAS SGEMM)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// conv: image height and width
    #[arg(long, default_value_t = 28)]
    image: usize,
    /// conv: kernel side, odd (same padding)
    #[arg(long, default_value_t = 3)]
    ksize: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // eval's settings come from the model file, not from flags
    let flags_named = !matches!(cli.command, Command::Eval(_));
    let result = match cli.command {
        Command::Bench(args) => run_bench(args),
        Command::Train(args) => run_train(*args),
        Command::Compare(args) => run_compare(*args),
        Command::Eval(args) => run_eval(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let rewire::Error::InvalidArgument { name, .. } = &e {
                if let Some(flag) = flag_of(name).filter(|_| flags_named) {
                    eprintln!("(set by {flag})");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// The command-line flag that sets the library's parameter `name`, where one does.
fn flag_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "sparsity" | "target_sparsity" => "--sparsity / --sparsities",
        "method" => "--method",
        "m" => "--m",
        "k" => "--k",
        "n" => "--n",
        "block" => "--block",
        "conv" => "--image / --ksize",
        "methods" => "--methods",
        "init" => "--init",
        "drop_fraction" => "--drop-fraction",
        "end_fraction" => "--t-end",
        "delta_t" => "--delta-t",
        "batch_size" => "--batch-size",
        "lr" => "--lr",
        "weight_decay" => "--weight-decay",
        "momentum" | "beta1" => "--momentum",
        "holdout" => "--holdout",
        "nesterov" => "--nesterov",
        "dropout" => "--dropout",
        "schedule" => "--schedule",
        "activation" => "--activation",
        "distribution" => "--distribution",
        "optimizer" => "--optimizer",
        "dataset" => "--dataset",
        "model" => "--model",
        "device" => "--device",
        _ => return None,
    })
}

fn run_bench(mut args: BenchArgs) -> rewire::Result<()> {
    tidy(&mut args.device);
    let base = BenchConfig {
        kernel: match args.kernel {
            KernelArg::Spmm => Kernel::Spmm,
            KernelArg::SpmmT => Kernel::SpmmT,
            KernelArg::Sddmm => Kernel::Sddmm,
            KernelArg::Bsr => Kernel::Bsr,
            KernelArg::Conv => Kernel::Conv,
        },
        image: args.image,
        ksize: args.ksize,
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
    // a convolution's own default shape: 64 → 64 channels, batch 64 (the GEMM shape's
    // 2048 channels and batch 128 would be a 7 GB im2col)
    let base = match base.kernel {
        Kernel::Conv => BenchConfig {
            m: 64,
            k: 64,
            n: 64,
            ..base
        },
        _ => base,
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
    // every configuration, before the first is timed
    for (i, cfg) in configs.iter().enumerate() {
        cfg.validate()?;
        let same = |c: &BenchConfig| {
            (c.m, c.k, c.n) == (cfg.m, cfg.k, cfg.n) && c.sparsity == cfg.sparsity
        };
        if configs[..i].iter().any(same) {
            return Err(rewire::Error::arg(
                "m/k/n/sparsity",
                format!(
                    "M={} K={} N={} at sparsity {} is listed twice",
                    cfg.m, cfg.k, cfg.n, cfg.sparsity
                ),
            ));
        }
    }
    let device = open_device(&args.device)?;
    if !args.json {
        emit(&bench::table_header())?;
    }
    for cfg in &configs {
        let r = match &device {
            None => bench::run(cfg)?,
            #[cfg(feature = "cuda")]
            Some(dev) => rewire::cuda::bench::run(cfg, dev)?,
            #[cfg(not(feature = "cuda"))]
            Some(never) => match *never {},
        };
        if args.json {
            emit(&serde_json::to_string(&r).expect("results serialise"))?;
        } else {
            emit(&bench::table_row(&r))?;
        }
    }
    if !args.json {
        let flops = match base.kernel {
            Kernel::Conv => "three products of the forward and backward pass",
            _ => "sparse 2·nnz·N/t, dense 2·M·K·N/t",
        };
        let vectors = if device.is_none() {
            format!(
                "; vectors: sparse {}-bit, dense {}-bit",
                base.kernel.cpu_vector_bits(),
                rewire::cpu::vector_bits().dense
            )
        } else {
            String::new()
        };
        emit(&format!(
            "speedup = dense ms / sparse ms; GF_ratio = sparse GFLOP/s ÷ dense GFLOP/s ({flops}); {} thread(s){vectors}",
            base.threads
        ))?;
    }
    Ok(())
}

/// Prints a line of results: a failed write (a full disk) is an error, as the results
/// are what the command is for; a closed pipe (`| head`) ends the output quietly.
fn emit(line: &str) -> rewire::Result<()> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(rewire::Error::io(std::path::Path::new("<stdout>"), e))
        }
        _ => Ok(()),
    }
}

#[cfg(feature = "cuda")]
type Device = std::sync::Arc<rewire::cuda::CudaDevice>;
#[cfg(not(feature = "cuda"))]
type Device = std::convert::Infallible;

/// `None` for the CPU, the opened device for `cuda` / `cuda:N`.
fn open_device(name: &str) -> rewire::Result<Option<Device>> {
    let ordinal = match name {
        "cpu" => return Ok(None),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                rewire::Error::arg(
                    "device",
                    format!("unknown device {other:?} (cpu, cuda, cuda:N)"),
                )
            })?,
    };
    #[cfg(feature = "cuda")]
    {
        let dev = rewire::cuda::CudaDevice::new(ordinal)?;
        eprintln!("device: {}", dev.describe());
        Ok(Some(dev))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(rewire::Error::Cuda(
            "this build has no CUDA backend (built without the `cuda` feature)".into(),
        ))
    }
}

fn parse_hidden(model: &str) -> rewire::Result<Vec<usize>> {
    let bad = || rewire::Error::arg("model", format!("expected mlp:W1,W2,... got {model:?}"));
    let widths = model.strip_prefix("mlp:").ok_or_else(bad)?;
    widths
        .split(',')
        .map(|w| w.trim().parse::<usize>().map_err(|_| bad()))
        .collect()
}

fn thread_pool(run: &RunArgs) -> rewire::Result<(rayon::ThreadPool, usize)> {
    let threads = run.threads.unwrap_or_else(rayon::current_num_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| rewire::Error::arg("threads", e))?;
    Ok((pool, threads))
}

/// The data of a run.
struct RunData {
    /// what trains
    train: rewire::data::Dataset,
    /// what is evaluated after each epoch
    eval: rewire::data::Dataset,
    /// how a real dataset's pixels were normalised (none for generated data)
    norm: Option<rewire::data::Normalization>,
}

/// The training set and the set evaluated after each epoch: the test set, or with
/// `--holdout N` the last `N` training samples (taken out of the training set).
fn load_data(run: &RunArgs) -> rewire::Result<RunData> {
    let (train_set, test_set, norm) = load_dataset(&run.dataset, &run.data_dir, run.seed)?;
    let (train_set, test_set) = match run.holdout {
        Some(n) if n >= train_set.n => {
            return Err(rewire::Error::arg(
                "holdout",
                format!(
                    "{n} would leave nothing to train on: {} has {} training samples",
                    run.dataset, train_set.n
                ),
            ))
        }
        Some(n) => {
            say!(
                "evaluating on the last {n} of the {} training samples (--holdout), not on \
                 the test set; training on the other {}",
                train_set.n,
                train_set.n - n
            );
            train_set.split(train_set.n - n)
        }
        None => (train_set, test_set),
    };
    let train_set = match run.train_subset {
        Some(n) => {
            if n > train_set.n {
                say!(
                    "note: --train-subset {n} is more than the {} training samples; training \
                     on all of them",
                    train_set.n
                );
            }
            train_set.subset(n)
        }
        None => train_set,
    };
    Ok(RunData {
        train: train_set,
        eval: test_set,
        norm,
    })
}

/// What the reported accuracies were measured on: `test`, or `holdout:N` (the last `N`
/// training samples, `--holdout`).
fn eval_set(run: &RunArgs) -> String {
    match run.holdout {
        Some(n) => format!("holdout:{n}"),
        None => "test".into(),
    }
}

/// The train and test splits of `dataset` (`synthetic`: generated from `seed`), and the
/// normalisation of a real one.
fn load_dataset(
    dataset: &str,
    data_dir: &std::path::Path,
    seed: u64,
) -> rewire::Result<(
    rewire::data::Dataset,
    rewire::data::Dataset,
    Option<rewire::data::Normalization>,
)> {
    Ok(if dataset == "synthetic" {
        let (train, test) = rewire::data::Dataset::synthetic(12_000, 784, 10, seed).split(10_000);
        (train, test, None)
    } else {
        let splits = rewire::data::load(dataset_name(dataset)?, data_dir)?;
        (splits.train, splits.test, Some(splits.norm))
    })
}

/// A real dataset by its name.
fn dataset_name(dataset: &str) -> rewire::Result<rewire::data::DatasetName> {
    rewire::data::DatasetName::parse(dataset).map_err(|_| {
        rewire::Error::arg(
            "dataset",
            format!("unknown dataset {dataset:?} (mnist, fashion-mnist, synthetic)"),
        )
    })
}

/// A model to build: an MLP or a CNN.
enum ModelSpec {
    Mlp(rewire::nn::MlpConfig),
    Cnn(rewire::nn::CnnConfig),
}

impl ModelSpec {
    fn build(self) -> rewire::Result<Built> {
        Ok(match self {
            ModelSpec::Mlp(c) => Built::Mlp(rewire::nn::Mlp::new(c)?),
            ModelSpec::Cnn(c) => Built::Cnn(rewire::nn::Cnn::new(c)?),
        })
    }
}

/// A built model.
enum Built {
    Mlp(rewire::nn::Mlp),
    Cnn(rewire::nn::Cnn),
}

impl Built {
    fn model(&self) -> &dyn rewire::nn::Model {
        match self {
            Built::Mlp(m) => m,
            Built::Cnn(m) => m,
        }
    }
    fn model_mut(&mut self) -> &mut dyn rewire::nn::Model {
        match self {
            Built::Mlp(m) => m,
            Built::Cnn(m) => m,
        }
    }
}

/// How to build a model beside its architecture.
struct ModelSettings {
    activation: rewire::nn::Activation,
    dropout: f32,
    sparsity: f64,
    distribution: rewire::nn::distribution::Distribution,
    seed: u64,
    sparse_storage: bool,
}

/// The architecture `name` (`mlp:W1,W2,...`, `lenet5`, `vgg-small`) for data of
/// `(features, classes)`.
fn model_spec(
    name: &str,
    (dim, classes): (usize, usize),
    s: ModelSettings,
) -> rewire::Result<ModelSpec> {
    use rewire::nn::{CnnConfig, MlpConfig};
    Ok(if name.starts_with("mlp:") {
        ModelSpec::Mlp(MlpConfig {
            activation: s.activation,
            dropout: s.dropout,
            sparsity: s.sparsity,
            distribution: s.distribution,
            seed: s.seed,
            sparse_storage: s.sparse_storage,
            ..MlpConfig::new(dim, &parse_hidden(name)?, classes)
        })
    } else {
        // the name first, so that a mistyped one is named as such before any shape talk
        let side = (dim as f64).sqrt().round() as usize;
        let cnn = CnnConfig::named(name, [1, side, side], classes).map_err(|_| {
            rewire::Error::arg(
                "model",
                format!("unknown model {name:?}: expected mlp:W1,W2,... (hidden widths), lenet5 or vgg-small"),
            )
        })?;
        if side * side != dim {
            return Err(rewire::Error::arg(
                "model",
                format!("{name} needs square one-channel images; the data has {dim} features"),
            ));
        }
        ModelSpec::Cnn(CnnConfig {
            activation: s.activation,
            dropout: s.dropout,
            sparsity: s.sparsity,
            distribution: s.distribution,
            seed: s.seed,
            sparse_storage: s.sparse_storage,
            ..cnn
        })
    })
}

/// The model and training settings of one run of `method` at `sparsity`.
fn build(
    run: &RunArgs,
    method: &str,
    sparsity: f64,
    data: &rewire::data::Dataset,
    threads: usize,
) -> rewire::Result<(ModelSpec, rewire::train::TrainConfig)> {
    use rewire::dst::{MethodKind, RewireConfig};
    use rewire::nn::{distribution::Distribution, Activation};
    use rewire::optim::OptimizerConfig;
    use rewire::train::{Schedule, TrainConfig};

    if method != "dense" && !(0.0..1.0).contains(&sparsity) {
        return Err(rewire::Error::arg(
            "sparsity",
            format!("must lie in [0, 1), got {sparsity}"),
        ));
    }
    // the rewiring flags are checked whatever the method: a value out of range is an
    // error, not silently ignored because this method does not use it
    RewireConfig {
        delta_t: run.delta_t,
        drop_fraction: run.drop_fraction,
        end_fraction: run.t_end.unwrap_or(0.75),
        ..RewireConfig::defaults(MethodKind::RigL)
    }
    .validate()?;
    let (sparsity, rewire_cfg) = if method == "dense" {
        (0.0, None)
    } else {
        let kind = MethodKind::parse(method)?;
        let mut rc = RewireConfig::defaults(kind);
        rc.delta_t = run.delta_t;
        rc.drop_fraction = run.drop_fraction;
        rc.seed = run.seed;
        if let Some(t) = run.t_end {
            // prune-then-finetune's one pruning step is its "end" of rewiring
            if kind == MethodKind::PruneFinetune {
                rc.start_fraction = t;
            } else {
                rc.end_fraction = t;
            }
        }
        if kind.is_dense_to_sparse() {
            // start dense (in sparse storage), prune to the target
            rc.target_sparsity = sparsity;
            (0.0, Some(rc))
        } else {
            (sparsity, (kind != MethodKind::Static).then_some(rc))
        }
    };
    let sparse_storage = rewire_cfg
        .as_ref()
        .is_some_and(|r| r.kind.is_dense_to_sparse());
    let (activation, distribution) = (
        Activation::parse(&run.activation)?,
        Distribution::parse(&run.distribution)?,
    );
    let model = model_spec(
        &run.model,
        (data.dim, data.classes),
        ModelSettings {
            activation,
            dropout: run.dropout,
            sparsity,
            distribution,
            seed: run.seed,
            sparse_storage,
        },
    )?;
    let optimizer = match run.optimizer.as_str() {
        "sgd" => OptimizerConfig::Sgd {
            momentum: run.momentum,
            nesterov: run.nesterov,
            weight_decay: run.weight_decay,
        },
        "adam" | "adamw" if run.nesterov => {
            return Err(rewire::Error::arg(
                "nesterov",
                "Nesterov momentum is an SGD option (--optimizer sgd)",
            ))
        }
        "adam" | "adamw" => OptimizerConfig::Adam {
            beta1: run.momentum,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: run.weight_decay,
            decoupled: run.optimizer == "adamw",
        },
        other => {
            return Err(rewire::Error::arg(
                "optimizer",
                format!("unknown optimizer {other:?} (sgd, adam, adamw)"),
            ))
        }
    };
    let cfg = TrainConfig {
        epochs: run.epochs,
        batch_size: run.batch_size,
        lr: run.lr,
        schedule: Schedule::parse(&run.schedule)?,
        optimizer,
        seed: run.seed,
        max_steps: run.max_steps,
        progress: !run.no_progress,
        par: if threads > 1 {
            rewire::Par::Rayon(threads)
        } else {
            rewire::Par::Seq
        },
        rewire: rewire_cfg,
    };
    cfg.validate()?;
    // the rewiring schedule over the run's steps (a dense-to-sparse method with no
    // pruning step in the run is an error), before anything trains
    if let Some(rc) = &cfg.rewire {
        let total = cfg.total_steps(data.n).max(1);
        rewire::dst::Rewirer::new(rc.clone(), total)?;
    }
    Ok((model, cfg))
}

/// Where a run writes besides the terminal.
struct Outputs<'a> {
    /// one JSON line per epoch
    log: Option<&'a mut rewire::train::JsonlLog>,
    /// the trained model (safetensors)
    save: Option<&'a std::path::Path>,
}

/// A model ready to train, with its settings.
struct Prepared {
    built: Built,
    cfg: rewire::train::TrainConfig,
    /// the sparsity that logs and the saved file record: the target of a dense-to-sparse
    /// method, the file's with `--init`
    sparsity: f64,
    /// where a dense-to-sparse method prunes to
    prunes_to: Option<f64>,
    /// how the sparsity is spread, as logs and the saved file record it (with `--init`,
    /// the file's)
    distribution: String,
}

/// Where `train --init` starts from, and whether `--sparsity` was given beside it.
struct Init<'a> {
    path: &'a std::path::Path,
    sparsity_given: bool,
}

/// Builds the model of one run of `method` at `sparsity` (loading `init` into it) and
/// checks that what will train is what the flags name.
fn prepare(
    run: &RunArgs,
    method: &str,
    sparsity: f64,
    init: Option<Init>,
    data: &rewire::data::Dataset,
    threads: usize,
) -> rewire::Result<Prepared> {
    let (config, cfg) = build(run, method, sparsity, data, threads)?;
    let mut built = config.build()?;
    // dense-to-sparse methods start dense and prune to this
    let prunes_to = cfg
        .rewire
        .as_ref()
        .filter(|r| r.kind.is_dense_to_sparse())
        .map(|r| r.target_sparsity);
    let mut recorded = prunes_to.unwrap_or(if method == "dense" { 0.0 } else { sparsity });
    let mut distribution = run.distribution.clone();
    if let Some(init) = init {
        let path = init.path;
        let meta = rewire::io::load_into(path, built.model_mut())?;
        // the activation is part of what the weights compute: it must be the file's
        if let Some(a) = meta.get("activation") {
            let file_act = rewire::nn::Activation::parse(a)
                .map_err(|e| rewire::Error::format(path, format!("metadata: {e}")))?;
            if file_act != rewire::nn::Activation::parse(&run.activation)? {
                return Err(rewire::Error::arg(
                    "activation",
                    format!(
                        "{} was trained with activation {a}, not {}: pass --activation {a}",
                        path.display(),
                        run.activation
                    ),
                ));
            }
        }
        if let Some(d) = meta
            .get("dropout")
            .filter(|d| **d != run.dropout.to_string())
        {
            say!(
                "note: {} was trained with dropout {d}; this run uses {}",
                path.display(),
                run.dropout
            );
        }
        // the file's pattern, not --distribution, says how its sparsity is spread
        if prunes_to.is_none() {
            if let Some(d) = meta.get("distribution") {
                distribution = d.clone();
            }
        }
        if prunes_to.is_some() {
            // the file's dense weights go into sparse storage, where pruning works
            let model = built.model_mut();
            for layer in model.weight_layers() {
                model
                    .params_mut()
                    .get_mut(layer.weight)
                    .to_sparse_storage()?;
            }
        }
        let m = built.model();
        let (live, dense) = (m.live_weights(), m.dense_weights());
        let file_sparsity = 1.0 - live as f64 / dense.max(1) as f64;
        let has_sparse = m.has_sparse_weights();
        if method == "dense" && has_sparse {
            return Err(rewire::Error::arg(
                "init",
                format!(
                    "{} holds a sparse model ({live} of {dense} weights live): --method dense \
                     would train it sparse; name the sparse method to go on with (static \
                     keeps its pattern)",
                    path.display()
                ),
            ));
        }
        if method != "dense" && prunes_to.is_none() {
            if !has_sparse {
                return Err(rewire::Error::arg(
                    "init",
                    format!(
                        "{} holds a dense model: {method} would train it dense; to prune it \
                         use --method gmp or prune-finetune with --sparsity",
                        path.display()
                    ),
                ));
            }
            if init.sparsity_given && (file_sparsity - sparsity).abs() > 0.005 {
                return Err(rewire::Error::arg(
                    "sparsity",
                    format!(
                        "{sparsity} disagrees with {}, whose storage is {file_sparsity:.4} \
                         sparse: with --init the file's pattern decides (leave --sparsity out)",
                        path.display()
                    ),
                ));
            }
            // the file's storage decides the sparsity; logs and saved metadata record it
            recorded = (file_sparsity * 1e4).round() / 1e4;
        }
        say!(
            "initialised from {} (its storage: {live} live weights of {dense})",
            path.display()
        );
    }
    Ok(Prepared {
        built,
        cfg,
        sparsity: recorded,
        prunes_to,
        distribution,
    })
}

/// Trains a prepared model, printing a header and a line per epoch (and logging them).
fn run_one(
    prepared: Prepared,
    run: &RunArgs,
    method: &str,
    data: &RunData,
    threads: usize,
    device: Option<&Device>,
    out: Outputs,
) -> rewire::Result<Vec<rewire::train::EpochReport>> {
    let Outputs { mut log, save } = out;
    let (train_set, test_set) = (&data.train, &data.eval);
    let Prepared {
        mut built,
        cfg,
        sparsity,
        prunes_to,
        distribution,
    } = prepared;
    let model = built.model();
    let layers = model
        .weight_layers()
        .iter()
        .map(|l| match (l.shape.kh, l.shape.kw) {
            (1, 1) => format!("{}x{}", l.shape.fan_out, l.shape.fan_in),
            (kh, kw) => format!("{}x{}x{kh}x{kw}", l.shape.fan_out, l.shape.fan_in),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let target = prunes_to.map_or(String::new(), |t| format!(", pruned to {t:.4}"));
    say!(
        "{} {}: {} · method {} · sparsity {:.4} ({}{target}) · live weights {} of {} · {} train / {} {} samples · {} thread(s)",
        run.dataset,
        run.model,
        layers,
        method,
        1.0 - model.live_weights() as f64 / model.dense_weights() as f64,
        distribution,
        model.live_weights(),
        model.dense_weights(),
        train_set.n,
        test_set.n,
        if run.holdout.is_some() { "held-out" } else { "test" },
        threads
    );
    if let Some(rc) = cfg.rewire.as_ref().filter(|r| !r.kind.is_dense_to_sparse()) {
        let total = cfg.total_steps(train_set.n);
        let rewirer = rewire::dst::Rewirer::new(rc.clone(), total)?;
        let first = rc.delta_t;
        if first == 0 || first >= total || !rewirer.is_update(first) {
            say!(
                "note: {method} rewires every {} steps until step {} of the run's {total}: \
                 no update falls within it, so it trains as static sparse (lower --delta-t or raise --t-end)",
                rc.delta_t,
                rewirer.schedule().t_end
            );
        } else if rewirer.replaces_step() && rc.delta_t < 10 {
            say!(
                "note: RigL rewires instead of taking the optimizer step at each update (as \
                 its reference code does): with --delta-t {0}, one step in {0} before T_end \
                 updates no weight",
                rc.delta_t
            );
        }
    }
    let epochs = cfg.epochs;
    let on_epoch = |r: &rewire::train::EpochReport| {
        // the log line first: it is the record that must survive
        if let Some(log) = log.as_deref_mut() {
            log.write(&serde_json::json!({
                "dataset": run.dataset,
                "model": run.model,
                "method": method,
                "sparsity": sparsity,
                "distribution": distribution,
                "seed": run.seed,
                "threads": threads,
                "device": run.device,
                "evaluated_on": eval_set(run),
                "report": r,
            }))?;
        }
        say!(
            "epoch {:>3}/{epochs}  loss {:.4}  train {:6.2}%  {} {:6.2}%  time {:7.2}s  live {} ({:.2}% of dense)  train FLOPs {:.3e}  lr {:.4}  rewired {}",
            r.epoch,
            r.loss,
            100.0 * r.train_acc,
            if run.holdout.is_some() { "held-out" } else { "test" },
            100.0 * r.test_acc,
            r.epoch_s,
            r.live_weights,
            100.0 * r.live_weights as f64 / r.dense_weights as f64,
            r.train_flops,
            r.lr,
            r.rewired
        );
        Ok(())
    };
    let reports = match (device, &mut built) {
        (None, b) => rewire::train::train(b.model_mut(), train_set, test_set, &cfg, on_epoch),
        #[cfg(feature = "cuda")]
        (Some(dev), Built::Mlp(m)) => {
            rewire::cuda::train::train_mlp(dev, m, train_set, test_set, &cfg, on_epoch)
        }
        #[cfg(feature = "cuda")]
        (Some(dev), Built::Cnn(c)) => {
            rewire::cuda::cnn::train_cnn(dev, c, train_set, test_set, &cfg, on_epoch)
        }
        #[cfg(not(feature = "cuda"))]
        (Some(never), _) => match *never {},
    }?;
    if let (Some(max), true) = (cfg.max_steps, reports.len() < epochs) {
        say!(
            "stopped at --max-steps {max}, in epoch {} of {epochs}",
            reports.len()
        );
    }
    if let Some(path) = save {
        let model = built.model();
        let mut meta = std::collections::BTreeMap::from(
            [
                ("rewire_version", env!("CARGO_PKG_VERSION").to_string()),
                ("dataset", run.dataset.clone()),
                ("model", run.model.clone()),
                ("input_dim", train_set.dim.to_string()),
                ("classes", train_set.classes.to_string()),
                ("activation", run.activation.clone()),
                ("dropout", run.dropout.to_string()),
                ("method", method.to_string()),
                ("sparsity", sparsity.to_string()),
                ("distribution", distribution.clone()),
                ("seed", run.seed.to_string()),
                ("epochs", reports.len().to_string()),
                ("evaluated_on", eval_set(run)),
                (
                    if run.holdout.is_some() {
                        "holdout_acc"
                    } else {
                        "test_acc"
                    },
                    reports
                        .last()
                        .map_or(String::new(), |r| r.test_acc.to_string()),
                ),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        if let Some(norm) = data.norm {
            // what `rewire eval` normalises the test images with, so that it needs no
            // training files and feeds the model what it was trained on
            meta.insert("norm_mean".into(), norm.mean.to_string());
            meta.insert("norm_std".into(), norm.std.to_string());
        }
        rewire::io::save(path, model, &meta)?;
        say!(
            "wrote {} ({} live weights of {})",
            path.display(),
            model.live_weights(),
            model.dense_weights()
        );
    }
    Ok(reports)
}

/// Whether a file can be written at `path` (its folder exists and takes a new file, and
/// the path is not a folder), checked with a probe file that is removed at once.
fn check_writable(flag: &'static str, path: &std::path::Path) -> rewire::Result<()> {
    if path.is_dir() {
        return Err(rewire::Error::arg(
            flag,
            format!("{} is a folder, not a file name", path.display()),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let probe = dir.join(format!(".rewire-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        rewire::Error::arg(
            flag,
            format!("cannot write a file in {}: {e}", dir.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn run_train(mut args: TrainArgs) -> rewire::Result<()> {
    args.run.tidy();
    let method = method_name(&args.method)?;
    let (pool, threads) = thread_pool(&args.run)?;
    let device = open_device(&args.run.device)?;
    let data = load_data(&args.run)?;
    // the settings, the --init file and every path, before the log is created (or an
    // old one emptied) and long before the model is saved
    if let Some(save) = &args.save {
        check_writable("save", save)?;
    }
    let init = args.init.as_deref().map(|path| Init {
        path,
        sparsity_given: args.sparsity.is_some(),
    });
    let prepared = prepare(
        &args.run,
        method,
        args.sparsity.unwrap_or(0.9),
        init,
        &data.train,
        threads,
    )?;
    let mut log = args
        .log
        .as_deref()
        .map(rewire::train::JsonlLog::create)
        .transpose()?;
    pool.install(|| {
        run_one(
            prepared,
            &args.run,
            method,
            &data,
            threads,
            device.as_ref(),
            Outputs {
                log: log.as_mut(),
                save: args.save.as_deref(),
            },
        )
    })?;
    Ok(())
}

fn run_compare(mut args: CompareArgs) -> rewire::Result<()> {
    use rewire::train::compare;
    args.run.tidy();
    // fail on the arguments before loading data or writing anything, not hours later
    let mut methods: Vec<&'static str> = Vec::with_capacity(args.methods.len());
    for m in &args.methods {
        let name = method_name(m).map_err(|_| {
            rewire::Error::arg(
                "methods",
                format!(
                    "unknown method {:?} (static, set, rigl, dsr, gmp, prune-finetune)",
                    m.trim()
                ),
            )
        })?;
        if name == "dense" {
            return Err(rewire::Error::arg(
                "methods",
                "dense always runs first, as the baseline: list only sparse methods \
                 (static, set, rigl, dsr, gmp, prune-finetune)",
            ));
        }
        if methods.contains(&name) {
            return Err(rewire::Error::arg(
                "methods",
                format!("{name} is listed twice"),
            ));
        }
        methods.push(name);
    }
    for (i, s) in args.sparsities.iter().enumerate() {
        // runs are named METHOD-SPARSITY: a repeat would overwrite the first one's files
        if args.sparsities[..i].contains(s) {
            return Err(rewire::Error::arg(
                "sparsities",
                format!("{s} is listed twice"),
            ));
        }
    }
    let (pool, threads) = thread_pool(&args.run)?;
    let device = open_device(&args.run.device)?;
    let data = load_data(&args.run)?;
    let mut runs = vec![("dense", 0.0)];
    for &s in &args.sparsities {
        for &m in &methods {
            runs.push((m, s));
        }
    }
    // every run's settings, before the first one trains
    for &(method, sparsity) in &runs {
        build(&args.run, method, sparsity, &data.train, threads)?;
    }
    std::fs::create_dir_all(&args.out).map_err(|e| rewire::Error::io(&args.out, e))?;
    // the summaries of an earlier comparison in the same folder go: what is there at the
    // end is this one's
    for name in [
        "compare.csv",
        "compare.json",
        "accuracy_vs_sparsity.svg",
        "epoch_time_vs_sparsity.svg",
    ] {
        let path = args.out.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(rewire::Error::io(&path, e))
            }
            _ => {}
        }
    }
    let mut rows = Vec::new();
    let mut diverged = Vec::new();
    for (k, &(method, sparsity)) in runs.iter().enumerate() {
        say!(
            "== run {}/{}: {method} at sparsity {sparsity}",
            k + 1,
            runs.len()
        );
        let log_path = args.out.join(format!("{method}-{sparsity}.jsonl"));
        let mut log = rewire::train::JsonlLog::create(&log_path)?;
        let save = args
            .save_models
            .then(|| args.out.join(format!("{method}-{sparsity}.safetensors")));
        let prepared = prepare(&args.run, method, sparsity, None, &data.train, threads)?;
        let result = pool.install(|| {
            run_one(
                prepared,
                &args.run,
                method,
                &data,
                threads,
                device.as_ref(),
                Outputs {
                    log: Some(&mut log),
                    save: save.as_deref(),
                },
            )
        });
        let reports = match result {
            // a diverged run is an outcome of its settings: the others still run
            Err(rewire::Error::Diverged(why)) => {
                // no model file from an earlier comparison in the folder stands in for it
                if let Some(path) = save.as_deref() {
                    let _ = std::fs::remove_file(path);
                }
                say!(
                    "{method} at sparsity {sparsity} diverged ({why}); its finished epochs, if any, are \
                     in {}",
                    log_path.display()
                );
                diverged.push(format!("{method} at {sparsity}"));
                continue;
            }
            other => other?,
        };
        rows.push(compare::summarize(
            method,
            sparsity,
            &reports,
            &eval_set(&args.run),
        )?);
        // rewrite the summaries after every run, so an interrupted comparison keeps them
        let mut partial = rows.clone();
        compare::relate_to_dense(&mut partial);
        compare::write_csv(&args.out.join("compare.csv"), &partial)?;
        compare::write_json(&args.out.join("compare.json"), &partial)?;
    }
    if rows.is_empty() {
        return Err(rewire::Error::Diverged(format!(
            "every run diverged ({}); nothing to compare",
            diverged.join(", ")
        )));
    }
    compare::relate_to_dense(&mut rows);
    let acc_label = if args.run.holdout.is_some() {
        "held-out acc"
    } else {
        "test acc"
    };
    say!("\n{}", compare::table(&rows, acc_label));
    if let Some(n) = args.run.holdout {
        say!("(accuracies on the last {n} training samples, held out by --holdout, not on the test set)");
    }
    let title = format!("{} {}", args.run.dataset, args.run.model);
    compare::plot(
        &args.out.join("accuracy_vs_sparsity.svg"),
        &rows,
        &title,
        if args.run.holdout.is_some() {
            "held-out accuracy (%)"
        } else {
            "test accuracy (%)"
        },
        |r| 100.0 * r.test_acc,
    )?;
    compare::plot(
        &args.out.join("epoch_time_vs_sparsity.svg"),
        &rows,
        &title,
        "epoch time (s)",
        |r| r.epoch_s,
    )?;
    say!(
        "wrote {0}/compare.csv, {0}/compare.json, {0}/accuracy_vs_sparsity.svg, {0}/epoch_time_vs_sparsity.svg and one log per run",
        args.out.display()
    );
    if diverged.is_empty() {
        Ok(())
    } else {
        Err(rewire::Error::Diverged(format!(
            "{} of {} runs diverged and are not in the table: {}",
            diverged.len(),
            runs.len(),
            diverged.join(", ")
        )))
    }
}

fn run_eval(mut args: EvalArgs) -> rewire::Result<()> {
    use rewire::nn::{distribution::Distribution, Activation};
    if let Some(d) = &mut args.dataset {
        tidy(d);
    }
    let file = rewire::io::ModelFile::read(&args.file)?;
    let meta = file.metadata();
    let get = |key: &str| {
        meta.get(key).ok_or_else(|| {
            rewire::Error::format(
                &args.file,
                format!("no {key:?} in its metadata (was it written by rewire train --save?)"),
            )
        })
    };
    // a number from the metadata (any type that parses from text)
    fn number<T: std::str::FromStr>(
        text: &str,
        file: &std::path::Path,
        key: &str,
    ) -> rewire::Result<T> {
        text.parse()
            .map_err(|_| rewire::Error::format(file, format!("metadata {key:?} is not a number")))
    }
    let num = |key: &str| -> rewire::Result<usize> { number(get(key)?, &args.file, key) };
    let dataset = match &args.dataset {
        Some(d) => {
            if let Some(trained) = meta.get("dataset").filter(|t| *t != d) {
                say!("note: the model was trained on {trained}; evaluating it on {d}");
            }
            d.clone()
        }
        None => get("dataset")?.clone(),
    };
    // generated data is drawn from the seed of the run: it must be the same
    let seed = if dataset == "synthetic" {
        number(get("seed")?, &args.file, "seed")?
    } else {
        0
    };
    let float = |key: &str| -> rewire::Result<f64> { number(get(key)?, &args.file, key) };
    let test_set = if dataset != "synthetic" && meta.contains_key("norm_mean") {
        // the pixels normalised as in training: only the test files are read
        let norm = rewire::data::Normalization {
            mean: float("norm_mean")?,
            std: float("norm_std")?,
        }
        .validate()
        .map_err(|e| rewire::Error::format(&args.file, format!("metadata: {e}")))?;
        rewire::data::load_test(dataset_name(&dataset)?, &args.data_dir, norm)?
    } else {
        if dataset != "synthetic" {
            let why = if meta.get("dataset").is_some_and(|d| d == "synthetic") {
                "its model was trained on generated data"
            } else {
                "an older file"
            };
            say!(
                "note: {} records no pixel normalisation ({why}); normalising with \
                 {dataset}'s training-set statistics",
                args.file.display()
            );
        }
        load_dataset(&dataset, &args.data_dir, seed)?.1
    };
    let (dim, classes) = (num("input_dim")?, num("classes")?);
    if test_set.dim != dim || test_set.classes > classes {
        return Err(rewire::Error::arg(
            "dataset",
            format!(
                "{dataset} has {} features and {} classes; the model takes {dim} and has {classes}",
                test_set.dim, test_set.classes
            ),
        ));
    }
    // a bad value in the file's metadata names the file
    let in_file = |e: rewire::Error| rewire::Error::format(&args.file, format!("metadata: {e}"));
    let spec = model_spec(
        get("model")?,
        (dim, classes),
        ModelSettings {
            activation: Activation::parse(get("activation")?).map_err(in_file)?,
            dropout: 0.0,
            sparsity: 0.0,
            distribution: Distribution::Uniform { dense_first: false },
            seed: 0,
            sparse_storage: false,
        },
    )
    .map_err(in_file)?;
    let mut built = spec.build()?;
    file.apply(built.model_mut())?;
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| rewire::Error::arg("threads", e))?;
    let par = if threads > 1 {
        rewire::Par::Rayon(threads)
    } else {
        rewire::Par::Seq
    };
    let start = std::time::Instant::now();
    let (model, test, batch) = (built.model_mut(), &test_set, args.batch_size.max(1));
    // a `&mut dyn Model` is Send (the model is not Sync), so it moves to the pool
    let (loss, acc) = pool.install(move || {
        let mut tape = rewire::autograd::Tape::new(par);
        rewire::train::evaluate(&*model, test, batch, &mut tape)
    })?;
    let model = built.model();
    say!(
        "{}: {} trained with {} at sparsity {} on {}",
        args.file.display(),
        get("model")?,
        meta.get("method").map_or("?", String::as_str),
        meta.get("sparsity").map_or("?", String::as_str),
        get("dataset")?,
    );
    for layer in model.weight_layers() {
        let p = model.params().get(layer.weight);
        say!(
            "  {:<12} {:>8} of {:>8} weights live ({:.2}%){}",
            p.name,
            p.live(),
            layer.shape.size(),
            100.0 * p.live() as f64 / layer.shape.size().max(1) as f64,
            if p.pattern().is_some() {
                ", sparse"
            } else {
                ", dense"
            }
        );
    }
    say!(
        "{dataset} test: loss {loss:.4}  accuracy {:.2}%  ({} samples, {:.2}s)  live weights {} of {}",
        100.0 * acc,
        test_set.n,
        start.elapsed().as_secs_f64(),
        model.live_weights(),
        model.dense_weights()
    );
    Ok(())
}
