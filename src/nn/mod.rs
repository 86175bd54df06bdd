//! Neural-network building blocks: parameters, layer sparsity distributions, models.

pub mod distribution;
pub mod param;

pub use param::{Param, ParamId, ParamShape, ParamStore};
