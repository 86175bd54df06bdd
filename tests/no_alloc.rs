//! Kernels allocate nothing per call in steady state: a counting global allocator
//! watches a second round of calls (the first may build the cached transpose). It counts
//! per thread: the sequential kernels run on the calling thread, while the test
//! harness's own threads may allocate at any moment (once seen as a flaky failure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use rewire::autograd::Conv2dGeom;
use rewire::cpu::{
    bsr_spmm, sddmm, sparse_conv2d, sparse_conv2d_input_grad, sparse_conv2d_weight_grad, spmm,
    spmm_t, Accum, Par,
};
use rewire::sparse::{seed_rng, BsrPattern, CsrPattern};

struct Counting;

thread_local! {
    // const-initialised: reading it never allocates
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made so far by the calling thread.
fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // (realloc and alloc_zeroed come through here too: their default forms call it)
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn kernels_do_not_allocate_in_steady_state() {
    let (m, k, n) = (300, 200, 37);
    let mut rng = seed_rng(7);
    let pattern = Arc::new(CsrPattern::random(m, k, 6000, &mut rng).unwrap());
    let bsr = BsrPattern::random(m / 4, k / 4, 4, 4, 500, &mut rng).unwrap();
    let values = vec![0.5f32; pattern.nnz()];
    let bvals = vec![0.25f32; bsr.nnz()];
    let b = vec![1.0f32; k * n];
    let bt = vec![1.0f32; m * n];
    let mut c = vec![0.0f32; m * n];
    let mut ct = vec![0.0f32; k * n];
    let mut grad = vec![0.0f32; pattern.nnz()];
    // a direct sparse convolution: 6 → 5 channels, 3×3, 9×8 images, batch 13
    let geom = Conv2dGeom {
        channels: 6,
        h: 9,
        w: 8,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let batch = 13;
    let conv = CsrPattern::random(5, geom.patch_len(), 20, &mut rng).unwrap();
    let cvals = vec![0.5f32; conv.nnz()];
    let img = vec![1.0f32; geom.channels * geom.h * geom.w * batch];
    let mut dimg = vec![0.0f32; img.len()];
    let mut z = vec![0.0f32; 5 * geom.out_h() * geom.out_w() * batch];
    let mut cgrad = vec![0.0f32; conv.nnz()];

    let mut round = |par: Par| {
        spmm(&mut c, &pattern, &values, &b, n, 1.0, Accum::Replace, par).unwrap();
        spmm_t(
            &mut ct,
            &pattern,
            &values,
            &bt,
            n,
            1.0,
            Accum::Add(1.0),
            par,
        )
        .unwrap();
        sddmm(&mut grad, &pattern, &bt, &b, n, 0.5, Accum::Replace, par).unwrap();
        bsr_spmm(&mut c, &bsr, &bvals, &b, n, 1.0, Accum::Add(0.5), par).unwrap();
        let g = geom;
        sparse_conv2d(&mut z, &conv, &cvals, &img, g, batch, par).unwrap();
        sparse_conv2d_input_grad(&mut dimg, &conv, &cvals, &z, g, batch, Accum::Replace, par)
            .unwrap();
        sparse_conv2d_weight_grad(
            &mut cgrad,
            &conv,
            &z,
            &img,
            g,
            batch,
            1.0,
            Accum::Replace,
            par,
        )
        .unwrap();
    };
    round(Par::Seq); // builds the cached transpose
    let before = allocs();
    for _ in 0..3 {
        round(Par::Seq);
    }
    let after = allocs();
    assert_eq!(
        after - before,
        0,
        "sequential kernels allocated {} times",
        after - before
    );
}
