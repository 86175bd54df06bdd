//! CUDA C sources from `kernels/`, embedded by `build.rs` at compile time. The CUDA
//! backend compiles them with NVRTC at run time; nothing here needs CUDA to build.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The contents of the embedded kernel file `name` (for example `"spmm.cu"`).
pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
