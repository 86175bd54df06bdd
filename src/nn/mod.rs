//! Neural-network building blocks: parameters, layer sparsity distributions, models.

pub mod cnn;
pub mod distribution;
pub mod mlp;
pub mod model;
pub mod param;

pub use cnn::{Cnn, CnnConfig, CnnLayer};
pub use mlp::{Activation, Layer, Mlp, MlpConfig};
pub use model::{Model, WeightLayer};
pub use param::{Param, ParamId, ParamShape, ParamStore};
