//! Model files: a trained model's parameters (sparse weights as their pattern and live
//! values, nothing of size out×in for them) and its buffers (batch norm's running
//! statistics) in the [safetensors] format, with string metadata beside them.
//!
//! Layout of a file:
//! - a dense weight `W`: tensor `W`, F32 `[rows, cols]`; a bias or scale: F32 `[len]`;
//! - a sparse weight `W`: tensors `W.values` (F32 `[nnz]`), `W.row_ptr` (U32
//!   `[rows + 1]`) and `W.col_idx` (U32 `[nnz]`), and the metadata entry
//!   `sparse:W` = `"rows,cols"`;
//! - a buffer `B` ([`Model::buffers`]): tensor `buffer:B`, F32 `[len]`;
//! - metadata `format` = [`FORMAT`], plus whatever the caller adds (the CLI stores the
//!   model, dataset and training settings so that `rewire eval` can rebuild it).
//!
//! Files are written to a temporary name and renamed into place, so an interrupted save
//! never leaves a half-written file under the final name. Optimizer state is not saved:
//! a file holds what inference (or fine-tuning from scratch state) needs.
//!
//! ```
//! use std::collections::BTreeMap;
//! use rewire::io::{load_into, save};
//! use rewire::nn::{Mlp, MlpConfig, Model};
//!
//! let model = Mlp::new(MlpConfig { sparsity: 0.9, ..MlpConfig::new(20, &[16], 3) })?;
//! let path = std::env::temp_dir().join(format!("rewire-doc-{}.safetensors", std::process::id()));
//! save(&path, &model, &BTreeMap::from([("note".into(), "example".into())]))?;
//!
//! let mut fresh = Mlp::new(MlpConfig { seed: 7, ..MlpConfig::new(20, &[16], 3) })?; // dense
//! let meta = load_into(&path, &mut fresh)?;
//! assert_eq!(meta["note"], "example");
//! assert_eq!(fresh.live_weights(), model.live_weights()); // sparse again, same pattern
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), rewire::Error>(())
//! ```
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};
use crate::nn::{Model, ParamShape};
use crate::sparse::{aligned_from_slice, aligned_zeros, CsrPattern};

/// The value of the `format` metadata entry of the files this version writes.
pub const FORMAT: &str = "rewire-model-1";

/// A tensor to write: its type, shape and little-endian bytes.
struct Out {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Out {
    fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Out {
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn u32(values: &[u32]) -> Self {
        Out {
            dtype: Dtype::U32,
            shape: vec![values.len()],
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl View for &Out {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `model`'s parameters and buffers to `path` with `metadata` (the key `format`
/// and keys starting `sparse:` are reserved). The file appears under its name only once
/// it is complete.
pub fn save(path: &Path, model: &dyn Model, metadata: &BTreeMap<String, String>) -> Result<()> {
    if let Some(key) = metadata.keys().find(|k| k.starts_with("sparse:")) {
        return Err(Error::arg(
            "metadata",
            format!(
                "the key {key:?} is reserved: keys starting \"sparse:\" describe sparse tensors"
            ),
        ));
    }
    let mut tensors: BTreeMap<String, Out> = BTreeMap::new();
    let mut meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if meta.insert("format".into(), FORMAT.into()).is_some() {
        return Err(Error::arg(
            "metadata",
            "the key \"format\" is reserved for the file format",
        ));
    }
    let mut put = |name: String, t: Out| -> Result<()> {
        match tensors.insert(name.clone(), t) {
            None => Ok(()),
            Some(_) => Err(Error::arg(
                "model",
                format!("two tensors named {name:?}: parameter and buffer names must be unique"),
            )),
        }
    };
    for (_, p) in model.params().iter() {
        match &p.shape {
            ParamShape::Dense { rows, cols } => {
                put(p.name.clone(), Out::f32(vec![*rows, *cols], &p.value))?
            }
            ParamShape::Vector { len } => put(p.name.clone(), Out::f32(vec![*len], &p.value))?,
            ParamShape::Sparse { pattern } => {
                put(
                    format!("{}.values", p.name),
                    Out::f32(vec![p.value.len()], &p.value),
                )?;
                put(format!("{}.row_ptr", p.name), Out::u32(pattern.row_ptr()))?;
                put(format!("{}.col_idx", p.name), Out::u32(pattern.col_idx()))?;
                meta.insert(
                    format!("sparse:{}", p.name),
                    format!("{},{}", pattern.nrows(), pattern.ncols()),
                );
            }
        }
    }
    for (name, values) in model.buffers() {
        put(
            format!("buffer:{name}"),
            Out::f32(vec![values.len()], &values),
        )?;
    }
    let bytes =
        safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| Error::format(path, format!("cannot serialise the model: {e}")))?;
    write_atomically(path, &canonical_header(bytes))
}

/// The file with its JSON header's keys in sorted order: `safetensors` writes the
/// metadata from a `HashMap`, whose order changes from map to map, so the same model
/// would otherwise give files that differ byte for byte. The header keeps its length
/// (the same keys and values, reordered; the padding after it restored), so the tensor
/// data behind it is untouched. Bytes that do not parse as expected are returned as
/// they are.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return bytes;
    };
    // serde_json's map (without its preserve_order feature) is sorted by key
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    let Ok(mut sorted) = serde_json::to_vec(&value) else {
        return bytes;
    };
    if sorted.len() > len {
        return bytes;
    }
    sorted.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&sorted);
    bytes
}

/// Writes `bytes` to a temporary file beside `path`, then renames it to `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::arg("path", format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    tmp.set_file_name(tmp_name);
    let result = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        Error::io(path, e)
    })
}

/// One parameter as a file holds it.
#[derive(Debug)]
enum Stored {
    Dense {
        rows: usize,
        cols: usize,
        values: Vec<f32>,
    },
    Vector(Vec<f32>),
    Sparse {
        pattern: CsrPattern,
        values: Vec<f32>,
    },
}

/// A model file read and checked: its metadata, parameters and buffers.
#[derive(Debug)]
pub struct ModelFile {
    path: PathBuf,
    metadata: BTreeMap<String, String>,
    params: BTreeMap<String, Stored>,
    buffers: BTreeMap<String, Vec<f32>>,
}

impl ModelFile {
    /// Reads `path`: a safetensors file of format [`FORMAT`] whose sparse weights have
    /// valid patterns. Any other content is an [`Error::Format`] naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |detail: String| Error::format(path, detail);
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let mut metadata: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        match metadata.remove("format").as_deref() {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "format {other:?}; this version of rewire reads {FORMAT:?}"
                )))
            }
            None => return Err(bad("no \"format\" metadata: not a rewire model file".into())),
        }
        let f32s = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name:?} is {:?}, expected F32",
                    t.dtype()
                )));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!(
                    "tensor {name:?} holds {} at position {i}: a diverged model",
                    v[i]
                )));
            }
            Ok((t.shape().to_vec(), v))
        };
        let u32s = |name: &str| -> Result<Vec<u32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name:?} is missing")))?;
            if t.dtype() != Dtype::U32 || t.shape().len() != 1 {
                return Err(bad(format!(
                    "tensor {name:?} is {:?} {:?}, expected a U32 vector",
                    t.dtype(),
                    t.shape()
                )));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            Ok(v.collect())
        };
        let mut params = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        let mut sparse_parts = Vec::new();
        let sparse: Vec<(String, String)> = metadata
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("sparse:")
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        for (name, dims) in sparse {
            metadata.remove(&format!("sparse:{name}"));
            let parsed: Option<Vec<usize>> =
                dims.split(',').map(|d| d.trim().parse().ok()).collect();
            let (rows, cols) = match parsed.as_deref() {
                Some(&[r, c]) => (r, c),
                _ => {
                    return Err(bad(format!(
                        "sparse:{name} = {dims:?}, expected \"rows,cols\""
                    )))
                }
            };
            let row_ptr = u32s(&format!("{name}.row_ptr"))?;
            let col_idx = u32s(&format!("{name}.col_idx"))?;
            let (shape, values) = f32s(&format!("{name}.values"))?;
            if shape.len() != 1 || values.len() != col_idx.len() {
                return Err(bad(format!(
                    "{name}.values has shape {shape:?} for {} stored entries",
                    col_idx.len()
                )));
            }
            let pattern = CsrPattern::new(rows, cols, row_ptr, col_idx)
                .map_err(|e| bad(format!("sparse weight {name:?}: {e}")))?;
            for part in ["values", "row_ptr", "col_idx"] {
                sparse_parts.push(format!("{name}.{part}"));
            }
            params.insert(name, Stored::Sparse { pattern, values });
        }
        for name in st.names() {
            if sparse_parts.iter().any(|p| p == name) {
                continue;
            }
            let (shape, values) = f32s(name)?;
            if let Some(b) = name.strip_prefix("buffer:") {
                if shape.len() != 1 {
                    return Err(bad(format!(
                        "buffer {b:?} has shape {shape:?}, expected a vector"
                    )));
                }
                if b.ends_with("running_var") && values.iter().any(|&v| v < 0.0) {
                    return Err(bad(format!("buffer {b:?} holds a negative variance")));
                }
                buffers.insert(b.to_string(), values);
                continue;
            }
            let stored = match shape[..] {
                [len] if len == values.len() => Stored::Vector(values),
                [rows, cols] => Stored::Dense { rows, cols, values },
                _ => {
                    return Err(bad(format!(
                        "tensor {name:?} has shape {shape:?}, expected 1 or 2 dims"
                    )))
                }
            };
            if params.insert(name.to_string(), stored).is_some() {
                return Err(bad(format!("{name:?} is stored both dense and sparse")));
            }
        }
        Ok(ModelFile {
            path: path.to_path_buf(),
            metadata,
            params,
            buffers,
        })
    }

    /// The metadata the file was saved with (without the `format` and `sparse:` entries).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Live (stored) weights of the file's parameter `name`, if it has one.
    pub fn stored_len(&self, name: &str) -> Option<usize> {
        self.params.get(name).map(|s| match s {
            Stored::Dense { values, .. }
            | Stored::Vector(values)
            | Stored::Sparse { values, .. } => values.len(),
        })
    }

    /// Puts the file's parameters and buffers into `model`, which must have the same
    /// parameter names and dimensions (it may differ in sparsity: each weight takes the
    /// file's storage, dense or sparse, and pattern). Gradients are zeroed. Nothing in
    /// `model` changes unless every parameter and buffer fits.
    pub fn apply(&self, model: &mut dyn Model) -> Result<()> {
        let bad = |detail: String| Error::format(&self.path, detail);
        let names: Vec<&str> = model
            .params()
            .iter()
            .map(|(_, p)| p.name.as_str())
            .collect();
        if let Some(extra) = self.params.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(bad(format!(
                "parameter {extra:?} is not in the model (parameters: {})",
                names.join(", ")
            )));
        }
        let mut updates = Vec::new();
        for (id, p) in model.params().iter() {
            let stored = self.params.get(&p.name).ok_or_else(|| {
                bad(format!(
                    "the model's parameter {:?} is not in the file",
                    p.name
                ))
            })?;
            let (rows, cols) = p.shape.dims();
            let (shape, values) = match (stored, &p.shape) {
                (Stored::Vector(v), ParamShape::Vector { len }) if v.len() == *len => {
                    (ParamShape::Vector { len: *len }, v)
                }
                (
                    Stored::Dense {
                        rows: r,
                        cols: c,
                        values,
                    },
                    ParamShape::Dense { .. } | ParamShape::Sparse { .. },
                ) if (*r, *c) == (rows, cols) => (ParamShape::Dense { rows, cols }, values),
                (
                    Stored::Sparse { pattern, values },
                    ParamShape::Dense { .. } | ParamShape::Sparse { .. },
                ) if (pattern.nrows(), pattern.ncols()) == (rows, cols) => {
                    let pattern = Arc::new(CsrPattern::new(
                        rows,
                        cols,
                        pattern.row_ptr().to_vec(),
                        pattern.col_idx().to_vec(),
                    )?);
                    (ParamShape::Sparse { pattern }, values)
                }
                _ => {
                    return Err(bad(format!(
                        "parameter {:?}: the file holds {}, the model needs {rows}×{cols}{}",
                        p.name,
                        describe(stored),
                        if matches!(p.shape, ParamShape::Vector { .. }) {
                            " (a vector)"
                        } else {
                            ""
                        }
                    )))
                }
            };
            updates.push((id, shape, values));
        }
        let wanted = model.buffers();
        for (name, values) in &wanted {
            match self.buffers.get(name) {
                Some(v) if v.len() == values.len() => {}
                Some(v) => {
                    return Err(bad(format!(
                        "buffer {name:?} holds {} values, the model needs {}",
                        v.len(),
                        values.len()
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "the model's buffer {name:?} is not in the file"
                    )))
                }
            }
        }
        if let Some(extra) = self
            .buffers
            .keys()
            .find(|k| !wanted.iter().any(|(n, _)| n == *k))
        {
            return Err(bad(format!("buffer {extra:?} is not in the model")));
        }
        for (id, shape, values) in updates {
            let p = model.params_mut().get_mut(id);
            p.shape = shape;
            p.value = aligned_from_slice(values);
            p.grad = aligned_zeros(values.len());
        }
        for (name, values) in &self.buffers {
            model.set_buffer(name, values)?;
        }
        Ok(())
    }
}

/// What a stored parameter is, for error messages.
fn describe(s: &Stored) -> String {
    match s {
        Stored::Dense { rows, cols, .. } => format!("a dense {rows}×{cols} matrix"),
        Stored::Vector(v) => format!("a vector of {}", v.len()),
        Stored::Sparse { pattern, .. } => {
            format!("a sparse {}×{} matrix", pattern.nrows(), pattern.ncols())
        }
    }
}

/// Reads the model file `path` into `model` ([`ModelFile::apply`]) and returns its
/// metadata. The file's storage replaces the model's (a weight saved sparse comes back
/// sparse with its pattern); the configuration the model was built from (`Mlp::config`,
/// its `sparsity` say) is not rewritten, so read live weights from the parameters.
pub fn load_into(path: &Path, model: &mut dyn Model) -> Result<BTreeMap<String, String>> {
    let file = ModelFile::read(path)?;
    file.apply(model)?;
    Ok(file.metadata)
}
