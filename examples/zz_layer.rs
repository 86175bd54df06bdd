use rand::RngExt;
use rewire::cpu::{sddmm, spmm, spmm_t, Accum, Par};
use rewire::nn::{Mlp, MlpConfig};
use rewire::sparse::{seed_rng, CsrPattern};
use std::time::Instant;
fn t(f: &mut dyn FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let s = Instant::now();
    for _ in 0..200 {
        f();
    }
    s.elapsed().as_secs_f64() / 200.0 * 1e3
}
fn main() -> rewire::Result<()> {
    let model = Mlp::new(MlpConfig {
        sparsity: 0.95,
        ..MlpConfig::new(784, &[1000, 1000, 1000], 10)
    })?;
    let b = 128;
    let mut rng = seed_rng(1);
    let par = if std::env::var_os("SEQ").is_some() {
        Par::Seq
    } else {
        Par::current()
    };
    for layer in &model.layers {
        let w = model.params.get(layer.weight);
        let p = w.pattern().unwrap();
        let (m, k) = (p.nrows(), p.ncols());
        let rp = CsrPattern::random_per_row(m, k, p.nnz() / m, &mut seed_rng(3))?;
        let x: Vec<f32> = (0..k * b).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dz: Vec<f32> = (0..m * b).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut y = vec![0.0f32; m * b];
        let mut dx = vec![0.0f32; k * b];
        let mut g = vec![0.0f32; p.nnz()];
        for (name, pp) in [("model", &**p), ("perrow", &rp)] {
            let v = vec![0.5f32; pp.nnz()];
            let mut g = vec![0.0f32; pp.nnz()];
            let a = t(&mut || spmm(&mut y, pp, &v, &x, b, 1.0, Accum::Replace, par).unwrap());
            let bb = t(&mut || spmm_t(&mut dx, pp, &v, &dz, b, 1.0, Accum::Replace, par).unwrap());
            let c = t(&mut || sddmm(&mut g, pp, &dz, &x, b, 1.0, Accum::Add(1.0), par).unwrap());
            println!(
                "{name} {m}x{k} nnz {}: spmm {a:.3} spmm_t {bb:.3} sddmm {c:.3} ms",
                pp.nnz()
            );
        }
        let _ = &mut g;
    }
    Ok(())
}
