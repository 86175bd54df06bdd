//! A small VGG-style CNN with batch norm on Fashion-MNIST, sparse from the start and
//! rewired while it trains.
//!
//! `cargo run --release --example vgg_small [-- METHOD SPARSITY EPOCHS]` (defaults: rigl 0.9 3)

#[path = "common/cnn_example.rs"]
mod cnn_example;

fn main() -> std::process::ExitCode {
    cnn_example::main("vgg-small", rewire::data::DatasetName::FashionMnist, 0.05)
}
