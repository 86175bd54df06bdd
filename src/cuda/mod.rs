//! The CUDA backend: a device (context, stream, NVRTC-compiled modules for the device's
//! compute capability, a lazy function cache), device copies of sparse patterns, and
//! launch wrappers for the kernels in `kernels/*.cu`, plus cuBLAS SGEMM (TF32 off) as
//! the dense baseline.
//!
//! cudarc loads the CUDA libraries at run time and panics when they are missing, so
//! every entry point first probes for them ([`driver_present`], [`nvrtc_present`]):
//! asking for CUDA where there is none is an [`Error::Cuda`], never a panic.

pub mod bench;
pub mod cnn;
pub mod select;
pub mod train;

pub use cnn::BnStats;
/// A device buffer (cudarc's), as the kernel wrappers take them.
pub use cudarc::driver::CudaSlice;
pub use select::{radix_select_host, GrowScratch};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::error::{check_len, Error, Result};
use crate::sparse::{BsrPattern, CsrPattern};

/// Device buffers are never empty (the driver refuses zero-byte allocations): a logical
/// length of 0 is held in one element. Checks a device buffer's length against the
/// logical one.
pub fn same_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if got == expected || (expected == 0 && got == 1) {
        Ok(())
    } else {
        check_len(what, expected, got)
    }
}

/// `v` as a kernel's `u32` argument, or an error where it does not fit (a grid-stride
/// loop over a truncated length would quietly skip elements).
pub(crate) fn u32_arg(what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge { what, value: v })
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

/// The error of loading a compiled module: where the driver is older than the NVRTC that
/// wrote the PTX, says so (rewire is built against CUDA 13).
fn load_err(file: &str, e: cudarc::driver::DriverError) -> Error {
    use cudarc::driver::sys::CUresult;
    let hint = match e.0 {
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION | CUresult::CUDA_ERROR_INVALID_PTX => {
            "; the PTX comes from this machine's NVRTC, which may be newer than the driver: \
             rewire needs a driver for CUDA 13 or later (see nvidia-smi)"
        }
        _ => "",
    };
    Error::Cuda(format!("loading {file}: {e:?}{hint}"))
}

/// Whether one of the names cudarc would load for `lib` can be opened.
fn library_present(lib: &str) -> bool {
    cudarc::get_lib_name_candidates(lib)
        .iter()
        // SAFETY: opening a library runs its initialisers; these are NVIDIA's own
        // libraries, which cudarc would open anyway.
        .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// Whether the CUDA driver library (`libcuda`) can be loaded.
pub fn driver_present() -> bool {
    library_present("cuda")
}

/// Whether NVRTC (`libnvrtc`) can be loaded, so kernels can be compiled.
pub fn nvrtc_present() -> bool {
    library_present("nvrtc")
}

/// Whether cuBLAS (`libcublas`) can be loaded (dense layers, the SGEMM baseline and
/// RigL's dense gradient use it).
pub fn cublas_present() -> bool {
    library_present("cublas")
}

/// The NVRTC architecture flag for a compute capability.
fn arch_name(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        // an unlisted device: leak the name once (one per process and device)
        _ => Box::leak(format!("sm_{major}{minor}").into_boxed_str()),
    }
}

/// The embedded source of the kernel file `file`, where NVRTC is there to compile it.
fn kernel_source(file: &str) -> Result<&'static str> {
    if !nvrtc_present() {
        return Err(Error::Cuda(
            "NVRTC (libnvrtc) was not found; install the CUDA toolkit or put its lib directory on LD_LIBRARY_PATH".into(),
        ));
    }
    let src = crate::kernels::SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::arg("kernel", format!("no kernel source {file:?}")))?;
    Ok(src)
}

/// Compiles one embedded kernel source (a file name from [`crate::kernels::SOURCES`])
/// to PTX for `arch` (for example `"sm_90"`). Needs only NVRTC, not a device.
pub fn compile(file: &str, arch: &'static str) -> Result<Ptx> {
    let src = kernel_source(file)?;
    compile_ptx_with_opts(
        src,
        CompileOptions {
            arch: Some(arch),
            name: Some(file.to_string()),
            ..Default::default()
        },
    )
    .map_err(|e| Error::Cuda(format!("NVRTC could not compile {file} for {arch}: {e}")))
}

/// Compiles one embedded kernel source to machine code (a CUBIN) for the real
/// architecture `arch`. The driver loads a CUBIN from an NVRTC newer than itself within
/// the same major CUDA version (minor-version compatibility), where it would refuse to
/// JIT that NVRTC's PTX; so devices load these first and fall back to [`compile`]'s PTX.
/// Needs only NVRTC, not a device.
pub fn compile_cubin(file: &str, arch: &'static str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let src = kernel_source(file)?;
    let c_src = std::ffi::CString::new(src)
        .map_err(|_| Error::arg("kernel", format!("{file} holds a NUL byte")))?;
    let c_name = std::ffi::CString::new(file)
        .map_err(|_| Error::arg("kernel", format!("{file:?} holds a NUL byte")))?;
    let fail = |what: &str, e: cudarc::nvrtc::result::NvrtcError| {
        Error::Cuda(format!("NVRTC could not {what} {file} for {arch}: {e:?}"))
    };
    let prog = result::create_program(&c_src, Some(&c_name)).map_err(|e| fail("create", e))?;
    // SAFETY: `prog` was created above and is destroyed once, at the end; the source and
    // name it refers to outlive it.
    let out = unsafe {
        let compiled = result::compile_program(prog, &[format!("--gpu-architecture={arch}")]);
        let cubin = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        std::ffi::CStr::from_ptr(l.as_ptr())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                Err(Error::Cuda(format!(
                    "NVRTC could not compile {file} for {arch}: {e:?}\n{log}"
                )))
            }
            // no early return past destroy_program below
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| fail("size the CUBIN of", e))
                    .and_then(|()| {
                        let mut bin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut std::ffi::c_char)
                            .result()
                            .map_err(|e| fail("write the CUBIN of", e))
                            .map(|()| bin)
                    })
            }
        };
        let _ = result::destroy_program(prog);
        cubin
    };
    match out {
        Ok(bin) if bin.is_empty() => Err(Error::Cuda(format!(
            "NVRTC gave an empty CUBIN for {file} ({arch} is not a real architecture?)"
        ))),
        other => other,
    }
}

/// One CUDA device with its stream, compiled modules and cuBLAS handle.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: CudaBlas,
    name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}, {})", self.name, self.arch)
    }
}

/// Kernel module (a file of `kernels/`) that holds each entry point.
fn module_of(function: &str) -> &'static str {
    match function {
        f if f.starts_with("spmm_") || f.starts_with("sddmm_") || f.starts_with("bsr_") => {
            "sparse.cu"
        }
        f if f.starts_with("rigl_") || f.starts_with("radix_") || f.starts_with("select_") => {
            "select.cu"
        }
        f if f.starts_with("im2col_")
            || f.starts_with("col2im_")
            || f.starts_with("maxpool_")
            || f.starts_with("avgpool_")
            || f.starts_with("batch_norm_") =>
        {
            "cnn.cu"
        }
        _ => "train.cu",
    }
}

impl CudaDevice {
    /// Opens device `ordinal`: an error (not a panic) where the driver or NVRTC is
    /// missing or there is no such device.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        if !driver_present() {
            return Err(Error::Cuda(
                "no CUDA driver (libcuda) on this machine; use the CPU (the default)".into(),
            ));
        }
        if !nvrtc_present() {
            return Err(Error::Cuda(
                "the CUDA driver is present but NVRTC (libnvrtc) is not; kernels cannot be compiled".into(),
            ));
        }
        if !cublas_present() {
            return Err(Error::Cuda(
                "the CUDA driver and NVRTC are present but cuBLAS (libcublas) is not; install it or put its lib directory on LD_LIBRARY_PATH".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("opening the CUDA device", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("reading the compute capability", e))?;
        let name = ctx
            .name()
            .map_err(|e| cuda_err("reading the device name", e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("creating cuBLAS", e))?;
        // SGEMM in full FP32: the default math mode, no TF32 tensor-core shortcut.
        // SAFETY: a valid handle, a valid math-mode value.
        let status = unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
        };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Cuda(format!("cublasSetMathMode failed: {status:?}")));
        }
        Ok(Arc::new(CudaDevice {
            ctx,
            stream,
            arch: arch_name(major, minor),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas,
            name,
        }))
    }

    /// The device's name and architecture, e.g. `"NVIDIA H100 80GB HBM3 (sm_90)"`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// The stream every launch and copy of this device uses.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err("synchronising", e))
    }

    /// The kernel `name`, compiling its module on first use.
    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().expect("function cache").get(name) {
            return Ok(f.clone());
        }
        let file = module_of(name);
        let module = {
            let mut modules = self.modules.lock().expect("module cache");
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    // machine code first; PTX (JIT-compiled by the driver) where that
                    // cannot be made or loaded
                    let cubin = compile_cubin(file, self.arch).and_then(|bin| {
                        self.ctx
                            .load_module(Ptx::from_binary(bin))
                            .map_err(|e| load_err(file, e))
                    });
                    let m = match cubin {
                        Ok(m) => m,
                        Err(first) => {
                            let ptx = compile(file, self.arch)?;
                            self.ctx.load_module(ptx).map_err(|e| {
                                Error::Cuda(format!("{} (as CUBIN: {first})", load_err(file, e)))
                            })?
                        }
                    };
                    modules.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| cuda_err(&format!("finding kernel {name}"), e))?;
        self.functions
            .lock()
            .expect("function cache")
            .insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Copies host data to a new device buffer. The driver refuses empty allocations,
    /// so an empty slice becomes a one-element buffer (see [`same_len`]).
    pub fn upload<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        data: &[T],
    ) -> Result<CudaSlice<T>> {
        let padded;
        let data = if data.is_empty() {
            padded = [T::default()];
            &padded[..]
        } else {
            data
        };
        self.stream
            .clone_htod(data)
            .map_err(|e| cuda_err("copying to the device", e))
    }

    /// Copies host data into an existing device buffer of the same length.
    pub fn upload_into<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        check_len("device buffer", dst.len(), data.len())?;
        self.stream
            .memcpy_htod(data, dst)
            .map_err(|e| cuda_err("copying to the device", e))
    }

    /// Sets a device buffer to zero.
    pub fn zero(&self, buf: &mut CudaSlice<f32>) -> Result<()> {
        self.stream
            .memset_zeros(buf)
            .map_err(|e| cuda_err("zeroing device memory", e))
    }

    /// A zeroed device buffer of `len` floats (one, for `len = 0`: see [`same_len`]).
    pub fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| cuda_err("allocating device memory", e))
    }

    /// Copies a device buffer back to the host (a logically empty buffer comes back as
    /// its one padding element).
    pub fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream
            .clone_dtoh(buf)
            .map_err(|e| cuda_err("copying from the device", e))
    }

    /// `C[M×N] = α·A·B + β·C` (row-major; β = 0 does not read `C`) with cuBLAS SGEMM.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        c: &mut CudaSlice<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        (m, k, n): (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        same_len("sgemm A", m * k, a.len())?;
        same_len("sgemm B", k * n, b.len())?;
        same_len("sgemm C", m * n, c.len())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
        let cfg = GemmConfig {
            transa: op(trans_b),
            transb: op(trans_a),
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha,
            lda: if trans_b { k } else { n }.max(1) as i32,
            ldb: if trans_a { m } else { k }.max(1) as i32,
            beta,
            ldc: n as i32,
        };
        // cuBLAS runs in the thread's current context, which cudarc's gemm does not set
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the CUDA context", e))?;
        // SAFETY: dimensions checked against the buffer lengths above.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| cuda_err("cuBLAS SGEMM", e))
    }

    /// `C[M×N] = α·A·B + β·C`, `A` a CSR matrix on the device.
    #[allow(clippy::too_many_arguments)]
    pub fn spmm(
        &self,
        c: &mut CudaSlice<f32>,
        a: &GpuCsr,
        values: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        same_len("spmm A values", a.nnz, values.len())?;
        same_len("spmm B", a.ncols * n, b.len())?;
        same_len("spmm C", a.nrows * n, c.len())?;
        self.launch_spmm(c, &a.fwd, None, values, b, n, alpha, beta)
    }

    /// `C[K×N] = α·Aᵀ·B + β·C` on the transposed pattern (values gathered through its
    /// permutation: no transposed copy of the values).
    #[allow(clippy::too_many_arguments)]
    pub fn spmm_t(
        &self,
        c: &mut CudaSlice<f32>,
        a: &GpuCsr,
        values: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        same_len("spmm_t A values", a.nnz, values.len())?;
        same_len("spmm_t B", a.nrows * n, b.len())?;
        same_len("spmm_t C", a.ncols * n, c.len())?;
        self.launch_spmm(c, &a.tr, Some(&a.perm), values, b, n, alpha, beta)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_spmm(
        &self,
        c: &mut CudaSlice<f32>,
        p: &GpuPattern,
        perm: Option<&CudaSlice<u32>>,
        values: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if p.nrows == 0 || n == 0 {
            return Ok(());
        }
        let vec = if n.is_multiple_of(4) { 4 } else { 1 };
        let f = self.function(if vec == 4 {
            "spmm_csr_f32_vec4"
        } else {
            "spmm_csr_f32_vec1"
        })?;
        const WARPS: u32 = 4;
        grid_y_fits("spmm", n, 32 * vec)?;
        let cfg = LaunchConfig {
            grid_dim: (
                (p.nrows as u32).div_ceil(WARPS),
                n.div_ceil(32 * vec) as u32,
                1,
            ),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: 0,
        };
        let (m, n32) = (u32_arg("rows", p.nrows)?, u32_arg("columns", n)?);
        let null: u64 = 0;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&m)
            .arg(&n32)
            .arg(&p.row_ptr)
            .arg(&p.col_idx)
            .arg(values);
        match perm {
            Some(perm) => launch.arg(perm),
            None => launch.arg(&null),
        };
        launch.arg(&p.order).arg(b).arg(c).arg(&alpha).arg(&beta);
        // SAFETY: the kernel's signature matches the arguments pushed; every index it
        // forms is bounded by the pattern (validated on the host) and the checked dims.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err("launching spmm", e))?;
        Ok(())
    }

    /// `v[p] = α·⟨L[row p, :], R[col p, :]⟩ + β·v[p]` for every live entry of `a`.
    #[allow(clippy::too_many_arguments)]
    pub fn sddmm(
        &self,
        out: &mut CudaSlice<f32>,
        a: &GpuCsr,
        l: &CudaSlice<f32>,
        r: &CudaSlice<f32>,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        same_len("sddmm values", a.nnz, out.len())?;
        same_len("sddmm L", a.nrows * n, l.len())?;
        same_len("sddmm R", a.ncols * n, r.len())?;
        if a.nrows == 0 || a.nnz == 0 {
            return Ok(());
        }
        let f = self.function(if n.is_multiple_of(4) {
            "sddmm_csr_f32_vec4"
        } else {
            "sddmm_csr_f32_vec1"
        })?;
        const WARPS: u32 = 4;
        let cfg = LaunchConfig {
            grid_dim: ((a.nrows as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32, WARPS, 1),
            shared_mem_bytes: 0,
        };
        let (m, n32) = (u32_arg("rows", a.nrows)?, u32_arg("columns", n)?);
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&m)
            .arg(&n32)
            .arg(&a.fwd.row_ptr)
            .arg(&a.fwd.col_idx)
            .arg(&a.fwd.order)
            .arg(l)
            .arg(r)
            .arg(out)
            .arg(&alpha)
            .arg(&beta);
        // SAFETY: as for spmm.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err("launching sddmm", e))?;
        Ok(())
    }

    /// `C[M×N] = α·A·B + β·C`, `A` block-sparse with square 4×4, 8×8 or 16×16 blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn bsr_spmm(
        &self,
        c: &mut CudaSlice<f32>,
        a: &GpuBsr,
        values: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let bs = a.block;
        same_len("bsr values", a.nnz_blocks * bs * bs, values.len())?;
        same_len("bsr B", a.block_cols * bs * n, b.len())?;
        same_len("bsr C", a.block_rows * bs * n, c.len())?;
        if a.block_rows == 0 || n == 0 {
            return Ok(());
        }
        grid_y_fits("bsr_spmm", n, 128)?;
        let f = self.function(&format!("bsr_spmm_f32_b{bs}"))?;
        let cfg = LaunchConfig {
            grid_dim: (a.block_rows as u32, n.div_ceil(128) as u32, 1),
            block_dim: (32, bs.min(8) as u32, 1),
            shared_mem_bytes: 0,
        };
        let n32 = u32_arg("columns", n)?;
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(&n32)
            .arg(&a.row_ptr)
            .arg(&a.col_idx)
            .arg(values)
            .arg(b)
            .arg(c)
            .arg(&alpha)
            .arg(&beta);
        // SAFETY: as for spmm.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err("launching bsr_spmm", e))?;
        Ok(())
    }
}

/// Most blocks along a launch grid's `y` (and `z`) dimension.
const MAX_GRID_Y: usize = 65_535;

/// Checks that `n` columns, `per_block` to a block along the grid's `y` dimension, fit
/// that dimension: an error naming the kernel and the largest `n` it takes otherwise.
fn grid_y_fits(kernel: &'static str, n: usize, per_block: usize) -> Result<()> {
    if n.div_ceil(per_block) > MAX_GRID_Y {
        return Err(Error::arg(
            kernel,
            format!(
                "N = {n} columns exceed the CUDA kernel's grid (at most {} here)",
                MAX_GRID_Y * per_block
            ),
        ));
    }
    Ok(())
}

/// A CSR pattern's arrays on the device, with rows ordered by decreasing length.
pub struct GpuPattern {
    nrows: usize,
    row_ptr: CudaSlice<u32>,
    col_idx: CudaSlice<u32>,
    order: CudaSlice<u32>,
}

impl GpuPattern {
    fn upload(dev: &CudaDevice, p: &CsrPattern) -> Result<Self> {
        let mut order: Vec<u32> = (0..p.nrows() as u32).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(p.row_range(r as usize).len()));
        Ok(GpuPattern {
            nrows: p.nrows(),
            row_ptr: dev.upload(p.row_ptr())?,
            col_idx: dev.upload(p.col_idx())?,
            order: dev.upload(&order)?,
        })
    }
}

/// A sparse weight's pattern on the device: the pattern, its transpose and the
/// transpose's value permutation (for `Aᵀ·B`). Built from one pattern version.
pub struct GpuCsr {
    nrows: usize,
    ncols: usize,
    nnz: usize,
    fwd: GpuPattern,
    tr: GpuPattern,
    perm: CudaSlice<u32>,
    version: u64,
}

impl GpuCsr {
    /// Uploads `pattern` and its cached transpose.
    pub fn new(dev: &CudaDevice, pattern: &CsrPattern) -> Result<Self> {
        let t = pattern.transpose();
        Ok(GpuCsr {
            nrows: pattern.nrows(),
            ncols: pattern.ncols(),
            nnz: pattern.nnz(),
            fwd: GpuPattern::upload(dev, pattern)?,
            tr: GpuPattern::upload(dev, &t.pattern)?,
            perm: dev.upload(&t.perm)?,
            version: pattern.version(),
        })
    }

    /// The version of the pattern this copy was made from.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// A block-sparse pattern on the device.
pub struct GpuBsr {
    block: usize,
    block_rows: usize,
    block_cols: usize,
    nnz_blocks: usize,
    row_ptr: CudaSlice<u32>,
    col_idx: CudaSlice<u32>,
}

impl GpuBsr {
    /// Uploads a BSR pattern with square 4×4, 8×8 or 16×16 blocks.
    pub fn new(dev: &CudaDevice, pattern: &BsrPattern) -> Result<Self> {
        let (r, c) = (pattern.block_r(), pattern.block_c());
        if r != c || ![4, 8, 16].contains(&r) {
            return Err(Error::arg(
                "bsr",
                format!("the CUDA BSR kernel serves 4×4, 8×8 and 16×16 blocks, not {r}×{c}"),
            ));
        }
        let blocks = pattern.blocks();
        Ok(GpuBsr {
            block: r,
            block_rows: blocks.nrows(),
            block_cols: blocks.ncols(),
            nnz_blocks: blocks.nnz(),
            row_ptr: dev.upload(blocks.row_ptr())?,
            col_idx: dev.upload(blocks.col_idx())?,
        })
    }
}
