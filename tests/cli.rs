//! The `rewire` binary as a user meets it: bad arguments give an error that names the
//! problem (never a panic), `bench --json` prints the documented keys with values that
//! hang together, `train` is reproducible from its seed and logs what it printed, and
//! `compare` writes its table, its data and its plots. Generated data only.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rewire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(args)
        .output()
        .expect("the rewire binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh, empty folder under the target directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

#[test]
fn bad_arguments_are_errors_that_name_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train", "--dataset", "synthetic", "--model", "resnet50"],
            "unknown model \"resnet50\"",
        ),
        (
            &["train", "--dataset", "synthetic", "--model", "mlp:10,x"],
            "model",
        ),
        (
            &["train", "--dataset", "synthetic", "--sparsity", "1.5"],
            "sparsity",
        ),
        (
            &["train", "--dataset", "synthetic", "--method", "magic"],
            "unknown method \"magic\"",
        ),
        (
            &["train", "--dataset", "cifar", "--model", "mlp:10"],
            "cifar",
        ),
        (
            &[
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent/rewire-data",
            ],
            "/nonexistent/rewire-data",
        ),
        (
            &[
                "compare",
                "--dataset",
                "synthetic",
                "--methods",
                "rigl,bogus",
            ],
            "unknown method \"bogus\"",
        ),
        (
            &["bench", "spmm", "--m", "64", "--sparsity", "2"],
            "sparsity",
        ),
        (&["bench", "nope"], "nope"),
        (&["bench", "spmm", "--m", "64", "--n", "0"], "at least 1"),
        (
            &["bench", "spmm", "--m", "64", "--sparsity", "1"],
            "nothing to time",
        ),
        (&["bench", "conv", "--ksize", "2"], "odd kernel side"),
        (&["bench", "spmm", "--m", "64, 64"], "listed twice"),
        (
            &["train", "--dataset", "synthetic", "--holdout", "10000"],
            "nothing to train on",
        ),
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--optimizer",
                "adam",
                "--nesterov",
            ],
            "SGD option",
        ),
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--optimizer",
                "adam",
                "--momentum",
                "1.5",
            ],
            "--momentum",
        ),
    ];
    fails_naming(cases);
    // a sweep is checked whole before its first configuration is timed
    let out = rewire(&["bench", "bsr", "--m", "64,63", "--min-time-ms", "1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("63×63"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

/// Each command fails, without a panic, with `needle` in its error output.
fn fails_naming(cases: &[(&[&str], &str)]) {
    for (args, needle) in cases {
        let out = rewire(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: stderr does not name {needle:?}:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    }
}

/// `compare` checks every run's settings before the first (dense) run trains: a bad
/// sparsity or hyper-parameter is an error at once, with no run started and no output
/// folder written; negative numbers reach the range checks instead of being taken for
/// flags.
#[test]
fn compare_checks_every_run_before_training_any() {
    let dir = scratch("compare-preflight");
    let out_dir = dir.join("out");
    let out_arg = out_dir.to_str().expect("utf-8 path");
    let base = [
        "compare",
        "--dataset",
        "synthetic",
        "--model",
        "mlp:16",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        out_arg,
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (with(&["--sparsities", "0.9,1.5"]), "got 1.5"),
        (with(&["--sparsities=-0.5"]), "got -0.5"),
        (
            with(&["--methods", "static,rigl", "--drop-fraction", "1.5"]),
            "drop_fraction",
        ),
        (with(&["--methods", "gmp", "--t-end", "-1"]), "end_fraction"),
        (with(&["--schedule", "step:0:0.5"]), "schedule"),
        (with(&["--lr", "-1"]), "lr"),
        // a pruning schedule with no step in the run: before dense trains, not after
        (
            with(&["--methods", "rigl,gmp", "--delta-t", "1000"]),
            "no such step",
        ),
    ];
    for (args, needle) in &cases {
        let out = rewire(args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr does not name {needle:?}:\n{stderr}"
        );
        assert!(
            !stdout.contains("== run"),
            "{args:?} started a run before failing:\n{stdout}"
        );
        assert!(!out_dir.exists(), "{args:?} wrote {}", out_dir.display());
    }
    fails_naming(&[(&["train", "--epochs", "0"], "epochs")]);
}

/// Where the system reports its available memory (Linux), requests far beyond it are
/// refused before anything is allocated.
#[cfg(target_os = "linux")]
#[test]
fn oversized_requests_are_refused_before_allocating() {
    fails_naming(&[
        // 10¹² dense weights (16 TB with gradients and momentum): refused before any
        // is allocated
        (
            &[
                "train",
                "--dataset",
                "synthetic",
                "--model",
                "mlp:1000000,1000000",
                "--method",
                "dense",
            ],
            "GB of memory",
        ),
        // a dense baseline of 4·10¹² bytes: refused before anything is allocated
        (
            &["bench", "spmm", "--m", "1000000", "--n", "8"],
            "GB of memory",
        ),
    ]);
}

#[test]
fn bench_json_prints_the_documented_keys_and_consistent_figures() {
    for kernel in ["spmm", "spmm-t", "sddmm", "bsr"] {
        let out = rewire(&[
            "bench",
            kernel,
            "--m",
            "64",
            "--k",
            "48",
            "--n",
            "1,16",
            "--sparsity",
            "0.75",
            "--block",
            "4",
            "--min-time-ms",
            "2",
            "--json",
        ]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "bench {kernel} failed:\n{}",
            text(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert_eq!(rows.len(), 2, "{kernel}, two values of N:\n{stdout}");
        for r in &rows {
            for key in [
                "kernel",
                "m",
                "k",
                "n",
                "sparsity",
                "nnz",
                "sparse_ms",
                "dense_ms",
                "sparse_gflops",
                "dense_gflops",
                "speedup",
            ] {
                assert!(r.get(key).is_some(), "no {key:?} in {r}");
            }
            assert_eq!(r["kernel"].as_str(), Some(kernel), "{r}");
            let f = |k: &str| {
                r[k].as_f64()
                    .unwrap_or_else(|| panic!("{k} is not a number: {r}"))
            };
            assert_eq!((f("m"), f("k")), (64.0, 48.0));
            // a quarter of the 64·48 entries stored (of the 16·12 4×4 blocks for bsr)
            assert_eq!(f("nnz"), 64.0 * 48.0 / 4.0, "{r}");
            assert!(f("sparse_ms") > 0.0 && f("dense_ms") > 0.0, "{r}");
            let speedup = f("dense_ms") / f("sparse_ms");
            assert!((f("speedup") / speedup - 1.0).abs() < 1e-6, "{r}");
            let sparse_gf = 2.0 * f("nnz") * f("n") / (f("sparse_ms") * 1e6);
            assert!((f("sparse_gflops") / sparse_gf - 1.0).abs() < 1e-6, "{r}");
            let dense_gf = 2.0 * 64.0 * 48.0 * f("n") / (f("dense_ms") * 1e6);
            assert!((f("dense_gflops") / dense_gf - 1.0).abs() < 1e-6, "{r}");
            // both kernels computed the same product
            assert!(f("max_rel_diff") < 1e-4, "{r}");
        }
    }
}

#[test]
fn bench_conv_defaults_to_a_conv_layer_shape() {
    // only the sparsity given: the layer is 64 → 64 channels, 3×3, 28×28, batch 64
    let out = rewire(&[
        "bench",
        "conv",
        "--sparsity",
        "0.9",
        "--min-time-ms",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "bench conv failed:\n{}",
        text(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("one JSON line");
    assert_eq!(r["m"].as_u64(), Some(64), "{r}");
    assert_eq!(r["k"].as_u64(), Some(64 * 9), "{r}");
    assert_eq!(r["n"].as_u64(), Some(64 * 28 * 28), "{r}");
    assert!(
        r["max_rel_diff"].as_f64().expect("max_rel_diff") < 1e-4,
        "{r}"
    );
}

fn train_args<'a>(log: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp:32",
        "--method",
        "rigl",
        "--sparsity",
        "0.8",
        "--delta-t",
        "5",
        "--epochs",
        "2",
        "--train-subset",
        "1000",
        "--threads",
        "2",
        "--no-progress",
        "--seed",
        seed,
        "--log",
        log,
    ]
}

/// The JSON-lines log's reports, each without its wall time.
fn reports(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .expect("the log was written")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            let report = v["report"].as_object_mut().expect("a report object");
            assert!(report.remove("epoch_s").is_some(), "no epoch_s in {l}");
            v
        })
        .collect()
}

#[test]
fn train_is_reproducible_from_its_seed_and_logs_every_epoch() {
    let dir = scratch("cli-train");
    let logs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.join(format!("{n}.jsonl")))
        .collect();
    for (log, seed) in logs.iter().zip(["7", "7", "8"]) {
        let out = rewire(&train_args(log.to_str().expect("utf-8 path"), seed));
        assert!(out.status.success(), "train failed:\n{}", text(&out.stderr));
        // one printed line per epoch
        let printed = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(
            printed.lines().filter(|l| l.starts_with("epoch")).count(),
            2,
            "{printed}"
        );
    }
    let (a, b, c) = (reports(&logs[0]), reports(&logs[1]), reports(&logs[2]));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b, "the same seed gave different runs");
    assert_ne!(a, c, "a different seed gave the same run");
    let live = |r: &serde_json::Value| r["report"]["live_weights"].as_u64().expect("live_weights");
    for r in &a {
        let rep = &r["report"];
        // 80% sparse: a fifth of the weights live (rounded per layer: two layers)
        let dense = rep["dense_weights"].as_u64().expect("dense_weights") as f64;
        assert!((live(r) as f64 - 0.2 * dense).abs() <= 2.0, "{r}");
        assert!(rep["rewired"].as_u64().expect("rewired") > 0, "{r}");
    }
    // rewiring keeps the count exactly
    assert_eq!(live(&a[0]), live(&a[1]));
    // the generated data is learnable: well above the 10% of chance after two epochs
    let acc = a[1]["report"]["test_acc"].as_f64().expect("test_acc");
    assert!(acc > 0.6, "test accuracy {acc}");
}

/// `--holdout N` trains on all but the last `N` training samples and reports accuracy on
/// those, saying so on screen and in the log.
#[test]
fn holdout_evaluates_on_held_out_training_samples() {
    let dir = scratch("cli-holdout");
    let log = dir.join("h.jsonl");
    let mut args = train_args(log.to_str().expect("utf-8 path"), "3");
    args.retain(|a| *a != "--train-subset" && *a != "1000");
    args.extend(["--holdout", "1500"]);
    let out = rewire(&args);
    assert!(out.status.success(), "train failed:\n{}", text(&out.stderr));
    let printed = text(&out.stdout) + &text(&out.stderr);
    // synthetic data has 10000 training samples
    assert!(
        printed.contains("8500 train / 1500 held-out samples"),
        "{printed}"
    );
    assert_eq!(
        printed
            .lines()
            .filter(|l| l.starts_with("epoch") && l.contains("held-out"))
            .count(),
        2,
        "{printed}"
    );
    for r in reports(&log) {
        assert_eq!(r["evaluated_on"], "holdout:1500", "{r}");
    }
}

/// `eval` rebuilds a saved model and finds the test accuracy its training run logged.
#[test]
fn eval_reproduces_the_saved_models_test_accuracy() {
    let dir = scratch("cli-eval");
    let (log, model) = (dir.join("run.jsonl"), dir.join("run.safetensors"));
    let mut args = train_args(log.to_str().expect("utf-8 path"), "11");
    args.extend(["--save", model.to_str().expect("utf-8 path")]);
    let out = rewire(&args);
    assert!(out.status.success(), "train failed:\n{}", text(&out.stderr));
    let logged = reports(&log).last().expect("a report")["report"]["test_acc"]
        .as_f64()
        .expect("test_acc");
    eval_finds(
        &["eval", model.to_str().expect("utf-8 path")],
        "synthetic",
        logged,
    );
}

/// Runs `eval` with `args` and checks it prints `dataset`'s test accuracy as `logged`.
fn eval_finds(args: &[&str], dataset: &str, logged: f64) {
    let out = rewire(args);
    let printed = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "eval failed:\n{printed}");
    let line = printed
        .lines()
        .find(|l| l.starts_with(&format!("{dataset} test: loss")))
        .unwrap_or_else(|| panic!("no result line:\n{printed}"));
    assert!(
        line.contains(&format!("accuracy {:.2}%", 100.0 * logged)),
        "logged {logged}, eval printed {line}"
    );
}

/// `compare` on generated data for one epoch into `dir`, with `extra` flags.
fn quick_compare(
    dir: &Path,
    model: &str,
    methods: &str,
    sparsities: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "compare",
        "--dataset",
        "synthetic",
        "--model",
        model,
        "--methods",
        methods,
        "--sparsities",
        sparsities,
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    rewire(&args)
}

/// A run of `compare` that diverges is reported and the others go on: the table and
/// files hold the runs that finished, and the command fails naming the diverged ones.
#[test]
fn compare_goes_on_past_a_diverged_run() {
    let dir = scratch("cli-compare-diverged");
    // at this learning rate the dense MLP diverges within its first epoch; with 1% of
    // its weights the sparse one does not
    let out = quick_compare(&dir, "mlp:64", "static", "0.99", &["--lr", "10"]);
    let err = text(&out.stderr);
    let printed = text(&out.stdout) + &err;
    assert!(!out.status.success(), "compare succeeded:\n{printed}");
    assert!(
        printed.contains("dense at sparsity 0 diverged"),
        "{printed}"
    );
    assert!(
        err.contains("1 of 2 runs diverged and are not in the table: dense at 0"),
        "{err}"
    );
    let csv = std::fs::read_to_string(dir.join("compare.csv")).expect("compare.csv");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert!(rows[0].starts_with("static,0.99,"), "{csv}");
}

/// Writes `n` 28×28 images and their labels as the IDX files `{prefix}-images-idx3-ubyte`
/// and `{prefix}-labels-idx1-ubyte` in `dir`: label `i % 10`, pixels that depend on it.
fn write_idx_split(dir: &Path, prefix: &str, n: usize) {
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let label = (i % 10) as u8;
        labels.push(label);
        images.extend((0..784).map(|p| ((p * (label as usize + 1) + i * 7) % 256) as u8));
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).expect("write");
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).expect("write");
}

/// A model trained on an IDX dataset keeps its normalisation: `eval` needs only the two
/// test files and finds the test accuracy the run logged.
#[test]
fn eval_of_a_real_dataset_needs_only_its_test_files() {
    let dir = scratch("cli-eval-idx");
    let data = dir.join("data");
    let mnist = data.join("mnist");
    std::fs::create_dir_all(&mnist).expect("mkdir");
    write_idx_split(&mnist, "train", 300);
    write_idx_split(&mnist, "t10k", 100);
    let (log, model) = (dir.join("run.jsonl"), dir.join("run.safetensors"));
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (data_s, log_s, model_s) = (path(&data), path(&log), path(&model));
    let out = rewire(&[
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        &data_s,
        "--model",
        "mlp:16",
        "--method",
        "static",
        "--epochs",
        "1",
        "--no-progress",
        "--log",
        &log_s,
        "--save",
        &model_s,
    ]);
    assert!(out.status.success(), "train failed:\n{}", text(&out.stderr));
    let logged = reports(&log).last().expect("a report")["report"]["test_acc"]
        .as_f64()
        .expect("test_acc");
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        std::fs::remove_file(mnist.join(f)).expect("remove");
    }
    eval_finds(&["eval", &model_s, "--data-dir", &data_s], "mnist", logged);
}

/// `--momentum` is Adam's β1: two Adam runs that differ only in it differ.
#[test]
fn momentum_sets_adams_beta1() {
    let dir = scratch("cli-adam-beta1");
    let runs: Vec<Vec<serde_json::Value>> = ["0.9", "0.5"]
        .iter()
        .map(|m| {
            let log = dir.join(format!("adam-{m}.jsonl"));
            let mut args = train_args(log.to_str().expect("utf-8 path"), "5");
            args.extend(["--optimizer", "adam", "--lr", "0.001", "--momentum", m]);
            let out = rewire(&args);
            assert!(out.status.success(), "train failed:\n{}", text(&out.stderr));
            reports(&log)
        })
        .collect();
    assert_ne!(runs[0], runs[1], "--momentum did not change the Adam run");
}

#[test]
fn compare_writes_its_table_data_and_plots() {
    let dir = scratch("cli-compare");
    let out = quick_compare(
        &dir,
        "mlp:32",
        "static,set",
        "0.5,0.9",
        &["--train-subset", "500"],
    );
    assert!(
        out.status.success(),
        "compare failed:\n{}",
        text(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("compare.csv")).expect("compare.csv");
    // a header and one row each for dense and the two methods at two sparsities
    assert_eq!(csv.lines().count(), 1 + 1 + 2 * 2, "{csv}");
    // each row says what its accuracy was measured on
    assert!(csv
        .lines()
        .next()
        .is_some_and(|h| h.ends_with(",evaluated_on")));
    assert!(csv.lines().skip(1).all(|l| l.ends_with(",test")), "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare.json")).expect("json"))
            .expect("compare.json parses");
    let rows = json.as_array().expect("an array of runs");
    assert_eq!(rows.len(), 5, "{json}");
    for plot in ["accuracy_vs_sparsity.svg", "epoch_time_vs_sparsity.svg"] {
        let svg = std::fs::read_to_string(dir.join(plot)).expect(plot);
        assert!(svg.contains("<svg"), "{plot} is not an SVG");
    }
}

/// What a run has written, or must write, survives: bad arguments fail before `--log` is
/// created (an old log is not emptied) and an unwritable `--save` fails before training;
/// a closed stdout (a pipe into `head`) neither panics nor loses the log and the model;
/// weights that diverge on the last step are an error, not a saved model.
#[test]
fn outputs_survive_bad_arguments_closed_stdout_and_divergence() {
    use std::process::Stdio;
    let dir = scratch("outputs-survive");
    let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_string();
    let (log, model) = (path("run.jsonl"), path("run.safetensors"));
    let quick = [
        "train",
        "--dataset",
        "synthetic",
        "--model",
        "mlp:16",
        "--no-progress",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        quick
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let run = |args: &[String]| rewire(&args.iter().map(String::as_str).collect::<Vec<_>>());

    std::fs::write(&log, "{\"old\":1}\n").unwrap();
    let out = run(&with(&["--sparsity", "1.5", "--log", &log]));
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "{\"old\":1}\n");

    let nowhere = path("missing-folder/m.safetensors");
    let out = run(&with(&["--epochs", "1", "--save", &nowhere]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("missing-folder"));
    assert!(
        !text(&out.stdout).contains("epoch"),
        "trained before refusing the --save path"
    );

    let args = with(&["--epochs", "3", "--log", &log, "--save", &model]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rewire binary runs");
    drop(child.stdout.take()); // the reader goes away at once
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "closed stdout failed the run:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(reports(Path::new(&log)).len(), 3);
    assert!(Path::new(&model).is_file());

    let diverged = path("diverged.safetensors");
    let out = run(&with(&[
        "--lr",
        "1e30",
        "--max-steps",
        "1",
        "--save",
        &diverged,
    ]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("diverged"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&diverged).exists());
}

#[test]
fn logs_record_what_trains_and_init_must_agree_with_the_flags() {
    let dir = scratch("init-and-records");
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (sparse, dense, gmp_log) = (
        path("sparse.safetensors"),
        path("dense.safetensors"),
        path("gmp.jsonl"),
    );
    let quick = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp:16",
            "--epochs",
            "1",
            "--max-steps",
            "30",
            "--no-progress",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        rewire(&args)
    };
    // names in any case, echoed in their canonical form
    let out = quick(&["--method", " RigL", "--sparsity", "0.9", "--save", &sparse]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("method rigl "),
        "{}",
        text(&out.stdout)
    );
    let out = quick(&["--method", "DENSE", "--save", &dense]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // a dense-to-sparse run records its target, not the dense start
    let out = quick(&[
        "--method",
        "GMP",
        "--sparsity",
        "0.8",
        "--delta-t",
        "5",
        "--log",
        &gmp_log,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for r in reports(Path::new(&gmp_log)) {
        assert_eq!(r["method"], "gmp");
        assert_eq!(r["sparsity"], 0.8, "{r}");
    }

    // --init decides the storage: flags that disagree with the file are errors
    let tiny = |extra: &[&'static str], file: &str| {
        let mut args: Vec<String> = ["train", "--dataset", "synthetic", "--model", "mlp:16"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        args.extend(["--init".to_string(), file.to_string()]);
        args
    };
    let cases = [
        (
            tiny(&["--method", "dense"], &sparse),
            "holds a sparse model",
        ),
        (tiny(&["--method", "static"], &dense), "holds a dense model"),
        (
            tiny(&["--method", "static", "--sparsity", "0.5"], &sparse),
            "disagrees with",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_naming(&[(&args, needle)]);
    }
    fails_naming(&[(
        &[
            "compare",
            "--dataset",
            "synthetic",
            "--model",
            "mlp:16",
            "--methods",
            "dense,static",
        ],
        "dense always runs first",
    )]);
    // the activation is part of what a file's weights compute
    let tanh = path("tanh.safetensors");
    let out = quick(&[
        "--method",
        "static",
        "--activation",
        "tanh",
        "--save",
        &tanh,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let args: Vec<String> = tiny(&["--method", "static"], &tanh);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_naming(&[(&args, "trained with activation tanh")]);
    // a dense-to-sparse method prunes a dense file to its target
    let pruned_log = path("pruned.jsonl");
    let out = quick(&[
        "--method",
        "gmp",
        "--sparsity",
        "0.8",
        "--delta-t",
        "5",
        "--init",
        &dense,
        "--log",
        &pruned_log,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last = reports(Path::new(&pruned_log)).pop().unwrap();
    let (live, all) = (
        last["report"]["live_weights"].as_f64().unwrap(),
        last["report"]["dense_weights"].as_f64().unwrap(),
    );
    assert!((live / all - 0.2).abs() < 0.01, "{last}");
    // without --sparsity the file's sparsity is taken and recorded
    let init_log = path("init.jsonl");
    let out = quick(&["--method", "static", "--init", &sparse, "--log", &init_log]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for r in reports(Path::new(&init_log)) {
        assert_eq!(r["sparsity"], 0.9, "{r}");
    }
}
