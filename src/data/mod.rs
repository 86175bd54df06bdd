//! Datasets: IDX files, MNIST / Fashion-MNIST, batching (being written).
