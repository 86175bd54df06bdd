//! Layer sparsity distributions (being written).
