//! Multi-layer perceptrons whose weight layers are dense or sparse at a density given by
//! a layer [`Distribution`], initialised for their live fan-in.

use crate::autograd::{Act, Tape, Var};
use crate::error::{Error, Result};
use crate::nn::distribution::{layer_densities, layer_nnz, Distribution, LayerShape};
use crate::nn::model::{check_weights_fit, new_vector, new_weight, Model, WeightLayer};
use crate::nn::{ParamId, ParamStore};
use crate::sparse::{seed_rng, SeedRng};

/// The nonlinearity between layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// leaky ReLU with this negative slope
    LeakyRelu(f32),
    /// hyperbolic tangent
    Tanh,
    /// logistic function
    Sigmoid,
}

impl Activation {
    /// Parses `relu`, `leaky-relu` (slope 0.01), `leaky-relu:0.2`, `tanh`, `sigmoid`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "sigmoid" => Ok(Activation::Sigmoid),
            "leaky-relu" => Ok(Activation::LeakyRelu(0.01)),
            _ => match s.strip_prefix("leaky-relu:").map(str::parse::<f32>) {
                Some(Ok(slope)) if (0.0..1.0).contains(&slope) => Ok(Activation::LeakyRelu(slope)),
                _ => Err(Error::arg(
                    "activation",
                    format!("unknown activation {s:?} (relu, leaky-relu[:slope in [0, 1)], tanh, sigmoid)"),
                )),
            },
        }
    }

    /// Checks a leaky ReLU's slope (in `[0, 1)`, as [`Activation::parse`] reads it).
    pub fn validate(self) -> Result<()> {
        match self {
            Activation::LeakyRelu(a) if !(0.0..1.0).contains(&a) => Err(Error::arg(
                "activation",
                format!("a leaky ReLU's slope must lie in [0, 1), got {a}"),
            )),
            _ => Ok(()),
        }
    }

    /// Gain of the uniform initialisation (He for ReLU-like, 5/3 for tanh, 1 for sigmoid).
    pub(crate) fn gain(self) -> f32 {
        match self {
            Activation::Relu => 2f32.sqrt(),
            Activation::LeakyRelu(a) => (2.0 / (1.0 + a * a)).sqrt(),
            Activation::Tanh => 5.0 / 3.0,
            Activation::Sigmoid => 1.0,
        }
    }

    /// The fused autograd form.
    pub(crate) fn act(self) -> Act {
        match self {
            Activation::Relu => Act::Relu,
            Activation::LeakyRelu(a) => Act::LeakyRelu(a),
            Activation::Tanh => Act::Tanh,
            Activation::Sigmoid => Act::Sigmoid,
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct MlpConfig {
    /// input features (784 for MNIST)
    pub inputs: usize,
    /// widths of the hidden layers
    pub hidden: Vec<usize>,
    /// output classes
    pub classes: usize,
    /// nonlinearity after every hidden layer
    pub activation: Activation,
    /// dropout probability after every hidden activation (0: none)
    pub dropout: f32,
    /// fraction of all weights that are not stored (0: dense model)
    pub sparsity: f64,
    /// how the sparsity is spread over the layers
    pub distribution: Distribution,
    /// seed of the patterns and the initial values
    pub seed: u64,
    /// store every weight layer sparse, dense ones too (for methods that prune a dense
    /// start: gradual magnitude pruning, prune-then-finetune)
    pub sparse_storage: bool,
}

impl MlpConfig {
    /// A dense model of the given widths with ReLU.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize) -> Self {
        MlpConfig {
            inputs,
            hidden: hidden.to_vec(),
            classes,
            activation: Activation::Relu,
            dropout: 0.0,
            sparsity: 0.0,
            distribution: Distribution::Uniform { dense_first: false },
            seed: 0,
            sparse_storage: false,
        }
    }

    /// Shapes of the weight layers, input to output.
    pub fn layer_shapes(&self) -> Vec<LayerShape> {
        let mut widths = vec![self.inputs];
        widths.extend(&self.hidden);
        widths.push(self.classes);
        widths
            .windows(2)
            .map(|w| LayerShape {
                fan_out: w[1],
                fan_in: w[0],
                kh: 1,
                kw: 1,
            })
            .collect()
    }
}

/// One weight layer of an [`Mlp`].
#[derive(Clone, Debug)]
pub struct Layer {
    /// `[out × in]` weight, dense or sparse
    pub weight: ParamId,
    /// `[out]` bias
    pub bias: ParamId,
    /// inputs
    pub fan_in: usize,
    /// outputs
    pub fan_out: usize,
}

/// A multi-layer perceptron: `(linear → bias → activation → dropout)*`, then a linear
/// output layer producing logits. Activations are feature-major `[features × batch]`.
pub struct Mlp {
    /// all weights and biases
    pub params: ParamStore,
    /// weight layers, input to output
    pub layers: Vec<Layer>,
    /// what it was built from
    pub config: MlpConfig,
}

impl Mlp {
    /// Builds the model: each layer's density from the distribution, a random pattern
    /// with exactly that many live weights (a layer at density 1 is stored dense), and
    /// uniform initial values scaled for the live fan-in.
    pub fn new(config: MlpConfig) -> Result<Self> {
        if config.inputs == 0 || config.classes == 0 || config.hidden.contains(&0) {
            return Err(Error::arg("model", "every layer needs at least one unit"));
        }
        config.activation.validate()?;
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::arg(
                "dropout",
                format!("must lie in [0, 1), got {}", config.dropout),
            ));
        }
        let shapes = config.layer_shapes();
        let densities = layer_densities(config.distribution, &shapes, config.sparsity)?;
        let nnz = layer_nnz(&densities, &shapes);
        check_weights_fit(
            shapes.iter().map(|s| (s.fan_out, s.fan_in * s.kh * s.kw)),
            &nnz,
            config.sparse_storage,
        )?;
        let mut rng = seed_rng(config.seed);
        let mut params = ParamStore::new();
        let mut layers = Vec::new();
        let last = shapes.len() - 1;
        for (l, (shape, &k)) in shapes.iter().zip(&nnz).enumerate() {
            let (out, fan_in) = (shape.fan_out, shape.fan_in);
            let gain = if l == last {
                1.0
            } else {
                config.activation.gain()
            };
            let name = format!("fc{}.weight", l + 1);
            let w = new_weight(name, out, fan_in, k, config.sparse_storage, gain, &mut rng)?;
            let weight = params.add(w);
            let bias = params.add(new_vector(format!("fc{}.bias", l + 1), out, 0.0)?);
            layers.push(Layer {
                weight,
                bias,
                fan_in,
                fan_out: out,
            });
        }
        Ok(Mlp {
            params,
            layers,
            config,
        })
    }
}

impl Model for Mlp {
    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    fn weight_layers(&self) -> Vec<WeightLayer> {
        self.layers
            .iter()
            .map(|l| WeightLayer {
                weight: l.weight,
                shape: LayerShape::linear(l.fan_out, l.fan_in),
                positions: 1,
            })
            .collect()
    }

    fn input_dim(&self) -> usize {
        self.config.inputs
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
        let mut h = x;
        let last = self.layers.len() - 1;
        if let Some(t) = trace.as_deref_mut() {
            t.clear();
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let act = if l < last {
                self.config.activation.act()
            } else {
                Act::Identity
            };
            let (z, y) = tape.linear_bias_act(&self.params, h, layer.weight, layer.bias, act)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push((h, z));
            }
            h = y;
            if l < last && train && self.config.dropout > 0.0 {
                h = tape.dropout(h, self.config.dropout, rng)?;
            }
        }
        Ok(h)
    }
}
