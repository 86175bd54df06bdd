//! Neural-network building blocks: parameters, layer sparsity distributions, models.

pub mod distribution;
pub mod mlp;
pub mod param;

pub use mlp::{Activation, Layer, Mlp, MlpConfig};
pub use param::{Param, ParamId, ParamShape, ParamStore};
