//! `rewire bench <kernel> --device cuda`: the sparse kernel on the GPU against cuBLAS
//! SGEMM (TF32 off) on the same shape, in the same run, with the CPU bench's columns.

use crate::bench::{
    max_rel_diff, operands, result, sample, time_pair, BenchConfig, BenchResult, Kernel, Operands,
    SparseOp,
};
use crate::cuda::{CudaDevice, GpuBsr, GpuCsr};
use crate::error::{Error, Result};

enum GpuSparse {
    Csr(Box<GpuCsr>),
    Bsr(GpuBsr),
}

/// Times one configuration on `dev`; each timed call ends with a stream synchronise.
pub fn run(cfg: &BenchConfig, dev: &CudaDevice) -> Result<BenchResult> {
    if cfg.kernel == Kernel::Conv {
        return Err(Error::arg(
            "kernel",
            "the conv benchmark runs on the CPU only (there is no GPU conv benchmark yet)",
        ));
    }
    cfg.validate()?;
    let (m, k, n) = (cfg.m, cfg.k, cfg.n);
    let Operands {
        nnz,
        a_dense,
        sparse,
        block,
        b,
        l,
        out_len,
    } = operands(cfg)?;
    let (gpu, values) = match &sparse {
        SparseOp::Csr(a) => (
            GpuSparse::Csr(Box::new(GpuCsr::new(dev, a.pattern())?)),
            a.values(),
        ),
        SparseOp::Bsr(a) => (GpuSparse::Bsr(GpuBsr::new(dev, a.pattern())?), a.values()),
    };
    let dv = dev.upload(values)?;
    let (db, dl, da) = (dev.upload(&b)?, dev.upload(&l)?, dev.upload(&a_dense)?);
    let mut c_sparse = dev.zeros(out_len)?;
    let dense_len = match cfg.kernel {
        Kernel::Sddmm => m * k,
        _ => out_len,
    };
    let mut c_dense = dev.zeros(dense_len)?;
    let mut sparse_call = || -> Result<()> {
        match (&gpu, cfg.kernel) {
            (GpuSparse::Csr(a), Kernel::Spmm) => dev.spmm(&mut c_sparse, a, &dv, &db, n, 1.0, 0.0),
            (GpuSparse::Csr(a), Kernel::SpmmT) => {
                dev.spmm_t(&mut c_sparse, a, &dv, &db, n, 1.0, 0.0)
            }
            (GpuSparse::Csr(a), Kernel::Sddmm) => {
                dev.sddmm(&mut c_sparse, a, &dl, &db, n, 1.0, 0.0)
            }
            (GpuSparse::Bsr(a), _) => dev.bsr_spmm(&mut c_sparse, a, &dv, &db, n, 1.0, 0.0),
            (GpuSparse::Csr(_), _) => unreachable!("BSR gets a BSR operand; conv is refused"),
        }?;
        dev.synchronize()
    };
    let mut dense_call = || -> Result<()> {
        match cfg.kernel {
            Kernel::SpmmT => dev.sgemm(&mut c_dense, &da, &db, (k, m, n), (true, false), 1.0, 0.0),
            Kernel::Sddmm => dev.sgemm(&mut c_dense, &dl, &db, (m, n, k), (false, true), 1.0, 0.0),
            _ => dev.sgemm(&mut c_dense, &da, &db, (m, k, n), (false, false), 1.0, 0.0),
        }?;
        dev.synchronize()
    };
    sparse_call()?; // errors surface before timing
    dense_call()?;
    // a call that fails while timed (an asynchronous fault, say) is kept, not a panic
    let (mut sparse_err, mut dense_err) = (None, None);
    let times = time_pair(
        cfg.min_time,
        || {
            if let Err(e) = sparse_call() {
                sparse_err.get_or_insert(e);
            }
        },
        || {
            if let Err(e) = dense_call() {
                dense_err.get_or_insert(e);
            }
        },
    );
    if let Some(e) = sparse_err.or(dense_err) {
        return Err(e);
    }
    let (got, dense) = (dev.download(&c_sparse)?, dev.download(&c_dense)?);
    let diff = match &sparse {
        SparseOp::Csr(a) if cfg.kernel == Kernel::Sddmm => {
            max_rel_diff(&got, &sample(a.pattern(), &dense))
        }
        _ => max_rel_diff(&got, &dense),
    };
    let mut r = result(cfg, [m, k, n], nnz, block, times, 1.0, diff);
    r.device = dev.describe();
    (r.sparse_vector_bits, r.dense_vector_bits) = (None, None);
    Ok(r)
}
