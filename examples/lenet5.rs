//! LeNet-5 (Caffe variant) on MNIST, sparse from the start and rewired while it trains.
//!
//! `cargo run --release --example lenet5 [-- METHOD SPARSITY EPOCHS]` (defaults: rigl 0.9 3)

#[path = "common/cnn_example.rs"]
mod cnn_example;

fn main() -> std::process::ExitCode {
    cnn_example::main("lenet5", rewire::data::DatasetName::Mnist, 0.01)
}
