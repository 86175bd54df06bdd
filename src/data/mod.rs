//! Datasets: IDX files, MNIST / Fashion-MNIST, generated data, and batching.
//!
//! - [`read_idx`] / [`parse_idx`] read the IDX format (raw or gzip), checking every header
//!   field and the exact data length;
//! - [`load`] finds and reads MNIST or Fashion-MNIST (`data/<name>/`, as placed by
//!   `scripts/fetch-data.sh`, or `/usr/share/datasets/fashion-mnist/`), and normalises
//!   both splits with the training set's mean and standard deviation;
//! - [`Dataset::synthetic`] generates learnable clustered data for tests and quick runs;
//! - [`Dataset::epoch_order`] and [`Dataset::fill_batch`] shuffle and batch samples into
//!   the feature-major (`[features × batch]`) layout the kernels use.

mod idx;

pub use idx::{parse_idx, read_idx, IdxArray};

use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::RngExt;
use rayon::prelude::*;

use crate::error::{check_dims, check_len, Error, Result};
use crate::sparse::seed_rng;

/// Number of classes of MNIST and Fashion-MNIST.
const MNIST_CLASSES: usize = 10;

/// Where Debian's `dataset-fashion-mnist` package installs its files.
const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The four IDX files of a dataset directory, each present raw or with `.gz`.
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Training labels file name (without `.gz`).
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Test images file name (without `.gz`).
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Test labels file name (without `.gz`).
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// All four, in the order they are read.
const FILES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// A dataset rewire knows how to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetName {
    /// MNIST handwritten digits (28×28 grey, 10 classes).
    Mnist,
    /// Zalando's Fashion-MNIST (28×28 grey, 10 classes).
    FashionMnist,
}

impl DatasetName {
    /// Parses a dataset name: `mnist`, or `fashion-mnist` / `fashion_mnist` / `fmnist`
    /// (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fmnist" => Ok(DatasetName::FashionMnist),
            _ => Err(Error::arg(
                "dataset",
                format!("unknown dataset {s:?}; expected \"mnist\" or \"fashion-mnist\""),
            )),
        }
    }

    /// The directory name under the data directory: `mnist` or `fashion-mnist`.
    pub fn dir_name(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
        }
    }

    /// Every place [`find_dataset_dir`] looks, in order.
    fn candidates(self, data_dir: &Path) -> Vec<PathBuf> {
        let mut places = vec![data_dir.join(self.dir_name())];
        if self == DatasetName::FashionMnist {
            places.push(PathBuf::from(SYSTEM_FASHION_MNIST));
        }
        places
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetName::Mnist => "MNIST",
            DatasetName::FashionMnist => "Fashion-MNIST",
        })
    }
}

impl std::str::FromStr for DatasetName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// A labelled set of samples held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Number of samples.
    pub n: usize,
    /// Features per sample (784 for 28×28 images).
    pub dim: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// `n × dim` features, row-major (sample-major), already normalised.
    pub images: Vec<f32>,
    /// `n` labels.
    pub labels: Vec<u8>,
}

/// The training and test splits of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Training split.
    pub train: Dataset,
    /// Test split, normalised with the training split's statistics.
    pub test: Dataset,
    /// The normalisation both splits went through (the training split's statistics).
    pub norm: Normalization,
}

/// How raw pixels became features: `x' = (byte / 255 − mean) / std`, one mean and one
/// standard deviation for all pixels (those of the training split). A model trained on
/// data normalised so expects its inputs normalised the same way; model files keep it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// mean pixel value, in `[0, 1]`
    pub mean: f64,
    /// standard deviation of the pixel values, `> 0`
    pub std: f64,
}

impl Normalization {
    /// Checks the two numbers can normalise: both finite, `std > 0`.
    pub fn validate(self) -> Result<Self> {
        if self.mean.is_finite() && self.std.is_finite() && self.std > 0.0 {
            Ok(self)
        } else {
            Err(Error::arg(
                "normalization",
                format!(
                    "needs a finite mean and a finite standard deviation > 0, got mean {} and \
                     std {}",
                    self.mean, self.std
                ),
            ))
        }
    }

    /// The feature of each byte value.
    fn table(self) -> [f32; 256] {
        std::array::from_fn(|v| ((v as f64 / 255.0 - self.mean) / self.std) as f32)
    }
}

/// `dir/name` or `dir/name.gz`, whichever exists (the raw file first).
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// Finds the directory holding `name`'s four IDX files: `data_dir/<dir_name>` first,
/// then, for Fashion-MNIST, `/usr/share/datasets/fashion-mnist`. A directory qualifies
/// when it holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or with `.gz`.
pub fn find_dataset_dir(name: DatasetName, data_dir: &Path) -> Option<PathBuf> {
    find_dir_with(name, data_dir, &FILES)
}

/// The first of `name`'s candidate directories holding every one of `files`.
fn find_dir_with(name: DatasetName, data_dir: &Path, files: &[&str]) -> Option<PathBuf> {
    name.candidates(data_dir)
        .into_iter()
        .find(|dir| files.iter().all(|f| find_file(dir, f).is_some()))
}

/// The error for a dataset found nowhere: every place looked, which of `files` each
/// lacked, and how to fetch the files.
fn not_found(name: DatasetName, data_dir: &Path, files: &[&str]) -> Error {
    let places = name.candidates(data_dir);
    let looked: Vec<String> = places
        .iter()
        .map(|dir| {
            if !dir.is_dir() {
                format!("{} (does not exist)", dir.display())
            } else {
                let missing: Vec<&str> = files
                    .iter()
                    .copied()
                    .filter(|f| find_file(dir, f).is_none())
                    .collect();
                format!("{} (missing {})", dir.display(), missing.join(", "))
            }
        })
        .collect();
    Error::io(
        &places[0],
        format!(
            "{name} dataset not found; looked in: {}; each place needs {} (raw or .gz); \
             run scripts/fetch-data.sh to fetch it",
            looked.join("; "),
            files.join(", ")
        ),
    )
}

/// Checks an image file and its label file agree and returns `(n, height, width)`.
fn check_pair(
    img_path: &Path,
    images: &IdxArray,
    lbl_path: &Path,
    labels: &IdxArray,
) -> Result<(usize, usize, usize)> {
    let &[n, h, w] = images.dims.as_slice() else {
        return Err(Error::format(
            img_path,
            format!(
                "expected a 3-D image array [n, height, width], got dimensions {:?}",
                images.dims
            ),
        ));
    };
    if h == 0 || w == 0 {
        return Err(Error::format(
            img_path,
            format!("images of {h}×{w} pixels are empty"),
        ));
    }
    let &[nl] = labels.dims.as_slice() else {
        return Err(Error::format(
            lbl_path,
            format!(
                "expected a 1-D label array [n], got dimensions {:?}",
                labels.dims
            ),
        ));
    };
    if nl != n {
        return Err(Error::format(
            lbl_path,
            format!(
                "holds {nl} labels but {} holds {n} images",
                img_path.display()
            ),
        ));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= MNIST_CLASSES)
    {
        return Err(Error::format(
            lbl_path,
            format!("label {l} at index {i} is out of range (must be below {MNIST_CLASSES})"),
        ));
    }
    Ok((n, h, w))
}

/// Counts of each byte value in `data`.
fn histogram(data: &[u8]) -> [u64; 256] {
    data.par_chunks(1 << 20)
        .map(|chunk| {
            let mut h = [0u64; 256];
            for &b in chunk {
                h[b as usize] += 1;
            }
            h
        })
        .reduce(
            || [0u64; 256],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// Mean and standard deviation of pixels `byte / 255`, from a byte histogram. A
/// constant (zero-variance) set gets a standard deviation of 1 so normalising is defined.
fn pixel_stats(hist: &[u64; 256]) -> (f64, f64) {
    let count: u64 = hist.iter().sum();
    if count == 0 {
        return (0.0, 1.0);
    }
    let count = count as f64;
    let mean = hist
        .iter()
        .enumerate()
        .map(|(v, &c)| c as f64 * (v as f64 / 255.0))
        .sum::<f64>()
        / count;
    let var = hist
        .iter()
        .enumerate()
        .map(|(v, &c)| {
            let d = v as f64 / 255.0 - mean;
            c as f64 * d * d
        })
        .sum::<f64>()
        / count;
    let std = var.sqrt();
    (mean, if std > 1e-12 { std } else { 1.0 })
}

/// Builds a dataset from raw pixels through a 256-entry lookup table.
fn to_dataset(pixels: &[u8], labels: Vec<u8>, n: usize, dim: usize, lut: &[f32; 256]) -> Dataset {
    let images: Vec<f32> = pixels.par_iter().map(|&b| lut[b as usize]).collect();
    Dataset {
        n,
        dim,
        classes: MNIST_CLASSES,
        images,
        labels,
    }
}

/// Loads MNIST or Fashion-MNIST from `data_dir/<dir_name>` (or, for Fashion-MNIST,
/// `/usr/share/datasets/fashion-mnist`).
///
/// Checks that images are `[n, height, width]`, labels `[n]` with the same `n`, every
/// label below 10, neither split empty and every image 28×28; converts pixels to `[0, 1]`
/// and normalises both splits with the training set's global mean and standard
/// deviation, `x' = (x − mean) / std`. A dataset found nowhere is an [`Error::Io`] that
/// lists every place looked and points to `scripts/fetch-data.sh`; a malformed file is
/// an [`Error::Format`] naming it.
pub fn load(name: DatasetName, data_dir: &Path) -> Result<Splits> {
    let dir = find_dataset_dir(name, data_dir).ok_or_else(|| not_found(name, data_dir, &FILES))?;
    // Decoding the training images dominates; read the two splits side by side.
    let (train, test) = rayon::join(
        || read_split(name, &dir, TRAIN_IMAGES, TRAIN_LABELS, "training"),
        || read_split(name, &dir, TEST_IMAGES, TEST_LABELS, "test"),
    );
    let (train, test) = (train?, test?);
    let (mean, std) = pixel_stats(&histogram(&train.images));
    let norm = Normalization { mean, std };
    let lut = norm.table();
    Ok(Splits {
        train: train.into_dataset(&lut),
        test: test.into_dataset(&lut),
        norm,
    })
}

/// One split as read from its two files: checked, not yet normalised.
struct RawSplit {
    n: usize,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl RawSplit {
    fn into_dataset(self, lut: &[f32; 256]) -> Dataset {
        to_dataset(&self.images, self.labels, self.n, 28 * 28, lut)
    }
}

/// Reads the image and label files of one split of `name` from `dir` (each raw or
/// `.gz`) and checks them: the two agree, the split is not empty, images are 28×28
/// (both datasets are; the CNNs take that shape).
fn read_split(
    name: DatasetName,
    dir: &Path,
    images: &str,
    labels: &str,
    what: &str,
) -> Result<RawSplit> {
    let path = |f: &str| find_file(dir, f).unwrap_or_else(|| dir.join(f));
    let (img_p, lbl_p) = (path(images), path(labels));
    let (img, lbl) = rayon::join(|| read_idx(&img_p), || read_idx(&lbl_p));
    let (img, lbl) = (img?, lbl?);
    let (n, h, w) = check_pair(&img_p, &img, &lbl_p, &lbl)?;
    if n == 0 {
        return Err(Error::format(
            &img_p,
            format!("the {what} set holds no images"),
        ));
    }
    if (h, w) != (28, 28) {
        return Err(Error::format(
            &img_p,
            format!("images are {h}×{w}; {} images are 28×28", name.dir_name()),
        ));
    }
    Ok(RawSplit {
        n,
        images: img.data,
        labels: lbl.data,
    })
}

/// The test split of MNIST or Fashion-MNIST alone, normalised with `norm` (the training
/// split's statistics as [`load`] computed them, kept in a model file): the training
/// files need not be present. The same checks as [`load`], on the test files.
pub fn load_test(name: DatasetName, data_dir: &Path, norm: Normalization) -> Result<Dataset> {
    let norm = norm.validate()?;
    let files = [TEST_IMAGES, TEST_LABELS];
    let dir =
        find_dir_with(name, data_dir, &files).ok_or_else(|| not_found(name, data_dir, &files))?;
    Ok(read_split(name, &dir, TEST_IMAGES, TEST_LABELS, "test")?.into_dataset(&norm.table()))
}

/// SplitMix64 finaliser: spreads a seed's bits so nearby seeds give unrelated streams.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Samples per tile in [`Dataset::fill_batch`]: their rows stay in cache while the tile's
/// columns are written.
const BATCH_TILE: usize = 8;
/// Batches of at least this many values are gathered over rayon threads.
const PAR_BATCH: usize = 1 << 15;

impl Dataset {
    /// Generated, learnable data: `classes` random centres uniform in `[-1, 1]^dim`, each
    /// sample its class centre plus noise (a sum of four uniforms, standard deviation 0.25
    /// per feature), labels balanced as `i % classes`. Deterministic for a seed. With
    /// `dim` of a few dozen or more the classes are well separated, so a small MLP
    /// reaches ≥ 95 % accuracy. `classes` is clamped to `1..=256` (labels are bytes);
    /// `n` should fit in `u32`, the index type of [`Dataset::epoch_order`].
    pub fn synthetic(n: usize, dim: usize, classes: usize, seed: u64) -> Dataset {
        let classes = classes.clamp(1, 256);
        let mut rng = seed_rng(seed);
        let centres: Vec<f32> = (0..classes * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        // Sum of four U(-a, a) has variance 4a²/3; a = 0.25·√3/2 gives a std of 0.25.
        let a = 0.25f32 * 3f32.sqrt() / 2.0;
        let mut images = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            labels.push(c as u8);
            for &centre in &centres[c * dim..(c + 1) * dim] {
                let noise: f32 = (0..4).map(|_| rng.random_range(-a..a)).sum();
                images.push(centre + noise);
            }
        }
        Dataset {
            n,
            dim,
            classes,
            images,
            labels,
        }
    }

    /// Splits into the first `n` samples and the rest (a held-out set drawn from the
    /// same distribution, e.g. from [`Dataset::synthetic`]).
    pub fn split(&self, n: usize) -> (Dataset, Dataset) {
        let n = n.min(self.n);
        // clamped, so that an inconsistent hand-built dataset gives short parts (that
        // `fill_batch` and `train` then reject by length) rather than a panic
        let rest = Dataset {
            n: self.n - n,
            dim: self.dim,
            classes: self.classes,
            images: self.images[(n * self.dim).min(self.images.len())..].to_vec(),
            labels: self.labels[n.min(self.labels.len())..].to_vec(),
        };
        (self.subset(n), rest)
    }

    /// The first `n` samples (all of them if there are fewer), for quick runs.
    pub fn subset(&self, n: usize) -> Dataset {
        let n = n.min(self.n).min(self.labels.len());
        let end = (n * self.dim).min(self.images.len());
        Dataset {
            n,
            dim: self.dim,
            classes: self.classes,
            images: self.images[..end].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// A seeded random permutation of `0..n`: the sample order for `epoch`. The same
    /// `(seed, epoch)` always gives the same order; different epochs give different ones.
    pub fn epoch_order(&self, seed: u64, epoch: usize) -> Vec<u32> {
        let n = u32::try_from(self.n).unwrap_or(u32::MAX);
        let mut order: Vec<u32> = (0..n).collect();
        let mut rng = seed_rng(splitmix64(seed) ^ splitmix64(!(epoch as u64)));
        order.shuffle(&mut rng);
        order
    }

    /// Writes the samples `indices` into a feature-major batch: with `b = indices.len()`,
    /// `x[f * b + j] = images[indices[j] * dim + f]` and `labels[j] = labels[indices[j]]`.
    /// Errors (without writing anything) if `x.len() != dim * b`, `labels.len() != b`,
    /// an index is `≥ n`, or the dataset's own buffers disagree with `n` and `dim`.
    /// Does not allocate.
    pub fn fill_batch(&self, indices: &[u32], x: &mut [f32], labels: &mut [u32]) -> Result<()> {
        let (dim, b) = (self.dim, indices.len());
        check_dims("dataset images", self.n, dim, self.images.len())?;
        check_len("dataset labels", self.n, self.labels.len())?;
        check_dims("batch x", dim, b, x.len())?;
        check_len("batch labels", b, labels.len())?;
        if let Some((j, &i)) = indices
            .iter()
            .enumerate()
            .find(|(_, &i)| i as usize >= self.n)
        {
            return Err(Error::arg(
                "indices",
                format!(
                    "sample index {i} at batch position {j} is out of range for a dataset \
                     of {} samples",
                    self.n
                ),
            ));
        }
        for (j, &i) in indices.iter().enumerate() {
            labels[j] = u32::from(self.labels[i as usize]);
        }
        if b == 0 {
            return Ok(());
        }
        // features f0.. of every sample in `indices`, into the rows `rows` of x
        let gather = |f0: usize, rows: &mut [f32]| {
            let nf = rows.len() / b;
            for (t, tile) in indices.chunks(BATCH_TILE).enumerate() {
                let j0 = t * BATCH_TILE;
                for f in 0..nf {
                    let dst = &mut rows[f * b + j0..f * b + j0 + tile.len()];
                    for (d, &i) in dst.iter_mut().zip(tile) {
                        *d = self.images[i as usize * dim + f0 + f];
                    }
                }
            }
        };
        let threads = rayon::current_num_threads();
        if threads > 1 && dim * b >= PAR_BATCH {
            // the reads wait on memory (random samples): feature bands over threads
            use rayon::prelude::*;
            let band = dim.div_ceil(threads);
            x.par_chunks_mut(band * b)
                .enumerate()
                .for_each(|(k, rows)| gather(k * band, rows));
        } else {
            gather(0, x);
        }
        Ok(())
    }
}
