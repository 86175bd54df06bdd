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
