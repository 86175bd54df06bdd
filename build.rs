//! Embeds every CUDA source under `kernels/` (`*.cu`, `*.cuh`) into the crate, so that
//! the CUDA backend can compile them at run time with NVRTC. No CUDA toolchain is needed
//! at build time.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = root.join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    let mut out = String::from(
        "/// Every CUDA source under `kernels/`: (file name, contents), sorted by name.\n\
         pub const SOURCES: &[(&str, &str)] = &[\n",
    );
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("kernel file names are UTF-8");
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.rs");
    fs::write(&dest, out).expect("write embedded kernel list");
}
