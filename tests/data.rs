//! The data module on generated files only: IDX round trips (raw and gzip), every kind of
//! corrupt file rejected with a message naming the file and the problem, `load` on a
//! generated dataset directory, batching layout, epoch shuffles and synthetic data. One
//! test reads the real MNIST / Fashion-MNIST under `data/` when they are there (set
//! `REWIRE_REQUIRE_DATA=1` to make their absence a failure).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;
use rewire::data::{
    find_dataset_dir, load, load_test, parse_idx, read_idx, Dataset, DatasetName, IdxArray,
    Normalization,
};
use rewire::Error;

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "rewire-data-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An unsigned-byte IDX file with the given dimensions and data (not checked).
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Gzip-compresses `bytes`.
fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Asserts `res` is an `Err` whose message contains every one of `needles`.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(res: rewire::Result<T>, needles: &[&str]) -> Error {
    let err = match res {
        Ok(v) => panic!("expected an error mentioning {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    err
}

/// Deterministic pixel value of image `i`, pixel `p`, of a split tagged `salt`.
fn pixel(salt: usize, i: usize, p: usize) -> u8 {
    ((i * 31 + p * 7 + salt * 13 + (p * p) % 17) % 256) as u8
}

/// Raw bytes of `n` generated `h × w` images and their labels `i % 10`.
fn gen_split(salt: usize, n: usize, h: usize, w: usize) -> (Vec<u8>, Vec<u8>) {
    let img: Vec<u8> = (0..n)
        .flat_map(|i| (0..h * w).map(move |p| pixel(salt, i, p)))
        .collect();
    let lbl: Vec<u8> = (0..n).map(|i| ((i * 3 + salt) % 10) as u8).collect();
    (img, lbl)
}

/// Writes a four-file dataset directory (`n_train` / `n_test` 28×28 images); the images
/// are gzipped and the labels raw, so both kinds are exercised.
fn write_dataset(dir: &Path, n_train: usize, n_test: usize) -> [(Vec<u8>, Vec<u8>); 2] {
    std::fs::create_dir_all(dir).unwrap();
    let train = gen_split(0, n_train, 28, 28);
    let test = gen_split(1, n_test, 28, 28);
    let dims = |n: usize| [n as u32, 28, 28];
    write(
        &dir.join("train-images-idx3-ubyte.gz"),
        &gz(&idx_bytes(&dims(n_train), &train.0)),
    );
    write(
        &dir.join("train-labels-idx1-ubyte"),
        &idx_bytes(&[n_train as u32], &train.1),
    );
    write(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &gz(&idx_bytes(&dims(n_test), &test.0)),
    );
    write(
        &dir.join("t10k-labels-idx1-ubyte"),
        &idx_bytes(&[n_test as u32], &test.1),
    );
    [train, test]
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

// ---------------------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------------------

#[test]
fn idx_round_trip_raw_and_gz() {
    let tmp = TempDir::new("roundtrip");
    let cases: Vec<(Vec<u32>, Vec<u8>)> = vec![
        (vec![7], (0..7).collect()),
        (
            vec![3, 4, 5],
            (0..60).map(|i| (i * 37 % 256) as u8).collect(),
        ),
        (vec![2, 1, 3, 2], (0..12).collect()),
        (vec![0, 28, 28], vec![]),
    ];
    for (k, (dims, data)) in cases.iter().enumerate() {
        let bytes = idx_bytes(dims, data);
        let want = IdxArray {
            dims: dims.iter().map(|&d| d as usize).collect(),
            data: data.clone(),
        };
        assert_eq!(parse_idx(&bytes, "mem").unwrap(), want);
        // Raw, and gzip under a name without .gz (the magic decides, not the extension).
        let raw = tmp.path().join(format!("a{k}"));
        let gzp = tmp.path().join(format!("b{k}"));
        let gzp2 = tmp.path().join(format!("c{k}.gz"));
        write(&raw, &bytes);
        write(&gzp, &gz(&bytes));
        write(&gzp2, &gz(&bytes));
        assert_eq!(read_idx(&raw).unwrap(), want);
        assert_eq!(read_idx(&gzp).unwrap(), want);
        assert_eq!(read_idx(&gzp2).unwrap(), want);
    }
    // Concatenated gzip members decode as one stream.
    let bytes = idx_bytes(&[6], &[1, 2, 3, 4, 5, 6]);
    let mut two = gz(&bytes[..5]);
    two.extend(gz(&bytes[5..]));
    let p = tmp.path().join("multi.gz");
    write(&p, &two);
    assert_eq!(read_idx(&p).unwrap().data, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn idx_corruptions_are_errors_naming_file_and_problem() {
    let tmp = TempDir::new("corrupt");
    let good = idx_bytes(&[3, 2, 2], &[0; 12]);
    let mut bad_magic = good.clone();
    bad_magic[1] = 0x01;
    let mut f32_type = good.clone();
    f32_type[2] = 0x0D;
    let mut zero_dims = good.clone();
    zero_dims[3] = 0;
    let mut five_dims = good.clone();
    five_dims[3] = 5;
    let huge = idx_bytes(&[u32::MAX; 4], &[0; 3]);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty", vec![], vec!["truncated IDX header", "0 bytes"]),
        ("short", vec![0, 0, 8], vec!["truncated IDX header"]),
        ("magic", bad_magic, vec!["bad IDX magic", "0x01"]),
        (
            "type",
            f32_type,
            vec!["unsupported IDX data type 0x0d", "f32"],
        ),
        ("zerodims", zero_dims, vec!["0 dimensions"]),
        ("fivedims", five_dims, vec!["5 dimensions"]),
        (
            "header",
            good[..10].to_vec(),
            vec!["truncated IDX header", "16-byte header", "10 bytes"],
        ),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            vec!["truncated IDX data", "need 12 bytes", "got 11"],
        ),
        (
            "trailing",
            [good.as_slice(), &[9, 9]].concat(),
            vec!["2 trailing bytes", "need 12 bytes", "got 14"],
        ),
        ("overflow", huge, vec!["multiply to more than"]),
    ];
    for (name, bytes, needles) in &cases {
        // In memory, with the source name in the message.
        let src = format!("mem-{name}");
        let mut want = needles.clone();
        want.push(&src);
        let err = expect_err(parse_idx(bytes, &src), &want);
        assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
        // From disk, raw and gzipped: the message names the file.
        for (suffix, content) in [("", bytes.clone()), (".gz", gz(bytes))] {
            let p = tmp.path().join(format!("{name}{suffix}"));
            write(&p, &content);
            let ps = p.display().to_string();
            let mut want = needles.clone();
            want.push(&ps);
            let err = expect_err(read_idx(&p), &want);
            assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
        }
    }
}

#[test]
fn corrupt_gzip_is_a_format_error() {
    let tmp = TempDir::new("gzip");
    let bytes = idx_bytes(
        &[100, 10],
        &(0..1000).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    );
    let good = gz(&bytes);
    let mut garbled = good.clone();
    for b in &mut garbled[12..good.len() - 8] {
        *b ^= 0xA5;
    }
    let mut bad_crc = good.clone();
    let l = bad_crc.len();
    bad_crc[l - 8] ^= 0xFF;
    let cases = [
        ("garbled", garbled),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("crc", bad_crc),
        ("magic-only", vec![0x1f, 0x8b, 1, 2, 3]),
    ];
    for (name, content) in cases {
        let p = tmp.path().join(format!("{name}.gz"));
        write(&p, &content);
        let ps = p.display().to_string();
        let err = expect_err(read_idx(&p), &[&ps, "corrupt gzip stream"]);
        assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
    }
}

#[test]
fn missing_idx_file_is_an_io_error() {
    let tmp = TempDir::new("missing");
    let p = tmp.path().join("nope-idx1-ubyte");
    let ps = p.display().to_string();
    let err = expect_err(read_idx(&p), &[&ps]);
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// dataset names and directories
// ---------------------------------------------------------------------------------------

#[test]
fn dataset_names_parse() {
    assert_eq!(DatasetName::parse("mnist").unwrap(), DatasetName::Mnist);
    for s in ["fashion-mnist", "fashion_mnist", "fmnist", "Fashion-MNIST"] {
        assert_eq!(DatasetName::parse(s).unwrap(), DatasetName::FashionMnist);
    }
    expect_err(DatasetName::parse("cifar10"), &["cifar10", "mnist"]);
    assert_eq!(DatasetName::Mnist.dir_name(), "mnist");
    assert_eq!(DatasetName::FashionMnist.dir_name(), "fashion-mnist");
}

#[test]
fn find_dataset_dir_needs_all_four_files() {
    let tmp = TempDir::new("find");
    let dir = tmp.path().join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(find_dataset_dir(DatasetName::Mnist, tmp.path()), None);
    let names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
    ];
    for n in names {
        write(&dir.join(n), b"x");
    }
    assert_eq!(find_dataset_dir(DatasetName::Mnist, tmp.path()), None);
    write(&dir.join("t10k-labels-idx1-ubyte.gz"), b"x");
    assert_eq!(
        find_dataset_dir(DatasetName::Mnist, tmp.path()),
        Some(dir.clone())
    );
}

#[test]
fn load_missing_dataset_lists_places_looked() {
    let tmp = TempDir::new("nodata");
    let mnist_dir = tmp.path().join("mnist").display().to_string();
    let err = expect_err(
        load(DatasetName::Mnist, tmp.path()),
        &[
            &mnist_dir,
            "does not exist",
            "scripts/fetch-data.sh",
            "MNIST",
        ],
    );
    assert!(matches!(err, Error::Io { .. }), "{err:?}");

    // A partial directory: the message says which files are missing.
    std::fs::create_dir_all(tmp.path().join("mnist")).unwrap();
    write(&tmp.path().join("mnist/train-images-idx3-ubyte"), b"x");
    expect_err(
        load(DatasetName::Mnist, tmp.path()),
        &[
            &mnist_dir,
            "missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
            "scripts/fetch-data.sh",
        ],
    );

    let fashion_dir = tmp.path().join("fashion-mnist").display().to_string();
    if find_dataset_dir(DatasetName::FashionMnist, tmp.path()).is_none() {
        expect_err(
            load(DatasetName::FashionMnist, tmp.path()),
            &[
                &fashion_dir,
                "/usr/share/datasets/fashion-mnist",
                "scripts/fetch-data.sh",
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------
// load
// ---------------------------------------------------------------------------------------

#[test]
fn load_generated_dataset_normalises_with_train_stats() {
    let tmp = TempDir::new("load");
    let [train, test] = write_dataset(&tmp.path().join("mnist"), 50, 20);
    let s = load(DatasetName::Mnist, tmp.path()).unwrap();
    assert_eq!((s.train.n, s.train.dim, s.train.classes), (50, 784, 10));
    assert_eq!((s.test.n, s.test.dim, s.test.classes), (20, 784, 10));
    assert_eq!(s.train.images.len(), 50 * 784);
    assert_eq!(s.test.images.len(), 20 * 784);
    assert_eq!(s.train.labels, train.1);
    assert_eq!(s.test.labels, test.1);

    let (m, sd) = mean_std(&s.train.images);
    assert!(m.abs() < 1e-4, "train mean {m}");
    assert!((sd - 1.0).abs() < 1e-4, "train std {sd}");

    // Both splits use the training statistics, computed here independently.
    let raw: Vec<f64> = train.0.iter().map(|&b| b as f64 / 255.0).collect();
    let rm = raw.iter().sum::<f64>() / raw.len() as f64;
    let rs = (raw.iter().map(|x| (x - rm).powi(2)).sum::<f64>() / raw.len() as f64).sqrt();
    for (bytes, ds) in [(&train.0, &s.train), (&test.0, &s.test)] {
        for (k, (&b, &x)) in bytes.iter().zip(&ds.images).enumerate() {
            let want = (b as f64 / 255.0 - rm) / rs;
            assert!((x as f64 - want).abs() < 1e-5, "pixel {k}: {x} vs {want}");
        }
    }
}

/// The test split alone, through the normalisation `load` reported: the same dataset,
/// with the training files gone; a normalisation that cannot normalise is refused.
#[test]
fn load_test_needs_only_the_test_files_and_the_normalisation() {
    let tmp = TempDir::new("load-test");
    let dir = tmp.path().join("mnist");
    write_dataset(&dir, 50, 20);
    let s = load(DatasetName::Mnist, tmp.path()).unwrap();
    assert!(s.norm.mean > 0.0 && s.norm.std > 0.0, "{:?}", s.norm);
    std::fs::remove_file(dir.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    expect_err(load(DatasetName::Mnist, tmp.path()), &["train-images"]);
    let test = load_test(DatasetName::Mnist, tmp.path(), s.norm).unwrap();
    assert_eq!(test, s.test);
    for bad in [
        Normalization {
            mean: 0.5,
            std: 0.0,
        },
        Normalization {
            mean: f64::NAN,
            std: 1.0,
        },
    ] {
        expect_err(
            load_test(DatasetName::Mnist, tmp.path(), bad),
            &["normalization"],
        );
    }
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
    expect_err(
        load_test(DatasetName::Mnist, tmp.path(), s.norm),
        &["t10k-labels-idx1-ubyte", "fetch-data.sh"],
    );
}

/// Writes a good dataset, then overwrites one file with `bytes`.
fn dataset_with(tmp: &TempDir, file: &str, bytes: &[u8]) -> PathBuf {
    let dir = tmp.path().join("fashion-mnist");
    write_dataset(&dir, 50, 20);
    let p = dir.join(file);
    write(&p, bytes);
    p
}

#[test]
fn load_rejects_count_mismatch() {
    let tmp = TempDir::new("count");
    let p = dataset_with(&tmp, "train-labels-idx1-ubyte", &idx_bytes(&[49], &[1; 49]));
    let ps = p.display().to_string();
    let err = expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "49 labels", "50 images", "train-images-idx3-ubyte.gz"],
    );
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
}

#[test]
fn load_rejects_bad_label() {
    let tmp = TempDir::new("label");
    let mut labels = vec![3u8; 20];
    labels[7] = 10;
    let p = dataset_with(&tmp, "t10k-labels-idx1-ubyte", &idx_bytes(&[20], &labels));
    let ps = p.display().to_string();
    let err = expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "label 10", "index 7"],
    );
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
}

#[test]
fn load_rejects_bad_shapes() {
    // Images that are not 3-D.
    let tmp = TempDir::new("shape2d");
    let p = dataset_with(
        &tmp,
        "train-images-idx3-ubyte.gz",
        &gz(&idx_bytes(&[50, 784], &vec![0; 50 * 784])),
    );
    let ps = p.display().to_string();
    expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "3-D", "[50, 784]"],
    );

    // Labels that are not 1-D.
    let tmp = TempDir::new("shapelbl");
    let p = dataset_with(
        &tmp,
        "train-labels-idx1-ubyte",
        &idx_bytes(&[50, 1], &[0; 50]),
    );
    let ps = p.display().to_string();
    expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "1-D", "[50, 1]"],
    );

    // Test images of another size than the training images.
    let tmp = TempDir::new("shapesize");
    let p = dataset_with(
        &tmp,
        "t10k-images-idx3-ubyte.gz",
        &gz(&idx_bytes(&[20, 14, 14], &vec![0; 20 * 196])),
    );
    let ps = p.display().to_string();
    expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "14×14", "28×28"],
    );

    // A corrupt file inside the dataset directory is reported by name.
    let tmp = TempDir::new("shapecorrupt");
    let p = dataset_with(&tmp, "t10k-images-idx3-ubyte.gz", &[0x1f, 0x8b, 0, 0, 0]);
    let ps = p.display().to_string();
    expect_err(
        load(DatasetName::FashionMnist, tmp.path()),
        &[&ps, "corrupt gzip"],
    );
}

// ---------------------------------------------------------------------------------------
// batching and shuffling
// ---------------------------------------------------------------------------------------

/// `n` samples of `dim` features with `images[i * dim + f] = 100 i + f`, label `i % 7`.
fn tiny(n: usize, dim: usize) -> Dataset {
    Dataset {
        n,
        dim,
        classes: 7,
        images: (0..n * dim)
            .map(|k| (100 * (k / dim) + k % dim) as f32)
            .collect(),
        labels: (0..n).map(|i| (i % 7) as u8).collect(),
    }
}

#[test]
fn fill_batch_is_feature_major() {
    let ds = tiny(20, 3);
    for indices in [
        vec![3u32, 0, 4, 3],
        vec![],
        (0..20).rev().collect::<Vec<u32>>(),
        vec![19, 1, 2, 5, 8, 13, 0, 0, 7, 11, 6],
    ] {
        let b = indices.len();
        let mut x = vec![f32::NAN; 3 * b];
        let mut labels = vec![u32::MAX; b];
        ds.fill_batch(&indices, &mut x, &mut labels).unwrap();
        for (j, &i) in indices.iter().enumerate() {
            assert_eq!(labels[j], i % 7);
            for f in 0..3 {
                assert_eq!(x[f * b + j], (100 * i as usize + f) as f32, "f {f} j {j}");
            }
        }
    }
}

#[test]
fn fill_batch_rejects_bad_arguments_without_writing() {
    let ds = tiny(5, 3);
    let mut x = vec![-1.0f32; 6];
    let mut labels = vec![99u32; 2];
    expect_err(
        ds.fill_batch(&[0, 5], &mut x, &mut labels),
        &["index 5", "5 samples"],
    );
    assert!(x.iter().all(|&v| v == -1.0) && labels == [99, 99]);
    expect_err(
        ds.fill_batch(&[0, 1], &mut x[..5], &mut labels),
        &["batch x", "expected 6", "got 5"],
    );
    expect_err(
        ds.fill_batch(&[0, 1], &mut x, &mut labels[..1]),
        &["batch labels", "expected 2", "got 1"],
    );
    assert!(x.iter().all(|&v| v == -1.0) && labels == [99, 99]);
    // A hand-built dataset whose buffers disagree with n / dim.
    let mut broken = tiny(5, 3);
    broken.images.pop();
    expect_err(
        broken.fill_batch(&[0, 1], &mut x, &mut labels),
        &["dataset images"],
    );
    let mut broken = tiny(5, 3);
    broken.labels.pop();
    expect_err(
        broken.fill_batch(&[0, 1], &mut x, &mut labels),
        &["dataset labels"],
    );
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let ds = tiny(1000, 1);
    let a = ds.epoch_order(7, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
    assert_eq!(a, ds.epoch_order(7, 0));
    assert_ne!(a, ds.epoch_order(7, 1));
    assert_ne!(a, ds.epoch_order(8, 0));
    assert_ne!(ds.epoch_order(7, 1), ds.epoch_order(7, 2));
    assert_ne!(a, (0..1000).collect::<Vec<u32>>());
    assert!(tiny(0, 1).epoch_order(1, 0).is_empty());
    assert_eq!(tiny(1, 1).epoch_order(1, 3), vec![0]);
}

// ---------------------------------------------------------------------------------------
// synthetic data
// ---------------------------------------------------------------------------------------

#[test]
fn synthetic_is_deterministic_and_balanced() {
    let a = Dataset::synthetic(1000, 32, 10, 42);
    assert_eq!((a.n, a.dim, a.classes), (1000, 32, 10));
    assert_eq!(a.images.len(), 1000 * 32);
    assert_eq!(a, Dataset::synthetic(1000, 32, 10, 42));
    assert_ne!(a.images, Dataset::synthetic(1000, 32, 10, 43).images);
    assert!(a.images.iter().all(|v| v.is_finite()));
    let mut counts = [0usize; 10];
    for (i, &l) in a.labels.iter().enumerate() {
        assert_eq!(l as usize, i % 10);
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == 100));

    let s = a.subset(100);
    assert_eq!((s.n, s.dim, s.classes), (100, 32, 10));
    assert_eq!(s.images, a.images[..3200]);
    assert_eq!(s.labels, a.labels[..100]);
    assert_eq!(a.subset(5000).n, 1000);
}

#[test]
fn synthetic_is_learnable() {
    // A nearest-class-mean classifier fitted on the first 4000 samples must classify
    // the last 1000 almost perfectly: the classes are well separated.
    let (classes, dim) = (10, 64);
    let ds = Dataset::synthetic(5000, dim, classes, 3);
    let mut means = vec![0f64; classes * dim];
    let mut counts = vec![0f64; classes];
    for i in 0..4000 {
        let c = ds.labels[i] as usize;
        counts[c] += 1.0;
        for f in 0..dim {
            means[c * dim + f] += ds.images[i * dim + f] as f64;
        }
    }
    for c in 0..classes {
        for f in 0..dim {
            means[c * dim + f] /= counts[c];
        }
    }
    let correct = (4000..5000)
        .filter(|&i| {
            let x = &ds.images[i * dim..(i + 1) * dim];
            let best = (0..classes)
                .min_by(|&a, &b| {
                    let d = |c: usize| {
                        x.iter()
                            .zip(&means[c * dim..(c + 1) * dim])
                            .map(|(&v, &m)| (v as f64 - m).powi(2))
                            .sum::<f64>()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            best == ds.labels[i] as usize
        })
        .count();
    assert!(correct >= 950, "nearest-mean accuracy {correct}/1000");
}

// ---------------------------------------------------------------------------------------
// real data (optional)
// ---------------------------------------------------------------------------------------

#[test]
fn real_datasets_if_present() {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let require = std::env::var("REWIRE_REQUIRE_DATA").is_ok_and(|v| v == "1");
    for name in [DatasetName::FashionMnist, DatasetName::Mnist] {
        if find_dataset_dir(name, &data_dir).is_none() {
            let why = format!(
                "{name} not found under {} (run scripts/fetch-data.sh)",
                data_dir.display()
            );
            assert!(!require, "REWIRE_REQUIRE_DATA=1 but {why}");
            eprintln!("skipping the real {name} check: {why}");
            continue;
        }
        let t = Instant::now();
        let s = load(name, &data_dir).unwrap();
        eprintln!("loaded {name} in {:.3} s", t.elapsed().as_secs_f64());
        assert_eq!((s.train.n, s.train.dim, s.train.classes), (60000, 784, 10));
        assert_eq!((s.test.n, s.test.dim, s.test.classes), (10000, 784, 10));
        assert_eq!(s.train.images.len(), 60000 * 784);
        assert_eq!(s.test.images.len(), 10000 * 784);
        let (m, sd) = mean_std(&s.train.images);
        assert!(
            m.abs() < 1e-3 && (sd - 1.0).abs() < 1e-3,
            "{name}: mean {m} std {sd}"
        );
        for ds in [&s.train, &s.test] {
            let mut counts = [0usize; 10];
            for &l in &ds.labels {
                counts[l as usize] += 1;
            }
            // Every class is well represented in both splits.
            assert!(counts.iter().all(|&c| c * 20 > ds.n), "{name}: {counts:?}");
        }
    }
}
