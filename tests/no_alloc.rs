//! Kernels allocate nothing per call in steady state: a counting global allocator
//! watches a second round of calls (the first may build the cached transpose). It counts
//! per thread: the sequential kernels run on the calling thread, while the test
//! harness's own threads may allocate at any moment (once seen as a flaky failure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use rewire::cpu::{bsr_spmm, sddmm, spmm, spmm_t, Accum, Par};
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
