//! Model files: a trained sparse MLP and a CNN with batch norm survive a save and a load
//! bit for bit (a dense model of the same shape takes the file's sparse storage), and
//! broken, foreign or mismatched files are errors that name the file and leave the model
//! untouched.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rewire::autograd::Tape;
use rewire::cpu::Par;
use rewire::data::Dataset;
use rewire::dst::{MethodKind, RewireConfig};
use rewire::io::{load_into, save, ModelFile, FORMAT};
use rewire::nn::{Cnn, CnnConfig, CnnLayer, Mlp, MlpConfig, Model};
use rewire::optim::OptimizerConfig;
use rewire::sparse::seed_rng;
use rewire::train::{train, Schedule, TrainConfig};
use rewire::Error;
use safetensors::tensor::{Dtype, TensorView};

/// A fresh folder under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewire-io-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data() -> (Dataset, Dataset) {
    Dataset::synthetic(1200, 64, 10, 4).split(1000)
}

fn cfg(rewire: Option<RewireConfig>) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 50,
        lr: 0.05,
        schedule: Schedule::Constant,
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        seed: 1,
        max_steps: None,
        progress: false,
        par: Par::current(),
        rewire,
    }
}

fn mlp(sparsity: f64, seed: u64, hidden: &[usize]) -> Mlp {
    Mlp::new(MlpConfig {
        sparsity,
        seed,
        ..MlpConfig::new(64, hidden, 10)
    })
    .unwrap()
}

fn cnn(sparsity: f64, seed: u64) -> Cnn {
    Cnn::new(CnnConfig {
        sparsity,
        batch_norm: true,
        seed,
        ..CnnConfig::new(
            [1, 8, 8],
            vec![
                CnnLayer::Conv {
                    out: 6,
                    k: 3,
                    stride: 1,
                    pad: 1,
                },
                CnnLayer::MaxPool { k: 2, stride: 2 },
                CnnLayer::Linear { out: 16 },
            ],
            10,
        )
    })
    .unwrap()
}

/// Evaluation-mode logits of the first 40 test samples.
fn logits(m: &dyn Model, data: &Dataset) -> Vec<f32> {
    let idx: Vec<u32> = (0..40).collect();
    let (mut x, mut labels) = (vec![0.0; data.dim * 40], vec![0u32; 40]);
    data.fill_batch(&idx, &mut x, &mut labels).unwrap();
    let mut tape = Tape::new(Par::Seq);
    let xv = tape.input(&x, data.dim, 40, false).unwrap();
    let out = m.forward(&mut tape, xv, false, &mut seed_rng(0)).unwrap();
    tape.value(out).to_vec()
}

/// A parameter's name, pattern (`row_ptr`, `col_idx`) if sparse, and values.
type Snapshot = (String, Option<(Vec<u32>, Vec<u32>)>, Vec<f32>);

/// Every parameter's name, storage and values.
fn snapshot(m: &dyn Model) -> Vec<Snapshot> {
    m.params()
        .iter()
        .map(|(_, p)| {
            let pattern = p
                .pattern()
                .map(|q| (q.row_ptr().to_vec(), q.col_idx().to_vec()));
            (p.name.clone(), pattern, p.value.to_vec())
        })
        .collect()
}

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([("note".to_string(), "test".to_string())])
}

#[test]
fn a_rewired_sparse_mlp_round_trips_into_a_dense_one() {
    let (tr, te) = data();
    let mut m = mlp(0.9, 1, &[48, 32]);
    let mut rc = RewireConfig::defaults(MethodKind::RigL);
    rc.delta_t = 5;
    train(&mut m, &tr, &te, &cfg(Some(rc)), |_| Ok(())).unwrap();
    let dir = scratch("mlp");
    let path = dir.join("m.safetensors");
    save(&path, &m, &meta()).unwrap();
    // nothing but the file is left in the folder (the temporary name was renamed)
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.safetensors")]);

    let mut fresh = mlp(0.0, 9, &[48, 32]); // dense, other values
    assert_ne!(logits(&fresh, &te), logits(&m, &te));
    let got = load_into(&path, &mut fresh).unwrap();
    assert_eq!(got, meta());
    assert_eq!(snapshot(&fresh), snapshot(&m));
    assert_eq!(logits(&fresh, &te), logits(&m, &te));
    assert_eq!(fresh.live_weights(), m.live_weights());
    // the file is far smaller than the dense weights would be
    let bytes = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(bytes < 4 * m.dense_weights() / 3, "{bytes} bytes");
    std::fs::remove_dir_all(&dir).ok();
}

/// The same model and metadata give the same file, byte for byte (the metadata's order
/// in the header does not follow a hash map's), and it loads.
#[test]
fn saving_is_byte_reproducible() {
    let m = mlp(0.8, 4, &[24, 16]);
    let meta: BTreeMap<String, String> = (0..16)
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .collect();
    let dir = scratch("reproducible");
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let path = dir.join(format!("m{i}.safetensors"));
            save(&path, &m, &meta).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert!(files.windows(2).all(|w| w[0] == w[1]), "the files differ");
    let mut fresh = mlp(0.0, 5, &[24, 16]);
    assert_eq!(
        load_into(&dir.join("m0.safetensors"), &mut fresh).unwrap(),
        meta
    );
    assert_eq!(snapshot(&fresh), snapshot(&m));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_dense_file_makes_a_sparse_model_dense() {
    let (_, te) = data();
    let dense = mlp(0.0, 2, &[32]);
    let dir = scratch("dense");
    let path = dir.join("d.safetensors");
    save(&path, &dense, &BTreeMap::new()).unwrap();
    let mut sparse = mlp(0.95, 3, &[32]);
    load_into(&path, &mut sparse).unwrap();
    assert!(sparse.params().iter().all(|(_, p)| p.pattern().is_none()));
    assert_eq!(logits(&sparse, &te), logits(&dense, &te));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn batch_norm_running_statistics_are_saved() {
    let (tr, te) = data();
    let mut m = cnn(0.8, 1);
    train(&mut m, &tr, &te, &cfg(None), |_| Ok(())).unwrap();
    let stats = m.buffers();
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert!(stats[0].1.iter().any(|&v| v != 0.0), "trained running mean");
    let dir = scratch("cnn");
    let path = dir.join("c.safetensors");
    save(&path, &m, &meta()).unwrap();
    let mut fresh = cnn(0.5, 7);
    load_into(&path, &mut fresh).unwrap();
    assert_eq!(fresh.buffers(), stats);
    assert_eq!(snapshot(&fresh), snapshot(&m));
    assert_eq!(logits(&fresh, &te), logits(&m, &te));
    std::fs::remove_dir_all(&dir).ok();
}

/// Asserts `result` is a format error naming `path` whose message contains `needle`.
fn assert_format_error<T: std::fmt::Debug>(
    result: rewire::Result<T>,
    path: &std::path::Path,
    needle: &str,
) {
    match result {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
        other => panic!("expected a format error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn broken_and_foreign_files_are_errors_naming_the_file() {
    let m = mlp(0.9, 1, &[16]);
    let dir = scratch("bad");
    let good = dir.join("good.safetensors");
    save(&good, &m, &meta()).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    assert_format_error(
        ModelFile::read(&truncated),
        &truncated,
        "not a safetensors file",
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    assert_format_error(
        ModelFile::read(&garbage),
        &garbage,
        "not a safetensors file",
    );

    let missing = dir.join("missing.safetensors");
    assert!(matches!(ModelFile::read(&missing), Err(Error::Io { .. })));

    // a valid safetensors file that rewire did not write
    let foreign = dir.join("foreign.safetensors");
    let data = [0u8; 16];
    let t = TensorView::new(Dtype::F32, vec![4], &data).unwrap();
    safetensors::tensor::serialize_to_file([("w", t)], None, &foreign).unwrap();
    assert_format_error(
        ModelFile::read(&foreign),
        &foreign,
        "not a rewire model file",
    );

    // rewire's layout with a broken pattern: a column index out of range
    let broken = dir.join("broken.safetensors");
    let row_ptr: Vec<u8> = [0u32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let col_idx: Vec<u8> = [1u32, 0, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let values = [0u8; 12];
    let tensors = [
        (
            "w.row_ptr",
            TensorView::new(Dtype::U32, vec![3], &row_ptr).unwrap(),
        ),
        (
            "w.col_idx",
            TensorView::new(Dtype::U32, vec![3], &col_idx).unwrap(),
        ),
        (
            "w.values",
            TensorView::new(Dtype::F32, vec![3], &values).unwrap(),
        ),
    ];
    let info = std::collections::HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("sparse:w".to_string(), "2,4".to_string()),
    ]);
    safetensors::tensor::serialize_to_file(tensors, Some(info), &broken).unwrap();
    assert_format_error(ModelFile::read(&broken), &broken, "sparse weight \"w\"");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_file_of_another_shape_leaves_the_model_untouched() {
    let small = mlp(0.9, 1, &[16]);
    let dir = scratch("shape");
    let path = dir.join("s.safetensors");
    save(&path, &small, &meta()).unwrap();
    let mut wider = mlp(0.9, 2, &[24]);
    let before = snapshot(&wider);
    assert_format_error(load_into(&path, &mut wider), &path, "fc1.weight");
    assert_eq!(snapshot(&wider), before);
    // a model with another layer: fc2 is 16×16 there, 10×16 in the file
    let mut deeper = mlp(0.9, 2, &[16, 16]);
    let before = snapshot(&deeper);
    assert_format_error(load_into(&path, &mut deeper), &path, "fc2.weight");
    assert_eq!(snapshot(&deeper), before);
    // a CNN's file into an MLP
    let c = cnn(0.5, 1);
    let cpath = dir.join("c.safetensors");
    save(&cpath, &c, &meta()).unwrap();
    let mut other = mlp(0.9, 2, &[16]);
    let before = snapshot(&other);
    assert_format_error(load_into(&cpath, &mut other), &cpath, "is not in the model");
    assert_eq!(snapshot(&other), before);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn saving_reports_bad_paths_and_reserved_metadata() {
    let m = mlp(0.9, 1, &[16]);
    let dir = scratch("paths");
    let nowhere = dir.join("no-such-folder").join("m.safetensors");
    assert!(matches!(save(&nowhere, &m, &meta()), Err(Error::Io { .. })));
    let reserved = BTreeMap::from([("format".to_string(), "mine".to_string())]);
    assert!(matches!(
        save(&dir.join("r.safetensors"), &m, &reserved),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing half-written"
    );
    std::fs::remove_dir_all(&dir).ok();
}
