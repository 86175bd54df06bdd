//! Convolutional networks: convolutions (a weight `[out × in·kh·kw]`, dense through
//! im2col and gemm, sparse applied straight to the image batch by the direct sparse
//! kernels; the same rewiring as a linear layer), max / average
//! pooling, optional batch normalisation after each convolution (kept dense, as the DST
//! papers do), then linear layers. Images are feature-major `[C][H][W][B]`.
//!
//! ```
//! use rewire::nn::{CnnConfig, Cnn, Model};
//!
//! let mut config = CnnConfig::lenet5([1, 28, 28], 10);
//! config.sparsity = 0.95;
//! let model = Cnn::new(config)?;
//! assert!(model.live_weights() * 10 < model.dense_weights());
//! # Ok::<(), rewire::Error>(())
//! ```

use std::sync::Mutex;

use crate::autograd::{Act, Conv2dGeom, Pool2dGeom, PoolKind, Tape, Var};
use crate::error::{Error, Result};
use crate::nn::distribution::{layer_densities, layer_nnz, Distribution, LayerShape};
use crate::nn::model::{check_weights_fit, new_vector, new_weight, Model, WeightLayer};
use crate::nn::{Activation, ParamId, ParamStore};
use crate::sparse::{seed_rng, SeedRng};

/// One layer of a CNN body; the classifier (a linear layer to the classes) follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CnnLayer {
    /// `out` channels of `k × k` kernels, then (batch norm and) the activation
    Conv {
        /// output channels
        out: usize,
        /// kernel side
        k: usize,
        /// stride
        stride: usize,
        /// zero padding
        pad: usize,
    },
    /// max pooling over `k × k` windows
    MaxPool {
        /// window side
        k: usize,
        /// stride
        stride: usize,
    },
    /// average pooling over `k × k` windows
    AvgPool {
        /// window side
        k: usize,
        /// stride
        stride: usize,
    },
    /// a hidden linear layer (flattening the image first), then the activation and dropout
    Linear {
        /// outputs
        out: usize,
    },
}

/// What to build.
#[derive(Clone, Debug)]
pub struct CnnConfig {
    /// input image `[channels, height, width]`
    pub input: [usize; 3],
    /// the body, input to output
    pub layers: Vec<CnnLayer>,
    /// output classes (the classifier layer)
    pub classes: usize,
    /// nonlinearity after every convolution and hidden linear layer
    pub activation: Activation,
    /// batch normalisation after every convolution (which then has no bias)
    pub batch_norm: bool,
    /// dropout probability after every hidden linear layer
    pub dropout: f32,
    /// fraction of all weights that are not stored (0: dense model)
    pub sparsity: f64,
    /// how the sparsity is spread over the weight layers (ERK counts kernel dims)
    pub distribution: Distribution,
    /// seed of the patterns and the initial values
    pub seed: u64,
    /// store every weight layer sparse, dense ones too (for dense-to-sparse methods)
    pub sparse_storage: bool,
}

impl CnnConfig {
    /// A dense model with ReLU, no batch norm, no dropout.
    pub fn new(input: [usize; 3], layers: Vec<CnnLayer>, classes: usize) -> Self {
        CnnConfig {
            input,
            layers,
            classes,
            activation: Activation::Relu,
            batch_norm: false,
            dropout: 0.0,
            sparsity: 0.0,
            distribution: Distribution::Erk,
            seed: 0,
            sparse_storage: false,
        }
    }

    /// LeNet-5, the Caffe variant: conv 20@5×5, max-pool 2, conv 50@5×5, max-pool 2,
    /// fc 500, fc `classes` (ReLU after each hidden layer, as sparse momentum's code).
    pub fn lenet5(input: [usize; 3], classes: usize) -> Self {
        use CnnLayer::*;
        Self::new(
            input,
            vec![
                Conv {
                    out: 20,
                    k: 5,
                    stride: 1,
                    pad: 0,
                },
                MaxPool { k: 2, stride: 2 },
                Conv {
                    out: 50,
                    k: 5,
                    stride: 1,
                    pad: 0,
                },
                MaxPool { k: 2, stride: 2 },
                Linear { out: 500 },
            ],
            classes,
        )
    }

    /// A small VGG-style network: two 3×3 convolutions of 32 channels, max-pool, two of
    /// 64, max-pool, fc 256, fc `classes`; batch norm after every convolution.
    pub fn vgg_small(input: [usize; 3], classes: usize) -> Self {
        use CnnLayer::*;
        let conv = |out| Conv {
            out,
            k: 3,
            stride: 1,
            pad: 1,
        };
        let mut c = Self::new(
            input,
            vec![
                conv(32),
                conv(32),
                MaxPool { k: 2, stride: 2 },
                conv(64),
                conv(64),
                MaxPool { k: 2, stride: 2 },
                Linear { out: 256 },
            ],
            classes,
        );
        c.batch_norm = true;
        c
    }

    /// `lenet5` or `vgg-small` for images of shape `input`.
    pub fn named(name: &str, input: [usize; 3], classes: usize) -> Result<Self> {
        match name {
            "lenet5" | "lenet-5" => Ok(Self::lenet5(input, classes)),
            "vgg-small" | "vgg_small" => Ok(Self::vgg_small(input, classes)),
            _ => Err(Error::arg(
                "model",
                format!("unknown CNN {name:?} (lenet5, vgg-small)"),
            )),
        }
    }

    /// The stages with their geometry, checking that every layer fits its input.
    fn plan(&self) -> Result<Vec<Planned>> {
        let [c0, h0, w0] = self.input;
        if c0 == 0 || h0 == 0 || w0 == 0 || self.classes == 0 {
            return Err(Error::arg(
                "model",
                format!(
                    "input {:?} and classes {} must be positive",
                    self.input, self.classes
                ),
            ));
        }
        // sizes as products that must not overflow
        let size = |dims: [usize; 3]| -> Result<usize> {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .filter(|&v| v <= u32::MAX as usize)
                .ok_or_else(|| {
                    Error::arg(
                        "model",
                        format!("a feature map of {dims:?} is beyond the kernels' u32 indices"),
                    )
                })
        };
        // (channels, h, w) while images, None once flattened
        let mut image = Some((c0, h0, w0));
        let mut features = size([c0, h0, w0])?;
        let mut out = Vec::new();
        let body = self.layers.iter().copied();
        for layer in body.chain(std::iter::once(CnnLayer::Linear { out: self.classes })) {
            match layer {
                CnnLayer::Conv {
                    out: o,
                    k,
                    stride,
                    pad,
                } => {
                    let (c, h, w) = image.ok_or_else(|| {
                        Error::arg("model", "a convolution cannot follow a linear layer")
                    })?;
                    let geom = Conv2dGeom {
                        channels: c,
                        h,
                        w,
                        kh: k,
                        kw: k,
                        stride,
                        pad,
                    };
                    geom.validate()?;
                    if o == 0 {
                        return Err(Error::arg("model", "a convolution needs output channels"));
                    }
                    image = Some((o, geom.out_h(), geom.out_w()));
                    features = size([o, geom.out_h(), geom.out_w()])?;
                    out.push(Planned::Conv { geom, out: o });
                }
                CnnLayer::MaxPool { k, stride } | CnnLayer::AvgPool { k, stride } => {
                    let (c, h, w) = image.ok_or_else(|| {
                        Error::arg("model", "pooling cannot follow a linear layer")
                    })?;
                    let geom = Pool2dGeom {
                        channels: c,
                        h,
                        w,
                        k,
                        stride,
                    };
                    geom.validate()?;
                    image = Some((c, geom.out_h(), geom.out_w()));
                    features = size([c, geom.out_h(), geom.out_w()])?;
                    let kind = if matches!(layer, CnnLayer::MaxPool { .. }) {
                        PoolKind::Max
                    } else {
                        PoolKind::Avg
                    };
                    out.push(Planned::Pool { geom, kind });
                }
                CnnLayer::Linear { out: o } => {
                    if o == 0 {
                        return Err(Error::arg("model", "a linear layer needs outputs"));
                    }
                    image = None;
                    out.push(Planned::Linear {
                        fan_in: features,
                        out: o,
                    });
                    features = o;
                }
            }
        }
        Ok(out)
    }

    /// Shapes of the weight layers, input to output (kernel dims included).
    pub fn layer_shapes(&self) -> Result<Vec<LayerShape>> {
        Ok(self
            .plan()?
            .iter()
            .filter_map(|p| match *p {
                Planned::Conv { geom, out } => {
                    Some(LayerShape::conv(out, geom.channels, geom.kh, geom.kw))
                }
                Planned::Linear { fan_in, out } => Some(LayerShape::linear(out, fan_in)),
                Planned::Pool { .. } => None,
            })
            .collect())
    }
}

#[derive(Clone, Copy, Debug)]
enum Planned {
    Conv { geom: Conv2dGeom, out: usize },
    Pool { geom: Pool2dGeom, kind: PoolKind },
    Linear { fan_in: usize, out: usize },
}

/// Batch normalisation of a convolution's channels, with running statistics for
/// evaluation (updated by training forward passes, momentum 0.1, unbiased variance).
pub(crate) struct Norm {
    pub(crate) gamma: ParamId,
    pub(crate) beta: ParamId,
    /// running (mean, variance)
    pub(crate) running: Mutex<(Vec<f32>, Vec<f32>)>,
}

pub(crate) const BN_EPS: f32 = 1e-5;
pub(crate) const BN_MOMENTUM: f32 = 0.1;

/// The factor `n/(n − 1)` that turns a batch's biased variance over `n` values into the
/// unbiased one the running variance averages (1 for `n ≤ 1`).
pub(crate) fn unbias_factor(n: usize) -> f32 {
    let n = n as f32;
    if n > 1.0 {
        n / (n - 1.0)
    } else {
        1.0
    }
}

/// One stage of the network, input to output (the GPU trainer reads them too).
pub(crate) enum Stage {
    Conv {
        geom: Conv2dGeom,
        weight: ParamId,
        out: usize,
        /// the bias, where there is no batch norm
        bias: Option<ParamId>,
        norm: Option<Norm>,
    },
    Pool {
        geom: Pool2dGeom,
        kind: PoolKind,
    },
    Linear {
        weight: ParamId,
        bias: ParamId,
        fan_in: usize,
        out: usize,
        last: bool,
    },
}

/// A convolutional network built from a [`CnnConfig`].
pub struct Cnn {
    /// all weights, biases and batch-norm scales
    pub params: ParamStore,
    stages: Vec<Stage>,
    /// what it was built from
    pub config: CnnConfig,
}

impl Cnn {
    /// Builds the model: each weight layer's density from the distribution (ERK counting
    /// kernel dims), a random pattern with exactly that many live weights (dense where
    /// the density is 1), values scaled for the live fan-in.
    pub fn new(config: CnnConfig) -> Result<Self> {
        config.activation.validate()?;
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::arg(
                "dropout",
                format!("must lie in [0, 1), got {}", config.dropout),
            ));
        }
        let plan = config.plan()?;
        let shapes = config.layer_shapes()?;
        let densities = layer_densities(config.distribution, &shapes, config.sparsity)?;
        let nnz = layer_nnz(&densities, &shapes);
        check_weights_fit(
            shapes.iter().map(|s| (s.fan_out, s.fan_in * s.kh * s.kw)),
            &nnz,
            config.sparse_storage,
        )?;
        let mut rng = seed_rng(config.seed);
        let mut params = ParamStore::new();
        let mut stages = Vec::new();
        let mut nnz = nnz.into_iter();
        let (mut convs, mut fcs) = (0, 0);
        let gain = config.activation.gain();
        for p in plan {
            match p {
                Planned::Conv { geom, out } => {
                    convs += 1;
                    let live = nnz.next().expect("one count per weight layer");
                    let name = format!("conv{convs}.weight");
                    let w = new_weight(
                        name,
                        out,
                        geom.patch_len(),
                        live,
                        config.sparse_storage,
                        gain,
                        &mut rng,
                    )?;
                    let weight = params.add(w);
                    let (bias, norm) = if config.batch_norm {
                        let gamma = params.add(new_vector(format!("bn{convs}.weight"), out, 1.0)?);
                        let beta = params.add(new_vector(format!("bn{convs}.bias"), out, 0.0)?);
                        let running = Mutex::new((vec![0.0; out], vec![1.0; out]));
                        (
                            None,
                            Some(Norm {
                                gamma,
                                beta,
                                running,
                            }),
                        )
                    } else {
                        let b = params.add(new_vector(format!("conv{convs}.bias"), out, 0.0)?);
                        (Some(b), None)
                    };
                    stages.push(Stage::Conv {
                        geom,
                        weight,
                        out,
                        bias,
                        norm,
                    });
                }
                Planned::Pool { geom, kind } => stages.push(Stage::Pool { geom, kind }),
                Planned::Linear { fan_in, out } => {
                    fcs += 1;
                    let live = nnz.next().expect("one count per weight layer");
                    let last = nnz.len() == 0;
                    let g = if last { 1.0 } else { gain };
                    let name = format!("fc{fcs}.weight");
                    let w =
                        new_weight(name, out, fan_in, live, config.sparse_storage, g, &mut rng)?;
                    let weight = params.add(w);
                    let bias = params.add(new_vector(format!("fc{fcs}.bias"), out, 0.0)?);
                    stages.push(Stage::Linear {
                        weight,
                        bias,
                        fan_in,
                        out,
                        last,
                    });
                }
            }
        }
        Ok(Cnn {
            params,
            stages,
            config,
        })
    }

    /// The stages, input to output.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Each batch norm with its name (`bnK`, from its scale parameter `bnK.weight`).
    fn norms(&self) -> Vec<(String, &Norm)> {
        self.stages
            .iter()
            .filter_map(|s| match s {
                Stage::Conv {
                    norm: Some(norm), ..
                } => {
                    let name = &self.params.get(norm.gamma).name;
                    Some((
                        name.strip_suffix(".weight").unwrap_or(name).to_string(),
                        norm,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn activate(&self, tape: &mut Tape, h: Var) -> Result<Var> {
        match self.config.activation {
            Activation::Relu => tape.relu(h),
            Activation::LeakyRelu(a) => tape.leaky_relu(h, a),
            Activation::Tanh => tape.tanh(h),
            Activation::Sigmoid => tape.sigmoid(h),
        }
    }

    /// Batch norm of the rows of `z`: batch statistics (and a running-average update)
    /// when training, the running statistics otherwise.
    ///
    /// The running statistics' lock is never held while the (parallel) normalisation
    /// runs: a thread waiting inside it may run another forward pass of this model.
    fn normalise(&self, tape: &mut Tape, z: Var, norm: &Norm, train: bool) -> Result<Var> {
        if !train {
            let (mean, var) = norm
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return tape.batch_norm(
                &self.params,
                z,
                norm.gamma,
                norm.beta,
                BN_EPS,
                Some((&mean, &var)),
            );
        }
        let y = tape.batch_norm(&self.params, z, norm.gamma, norm.beta, BN_EPS, None)?;
        let unbias = unbias_factor(tape.dims(z).1);
        let (mean, var) = tape.batch_norm_stats(y).expect("a batch-norm node");
        let mut running = norm.running.lock().unwrap_or_else(|e| e.into_inner());
        let (rm, rv) = &mut *running;
        for (r, &m) in rm.iter_mut().zip(mean) {
            *r += BN_MOMENTUM * (m - *r);
        }
        for (r, &v) in rv.iter_mut().zip(var) {
            *r += BN_MOMENTUM * (v * unbias - *r);
        }
        Ok(y)
    }
}

impl Model for Cnn {
    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn weight_layers(&self) -> Vec<WeightLayer> {
        self.stages
            .iter()
            .filter_map(|s| match *s {
                Stage::Conv {
                    geom, weight, out, ..
                } => Some(WeightLayer {
                    weight,
                    shape: LayerShape::conv(out, geom.channels, geom.kh, geom.kw),
                    positions: geom.out_h() * geom.out_w(),
                }),
                Stage::Linear {
                    weight,
                    fan_in,
                    out,
                    ..
                } => Some(WeightLayer {
                    weight,
                    shape: LayerShape::linear(out, fan_in),
                    positions: 1,
                }),
                Stage::Pool { .. } => None,
            })
            .collect()
    }

    fn buffers(&self) -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        for (name, norm) in self.norms() {
            let running = norm.running.lock().unwrap_or_else(|e| e.into_inner());
            out.push((format!("{name}.running_mean"), running.0.clone()));
            out.push((format!("{name}.running_var"), running.1.clone()));
        }
        out
    }

    fn set_buffer(&mut self, name: &str, values: &[f32]) -> Result<()> {
        for (prefix, norm) in self.norms() {
            let Some(which) = name
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.strip_prefix('.'))
            else {
                continue;
            };
            let mut running = norm.running.lock().unwrap_or_else(|e| e.into_inner());
            let target = match which {
                "running_mean" => &mut running.0,
                "running_var" => &mut running.1,
                _ => break,
            };
            crate::error::check_len("batch-norm running statistics", target.len(), values.len())?;
            target.copy_from_slice(values);
            return Ok(());
        }
        Err(Error::arg(
            "buffer",
            format!("the model has no buffer named {name:?}"),
        ))
    }

    fn input_dim(&self) -> usize {
        self.config.input.iter().product()
    }

    fn distribution(&self) -> Distribution {
        self.config.distribution
    }

    fn forward_traced(
        &self,
        tape: &mut Tape,
        x: Var,
        train: bool,
        rng: &mut SeedRng,
        mut trace: Option<&mut Vec<(Var, Var)>>,
    ) -> Result<Var> {
        if let Some(t) = trace.as_deref_mut() {
            t.clear();
        }
        let mut h = x;
        for stage in &self.stages {
            match stage {
                Stage::Conv {
                    geom,
                    weight,
                    bias,
                    norm,
                    ..
                } => {
                    let act = self.config.activation.act();
                    // A sparse weight is applied straight to the image batch, except at
                    // a step that keeps a trace: RigL's grow step reads the im2col
                    // matrix (the layer's input X of dW = dZ·Xᵀ).
                    let sparse = self.params.get(*weight).pattern().is_some();
                    if sparse && trace.is_none() {
                        let z = tape.conv2d(&self.params, h, *weight, *geom)?;
                        h = match (bias, norm) {
                            (Some(b), _) => tape.bias_act(&self.params, z, *b, act)?,
                            (None, Some(norm)) => {
                                let y = self.normalise(tape, z, norm, train)?;
                                self.activate(tape, y)?
                            }
                            (None, None) => unreachable!("a convolution has a bias or a norm"),
                        };
                        continue;
                    }
                    let col = tape.im2col(h, *geom)?;
                    let (z, y) = match (bias, norm) {
                        (Some(b), _) => {
                            tape.linear_bias_act(&self.params, col, *weight, *b, act)?
                        }
                        (None, Some(norm)) => {
                            let z = tape.linear(&self.params, col, *weight)?;
                            let y = self.normalise(tape, z, norm, train)?;
                            (z, self.activate(tape, y)?)
                        }
                        (None, None) => unreachable!("a convolution has a bias or a norm"),
                    };
                    if let Some(t) = trace.as_deref_mut() {
                        t.push((col, z));
                    }
                    h = y;
                }
                Stage::Pool { geom, kind } => h = tape.pool2d(h, *geom, *kind)?,
                Stage::Linear {
                    weight,
                    bias,
                    fan_in,
                    last,
                    ..
                } => {
                    let (r, c) = tape.dims(h);
                    if r != *fan_in {
                        h = tape.reshape(h, *fan_in, r * c / fan_in)?; // flatten
                    }
                    let act = if *last {
                        Act::Identity
                    } else {
                        self.config.activation.act()
                    };
                    let (z, y) = tape.linear_bias_act(&self.params, h, *weight, *bias, act)?;
                    if let Some(t) = trace.as_deref_mut() {
                        t.push((h, z));
                    }
                    h = y;
                    if !*last && train && self.config.dropout > 0.0 {
                        h = tape.dropout(h, self.config.dropout, rng)?;
                    }
                }
            }
        }
        Ok(h)
    }
}
