//! Every checked constructor, conversion and kernel rejects bad input with an `Err`
//! whose message names the problem, and never panics; property tests feed garbage to
//! the pattern constructors and check accepted patterns against independently written
//! invariants.

use std::sync::Arc;

use proptest::prelude::*;
use rewire::cpu::dense::{gemm_ex, Trans};
use rewire::cpu::{bsr_spmm, gemm, sddmm, spmm, spmm_t};
use rewire::sparse::{
    nnz_for_sparsity, seed_rng, skewed_row_nnz, Bsr, BsrPattern, Csr, CsrPattern,
};
use rewire::{Accum, Error, Par};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// Asserts `res` is an `Err` whose message contains every one of `needles`.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(res: rewire::Result<T>, needles: &[&str]) -> Error {
    let err = match res {
        Ok(v) => panic!("expected an error mentioning {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    err
}

#[track_caller]
fn expect_invalid_csr(res: rewire::Result<CsrPattern>, needles: &[&str]) {
    let err = expect_err(res, needles);
    assert!(
        matches!(err, Error::InvalidPattern { format: "CSR", .. }),
        "{err:?}"
    );
}

#[track_caller]
fn expect_length<T: std::fmt::Debug>(
    res: rewire::Result<T>,
    what: &str,
    expected: usize,
    got: usize,
) {
    match expect_err(res, &[what]) {
        Error::Length {
            what: w,
            expected: e,
            got: g,
        } => assert_eq!((w, e, g), (what, expected, got)),
        other => panic!("expected Error::Length for {what}, got {other:?}"),
    }
}

/// One bad CSR structure and the words its error must contain.
struct BadCsr {
    nrows: usize,
    ncols: usize,
    row_ptr: Vec<u32>,
    col_idx: Vec<u32>,
    needles: &'static [&'static str],
}

fn bad_csr_cases() -> Vec<BadCsr> {
    let case = |nrows, ncols, row_ptr: &[u32], col_idx: &[u32], needles| BadCsr {
        nrows,
        ncols,
        row_ptr: row_ptr.to_vec(),
        col_idx: col_idx.to_vec(),
        needles,
    };
    vec![
        // row_ptr of the wrong length
        case(
            3,
            4,
            &[0, 1, 2],
            &[0, 1],
            &["row_ptr", "length", "nrows + 1"],
        ),
        case(
            2,
            4,
            &[0, 1, 2, 2],
            &[0, 1],
            &["row_ptr", "length", "nrows + 1"],
        ),
        case(0, 4, &[], &[], &["row_ptr", "length"]),
        case(5, 5, &[], &[], &["row_ptr", "length"]),
        // row_ptr[0] != 0
        case(2, 4, &[1, 1, 2], &[0, 1], &["row_ptr[0]", "expected 0"]),
        case(0, 4, &[3], &[0, 1, 2], &["row_ptr[0]"]),
        // non-monotone row_ptr
        case(3, 4, &[0, 2, 1, 3], &[0, 1, 2], &["not monotone", "row 1"]),
        case(2, 9, &[0, 5, 0], &[], &["not monotone", "row 1"]),
        case(
            3,
            u32::MAX as usize,
            &[0, u32::MAX, 0, 0],
            &[],
            &["not monotone"],
        ),
        // last row_ptr != col_idx length
        case(
            2,
            4,
            &[0, 1, 2],
            &[0, 1, 3],
            &["row_ptr[nrows]", "col_idx has 3"],
        ),
        case(
            2,
            4,
            &[0, 1, 3],
            &[0, 1],
            &["row_ptr[nrows]", "col_idx has 2"],
        ),
        case(2, 4, &[0, 0, u32::MAX], &[0], &["row_ptr[nrows]"]),
        case(0, 0, &[0], &[0], &["row_ptr[nrows]"]),
        // column out of range
        case(2, 4, &[0, 1, 2], &[0, 4], &["out of range", "row 1"]),
        case(1, 3, &[0, 1], &[u32::MAX], &["out of range"]),
        case(1, 0, &[0, 1], &[0], &["out of range"]),
        // unsorted columns
        case(2, 4, &[0, 2, 4], &[0, 1, 3, 2], &["unsorted", "row 1"]),
        case(1, 9, &[0, 3], &[8, 0, 4], &["unsorted", "row 0"]),
        // duplicated columns
        case(2, 4, &[0, 2, 4], &[1, 1, 0, 3], &["duplicated", "row 0"]),
        case(1, 9, &[0, 3], &[0, 4, 4], &["duplicated", "row 0"]),
    ]
}

// ---------------------------------------------------------------------------------------
// CSR
// ---------------------------------------------------------------------------------------

#[test]
fn csr_pattern_new_rejects_every_broken_invariant() {
    for c in bad_csr_cases() {
        expect_invalid_csr(
            CsrPattern::new(c.nrows, c.ncols, c.row_ptr.clone(), c.col_idx.clone()),
            c.needles,
        );
        // Csr::from_parts goes through the same checks (values of the right length).
        let values = vec![1.0; c.col_idx.len()];
        let err = expect_err(
            Csr::from_parts(c.nrows, c.ncols, c.row_ptr, c.col_idx, &values),
            c.needles,
        );
        assert!(matches!(err, Error::InvalidPattern { format: "CSR", .. }));
    }
}

#[test]
fn unsorted_and_duplicated_are_told_apart() {
    let dup = CsrPattern::new(1, 5, vec![0, 2], vec![3, 3]).unwrap_err();
    assert!(dup.to_string().contains("duplicated"), "{dup}");
    assert!(!dup.to_string().contains("unsorted"), "{dup}");
    let uns = CsrPattern::new(1, 5, vec![0, 2], vec![3, 2]).unwrap_err();
    assert!(uns.to_string().contains("unsorted"), "{uns}");
    assert!(!uns.to_string().contains("duplicated"), "{uns}");
    // Sorted within rows, decreasing across a row boundary: valid.
    CsrPattern::new(2, 5, vec![0, 2, 4], vec![3, 4, 0, 1]).unwrap();
}

#[test]
fn sizes_beyond_u32_are_rejected() {
    let big = u32::MAX as usize + 1;
    let err = CsrPattern::new(big, 1, vec![], vec![]).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "nrows", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("u32"));
    let err = CsrPattern::new(1, big, vec![0, 0], vec![]).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "ncols", .. }),
        "{err:?}"
    );
    // a huge row count with no entries: an error before any allocation
    let err = CsrPattern::full(1 << 40, 0).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "nrows", .. }),
        "{err:?}"
    );
    let err = CsrPattern::full(1 << 17, 1 << 17).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "nnz", .. }),
        "{err:?}"
    );
    // random: nnz beyond u32, and nrows·ncols beyond usize
    let err = CsrPattern::random(1 << 17, 1 << 17, 1 << 33, &mut seed_rng(0)).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let err = CsrPattern::random(usize::MAX, 2, 1, &mut seed_rng(0)).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // BSR: the element-level shape must fit too.
    let err = BsrPattern::new(1 << 20, 1, 1 << 13, 1, vec![0; (1 << 20) + 1], vec![]).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "nrows", .. }),
        "{err:?}"
    );
    let err = BsrPattern::new(1, 1 << 20, 1, 1 << 13, vec![0, 0], vec![]).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "ncols", .. }),
        "{err:?}"
    );
    let err = BsrPattern::new(1, 1, 1 << 16, 1 << 16, vec![0, 1], vec![0]).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
}

#[test]
fn csr_values_length_mismatch() {
    let p = Arc::new(CsrPattern::new(2, 3, vec![0, 2, 3], vec![0, 2, 1]).unwrap());
    expect_length(Csr::new(Arc::clone(&p), &[1.0, 2.0]), "CSR values", 3, 2);
    expect_length(Csr::new(Arc::clone(&p), &[1.0; 4]), "CSR values", 3, 4);
    expect_length(Csr::new(p, &[]), "CSR values", 3, 0);
    expect_length(
        Csr::from_parts(2, 3, vec![0, 2, 3], vec![0, 2, 1], &[1.0]),
        "CSR values",
        3,
        1,
    );
    expect_length(
        Csr::from_parts(0, 0, vec![0], vec![], &[1.0]),
        "CSR values",
        0,
        1,
    );
}

#[test]
fn dense_conversions_reject_wrong_lengths() {
    expect_length(Csr::from_dense(&[1.0; 5], 2, 3), "dense matrix", 6, 5);
    expect_length(Csr::from_dense(&[1.0; 7], 2, 3), "dense matrix", 6, 7);
    expect_length(Csr::from_dense(&[1.0], 0, 3), "dense matrix", 0, 1);
    expect_length(CsrPattern::from_dense(&[], 2, 3), "dense matrix", 6, 0);
    expect_length(
        Bsr::from_dense(&[1.0; 15], 4, 4, 2, 2),
        "dense matrix",
        16,
        15,
    );
    // Overflowing shapes never match any real buffer.
    assert!(Csr::from_dense(&[], usize::MAX, 2).is_err());
    assert!(Bsr::from_dense(&[], usize::MAX, 2, 1, 1).is_err());
}

// ---------------------------------------------------------------------------------------
// BSR
// ---------------------------------------------------------------------------------------

#[test]
fn bsr_pattern_new_rejects_broken_block_structure() {
    for c in bad_csr_cases() {
        for (r, cc) in [(1, 1), (2, 3), (4, 4)] {
            let err = expect_err(
                BsrPattern::new(
                    c.nrows,
                    c.ncols,
                    r,
                    cc,
                    c.row_ptr.clone(),
                    c.col_idx.clone(),
                ),
                c.needles,
            );
            assert!(
                matches!(err, Error::InvalidPattern { format: "BSR", .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("block structure"), "{err}");
        }
    }
}

#[test]
fn bsr_zero_block_size() {
    for (r, c) in [(0, 1), (1, 0), (0, 0), (0, 4)] {
        let err = expect_err(
            BsrPattern::new(2, 2, r, c, vec![0, 1, 2], vec![0, 1]),
            &["block", "at least 1×1"],
        );
        assert!(
            matches!(err, Error::InvalidArgument { name: "block", .. }),
            "{err:?}"
        );
        let err = expect_err(
            BsrPattern::new(0, 0, r, c, vec![0], vec![]),
            &["at least 1×1"],
        );
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        let blocks = CsrPattern::full(2, 2).unwrap();
        expect_err(
            BsrPattern::from_block_pattern(blocks, r, c),
            &["at least 1×1"],
        );
        expect_err(
            BsrPattern::random(3, 3, r, c, 2, &mut seed_rng(0)),
            &["at least 1×1"],
        );
        expect_err(Bsr::from_dense(&[1.0; 4], 2, 2, r, c), &["at least 1×1"]);
        let csr = Csr::from_dense(&[1.0; 4], 2, 2).unwrap();
        expect_err(Bsr::from_csr(&csr, r, c), &["at least 1×1"]);
    }
}

#[test]
fn bsr_conversions_reject_indivisible_shapes() {
    for &(m, k, r, c) in &[
        (5, 4, 2, 2),
        (4, 5, 2, 2),
        (3, 3, 4, 4),
        (1, 16, 2, 1),
        (16, 15, 8, 8),
        (9, 10, 3, 4),
    ] {
        let dense: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let err = expect_err(
            Bsr::from_dense(&dense, m, k, r, c),
            &["does not divide", &format!("{r}×{c}")],
        );
        assert!(
            matches!(
                err,
                Error::Shape {
                    op: "BSR conversion",
                    ..
                }
            ),
            "{err:?}"
        );
        let csr = Csr::from_dense(&dense, m, k).unwrap();
        let err = expect_err(Bsr::from_csr(&csr, r, c), &["does not divide"]);
        assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    }
    // 0-sized matrices divide into any block shape.
    Bsr::from_dense(&[], 0, 0, 3, 5).unwrap();
    Bsr::from_dense(&[], 0, 10, 3, 5).unwrap();
}

#[test]
fn bsr_values_length_mismatch() {
    let p = Arc::new(BsrPattern::new(2, 2, 2, 3, vec![0, 1, 2], vec![1, 0]).unwrap());
    assert_eq!(p.nnz(), 12);
    expect_length(Bsr::new(Arc::clone(&p), &[0.0; 11]), "BSR values", 12, 11);
    expect_length(Bsr::new(Arc::clone(&p), &[0.0; 2]), "BSR values", 12, 2);
    expect_length(Bsr::new(p, &[0.0; 13]), "BSR values", 12, 13);
}

// ---------------------------------------------------------------------------------------
// random patterns and helpers
// ---------------------------------------------------------------------------------------

#[test]
fn nnz_for_sparsity_outside_unit_interval() {
    for s in [
        -0.1,
        1.0001,
        2.0,
        -f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let err = expect_err(nnz_for_sparsity(10, 10, s), &["sparsity", "[0, 1]"]);
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "sparsity",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(nnz_for_sparsity(10, 10, 0.0).unwrap(), 100);
    assert_eq!(nnz_for_sparsity(10, 10, 1.0).unwrap(), 0);
}

#[test]
fn random_patterns_reject_too_many_entries() {
    let mut rng = seed_rng(0);
    let err = expect_err(
        CsrPattern::random(3, 4, 13, &mut rng),
        &["nnz", "13", "3×4"],
    );
    assert!(
        matches!(err, Error::InvalidArgument { name: "nnz", .. }),
        "{err:?}"
    );
    expect_err(CsrPattern::random(0, 4, 1, &mut rng), &["nnz"]);
    expect_err(CsrPattern::random(4, 0, 1, &mut rng), &["nnz"]);
    // exactly full is fine
    assert_eq!(CsrPattern::random(3, 4, 12, &mut rng).unwrap().nnz(), 12);
    // per-row requests longer than a row
    let err = expect_err(
        CsrPattern::random_rows(5, &[1, 6, 0], &mut rng),
        &["row 1", "6", "5 columns"],
    );
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    expect_err(
        CsrPattern::random_per_row(4, 3, 4, &mut rng),
        &["4 entries"],
    );
    expect_err(CsrPattern::random_per_row(2, 0, 1, &mut rng), &["row 0"]);
    // BSR: more blocks than the grid holds
    expect_err(BsrPattern::random(2, 2, 4, 4, 5, &mut rng), &["nnz"]);
    // skewed rows longer than ncols
    expect_err(
        skewed_row_nnz(100, 10, 900, 0.1, 0.9),
        &["needs rows longer than 10"],
    );
}

// ---------------------------------------------------------------------------------------
// kernels: operands of the wrong length
// ---------------------------------------------------------------------------------------

/// A 3 × 4 CSR pattern with 5 entries and a 2 × 3 grid of 2 × 2 blocks (4 × 6).
fn small_operands() -> (CsrPattern, BsrPattern) {
    let csr = CsrPattern::new(3, 4, vec![0, 2, 2, 5], vec![0, 3, 0, 1, 2]).unwrap();
    let bsr = BsrPattern::new(2, 3, 2, 2, vec![0, 2, 3], vec![0, 2, 1]).unwrap();
    (csr, bsr)
}

const ALL_PARS: [Par; 2] = [Par::Seq, Par::Rayon(2)];

#[test]
fn spmm_rejects_wrong_lengths() {
    let (p, _) = small_operands();
    let n = 5;
    for par in ALL_PARS {
        let (m, k, nnz) = (3, 4, 5);
        let run =
            |c: &mut [f32], v: &[f32], b: &[f32]| spmm(c, &p, v, b, n, 1.0, Accum::Replace, par);
        let (mut c, v, b) = (vec![7.0; m * n], vec![1.0; nnz], vec![1.0; k * n]);
        expect_length(run(&mut c, &v[..4], &b), "spmm A values", nnz, 4);
        expect_length(run(&mut c, &[1.0; 6], &b), "spmm A values", nnz, 6);
        expect_length(run(&mut c, &v, &b[1..]), "spmm B (K×N)", k * n, k * n - 1);
        expect_length(run(&mut c, &v, &[1.0; 21]), "spmm B (K×N)", k * n, 21);
        expect_length(run(&mut c[1..], &v, &b), "spmm C (M×N)", m * n, m * n - 1);
        expect_length(run(&mut [0.0; 16], &v, &b), "spmm C (M×N)", m * n, 16);
        expect_length(run(&mut [], &v, &b), "spmm C (M×N)", m * n, 0);
        // Nothing was written on failure.
        assert!(c.iter().all(|&x| x == 7.0));
        // And the right lengths work.
        run(&mut c, &v, &b).unwrap();
    }
}

#[test]
fn spmm_t_rejects_wrong_lengths() {
    let (p, _) = small_operands();
    let n = 3;
    for par in ALL_PARS {
        let (m, k, nnz) = (3, 4, 5);
        let run =
            |c: &mut [f32], v: &[f32], b: &[f32]| spmm_t(c, &p, v, b, n, 1.0, Accum::Add(1.0), par);
        let (mut c, v, b) = (vec![7.0; k * n], vec![1.0; nnz], vec![1.0; m * n]);
        expect_length(run(&mut c, &v[..1], &b), "spmm_t A values", nnz, 1);
        // B and C swapped (the shapes of spmm, not spmm_t) are rejected.
        expect_length(run(&mut c, &v, &[1.0; 12]), "spmm_t B (M×N)", m * n, 12);
        expect_length(run(&mut [0.0; 9], &v, &b), "spmm_t C (K×N)", k * n, 9);
        expect_length(run(&mut c, &v, &[]), "spmm_t B (M×N)", m * n, 0);
        assert!(c.iter().all(|&x| x == 7.0));
        run(&mut c, &v, &b).unwrap();
    }
}

#[test]
fn sddmm_rejects_wrong_lengths() {
    let (p, _) = small_operands();
    let n = 4;
    for par in ALL_PARS {
        let (m, k, nnz) = (3, 4, 5);
        let run =
            |v: &mut [f32], l: &[f32], r: &[f32]| sddmm(v, &p, l, r, n, 1.0, Accum::Replace, par);
        let (mut v, l, r) = (vec![7.0; nnz], vec![1.0; m * n], vec![1.0; k * n]);
        expect_length(run(&mut v[..4], &l, &r), "sddmm values", nnz, 4);
        expect_length(run(&mut [0.0; 6], &l, &r), "sddmm values", nnz, 6);
        expect_length(run(&mut v, &l[1..], &r), "sddmm L (M×N)", m * n, m * n - 1);
        expect_length(run(&mut v, &r, &r), "sddmm L (M×N)", m * n, k * n);
        expect_length(run(&mut v, &l, &l), "sddmm R (K×N)", k * n, m * n);
        expect_length(run(&mut v, &l, &[]), "sddmm R (K×N)", k * n, 0);
        assert!(v.iter().all(|&x| x == 7.0));
        run(&mut v, &l, &r).unwrap();
    }
    // Even an empty pattern checks its operands.
    let e = CsrPattern::empty(0, 2).unwrap();
    expect_length(
        sddmm(&mut [], &e, &[], &[1.0], 1, 1.0, Accum::Replace, Par::Seq),
        "sddmm R (K×N)",
        2,
        1,
    );
}

#[test]
fn bsr_spmm_rejects_wrong_lengths() {
    let (_, p) = small_operands();
    let n = 9;
    for par in ALL_PARS {
        let (m, k, nnz) = (4, 6, 12);
        let run = |c: &mut [f32], v: &[f32], b: &[f32]| {
            bsr_spmm(c, &p, v, b, n, 1.0, Accum::Replace, par)
        };
        let (mut c, v, b) = (vec![7.0; m * n], vec![1.0; nnz], vec![1.0; k * n]);
        // one value per block instead of r·c
        expect_length(run(&mut c, &v[..3], &b), "bsr_spmm A values", nnz, 3);
        expect_length(run(&mut c, &[1.0; 13], &b), "bsr_spmm A values", nnz, 13);
        // B with the block-grid column count instead of the element count
        expect_length(
            run(&mut c, &v, &b[..3 * n]),
            "bsr_spmm B (K×N)",
            k * n,
            3 * n,
        );
        expect_length(
            run(&mut c[..2 * n], &v, &b),
            "bsr_spmm C (M×N)",
            m * n,
            2 * n,
        );
        expect_length(run(&mut [0.0; 37], &v, &b), "bsr_spmm C (M×N)", m * n, 37);
        assert!(c.iter().all(|&x| x == 7.0));
        run(&mut c, &v, &b).unwrap();
    }
}

#[test]
fn gemm_rejects_wrong_lengths() {
    let (m, k, n) = (3, 4, 5);
    for par in ALL_PARS {
        let (mut c, a, b) = (vec![7.0; m * n], vec![1.0; m * k], vec![1.0; k * n]);
        let run =
            |c: &mut [f32], a: &[f32], b: &[f32]| gemm(c, a, b, m, k, n, 1.0, Accum::Replace, par);
        expect_length(run(&mut c, &a[1..], &b), "gemm A", m * k, m * k - 1);
        expect_length(run(&mut c, &a, &b[..19]), "gemm B", k * n, 19);
        expect_length(run(&mut c[..14], &a, &b), "gemm C (M×N)", m * n, 14);
        expect_length(run(&mut c, &[], &b), "gemm A", m * k, 0);
        // k = 0 still checks A and B.
        expect_length(
            gemm(&mut c, &[1.0], &[], m, 0, n, 1.0, Accum::Replace, par),
            "gemm A",
            0,
            1,
        );
        for (ta, tb) in [(Trans::Yes, Trans::No), (Trans::No, Trans::Yes)] {
            expect_length(
                gemm_ex(
                    &mut c,
                    &a[..11],
                    ta,
                    &b,
                    tb,
                    m,
                    k,
                    n,
                    1.0,
                    Accum::Add(1.0),
                    par,
                ),
                "gemm A",
                m * k,
                11,
            );
            expect_length(
                gemm_ex(
                    &mut c,
                    &a,
                    ta,
                    &b[..1],
                    tb,
                    m,
                    k,
                    n,
                    1.0,
                    Accum::Add(1.0),
                    par,
                ),
                "gemm B",
                k * n,
                1,
            );
            expect_length(
                gemm_ex(&mut [], &a, ta, &b, tb, m, k, n, 1.0, Accum::Add(1.0), par),
                "gemm C (M×N)",
                m * n,
                0,
            );
        }
        assert!(c.iter().all(|&x| x == 7.0));
        run(&mut c, &a, &b).unwrap();
    }
}

/// A pattern paired with the values of another pattern of the same nnz but different
/// shape is caught by the B/C checks.
#[test]
fn kernels_reject_operands_of_a_different_shape() {
    let p = CsrPattern::random(6, 4, 10, &mut seed_rng(1)).unwrap();
    let q = CsrPattern::random(4, 6, 10, &mut seed_rng(2)).unwrap();
    let v = vec![1.0; 10];
    let n = 2;
    // B sized for q's K (6) instead of p's (4)
    let b = vec![1.0; q.ncols() * n];
    let mut c = vec![0.0; p.nrows() * n];
    expect_length(
        spmm(&mut c, &p, &v, &b, n, 1.0, Accum::Replace, Par::Seq),
        "spmm B (K×N)",
        8,
        12,
    );
    // C sized M×N passed to spmm_t, which writes K×N
    let b = vec![1.0; p.nrows() * n];
    expect_length(
        spmm_t(&mut c, &p, &v, &b, n, 1.0, Accum::Replace, Par::Seq),
        "spmm_t C (K×N)",
        8,
        12,
    );
}

/// `K·N` and `M·N` in the kernels' length checks are computed without overflow checks:
/// with an `n` whose products wrap, the kernel panics (debug) instead of returning
/// `Err`, and in release the wrapped products can equal the buffer lengths (0 here), so
/// the check passes and the kernel writes out of bounds.
#[test]
fn kernels_reject_overflowing_n() {
    let p = CsrPattern::new(2, 2, vec![0, 1, 2], vec![0, 1]).unwrap();
    let n = 1usize << (usize::BITS - 1); // 2·n wraps to 0
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        spmm(
            &mut [],
            &p,
            &[1.0, 1.0],
            &[],
            n,
            1.0,
            Accum::Replace,
            Par::Seq,
        )
    }));
    assert!(matches!(res, Ok(Err(_))), "spmm: {res:?}");
}

/// `skewed_row_nnz` with `frac_nnz > 1` computes `nnz - heavy_nnz` with
/// `heavy_nnz > nnz` and panics on the subtraction instead of returning `Err`.
#[test]
fn skewed_row_nnz_rejects_fraction_above_one() {
    let res = std::panic::catch_unwind(|| skewed_row_nnz(10, 10, 50, 0.5, 1.5));
    assert!(matches!(res, Ok(Err(_))), "{res:?}");
}

/// `CsrPattern::random_rows` sums the requested row lengths (and reserves that much)
/// before it checks any of them against `ncols`: an absurd length panics (sum overflow
/// or capacity overflow) instead of returning `Err`.
#[test]
fn random_rows_rejects_absurd_lengths_before_reserving() {
    let res =
        std::panic::catch_unwind(|| CsrPattern::random_rows(5, &[1usize << 62], &mut seed_rng(0)));
    assert!(matches!(res, Ok(Err(_))), "capacity: {res:?}");
    let res =
        std::panic::catch_unwind(|| CsrPattern::random_rows(5, &[usize::MAX, 1], &mut seed_rng(0)));
    assert!(matches!(res, Ok(Err(_))), "sum: {res:?}");
}

/// `BsrPattern::from_block_pattern` computes `r * c` unchecked: a huge block shape on
/// an empty grid panics (debug) instead of returning `Err`.
#[test]
fn bsr_huge_block_shape_is_an_error() {
    let res = std::panic::catch_unwind(|| {
        BsrPattern::new(0, 0, 1usize << 40, 1usize << 40, vec![0], vec![])
    });
    assert!(matches!(res, Ok(Err(_))), "{res:?}");
}

// ---------------------------------------------------------------------------------------
// property tests
// ---------------------------------------------------------------------------------------

/// The CSR invariants, written independently of the crate.
fn csr_invariants_hold(nrows: usize, ncols: usize, row_ptr: &[u32], col_idx: &[u32]) -> bool {
    if row_ptr.len() != nrows + 1 || row_ptr[0] != 0 {
        return false;
    }
    if row_ptr.windows(2).any(|w| w[0] > w[1]) {
        return false;
    }
    if row_ptr[nrows] as usize != col_idx.len() {
        return false;
    }
    (0..nrows).all(|i| {
        let row = &col_idx[row_ptr[i] as usize..row_ptr[i + 1] as usize];
        row.iter().all(|&c| (c as usize) < ncols) && row.windows(2).all(|w| w[0] < w[1])
    })
}

/// Checks that an accepted pattern exposes exactly the arrays it was built from and
/// that its accessors agree with them.
fn check_accepted(p: &CsrPattern, nrows: usize, ncols: usize, row_ptr: &[u32], col_idx: &[u32]) {
    assert_eq!((p.nrows(), p.ncols()), (nrows, ncols));
    assert_eq!(p.row_ptr(), row_ptr);
    assert_eq!(p.col_idx(), col_idx);
    assert_eq!(p.nnz(), col_idx.len());
    assert!(csr_invariants_hold(
        p.nrows(),
        p.ncols(),
        p.row_ptr(),
        p.col_idx()
    ));
    let mut total = 0;
    for i in 0..nrows {
        total += p.row(i).len();
        assert_eq!(p.row_range(i).len(), p.row(i).len());
    }
    assert_eq!(total, p.nnz());
    assert_eq!(p.row_indices().len(), p.nnz());
}

/// A valid pattern from a sparse random mask, then at most one random damage.
fn damaged_csr(
    nrows: usize,
    ncols: usize,
    mask: &[bool],
    damage: u8,
    a: usize,
    b: u32,
) -> (usize, usize, Vec<u32>, Vec<u32>) {
    let mut row_ptr = vec![0u32];
    let mut col_idx = Vec::new();
    for i in 0..nrows {
        for j in 0..ncols {
            if mask[i * ncols + j] {
                col_idx.push(j as u32);
            }
        }
        row_ptr.push(col_idx.len() as u32);
    }
    let nnz = col_idx.len();
    match damage {
        // 0..=3: left valid
        4 => row_ptr[a % (nrows + 1)] = row_ptr[a % (nrows + 1)].wrapping_add(1 + b % 4),
        5 => row_ptr[a % (nrows + 1)] = row_ptr[a % (nrows + 1)].saturating_sub(1 + b % 4),
        6 if nnz > 1 => {
            let i = a % (nnz - 1);
            col_idx.swap(i, i + 1);
        }
        7 if nnz > 1 => {
            let i = a % (nnz - 1);
            col_idx[i + 1] = col_idx[i];
        }
        8 if nnz > 0 => col_idx[a % nnz] = ncols as u32 + b % 3,
        9 if nnz > 0 => col_idx[a % nnz] = b,
        10 => {
            row_ptr.pop();
        }
        11 => row_ptr.push(nnz as u32),
        12 => col_idx.push(b % (ncols as u32 + 1)),
        13 if nnz > 0 => {
            col_idx.pop();
        }
        14 => row_ptr[0] = 1 + b % 3,
        15 => row_ptr = row_ptr.iter().rev().copied().collect(),
        _ => {}
    }
    (nrows, ncols, row_ptr, col_idx)
}

/// Raw CSR arrays: pure garbage, or a valid structure with random damage.
fn garbage_csr() -> impl Strategy<Value = (usize, usize, Vec<u32>, Vec<u32>)> {
    let small_u32 = prop_oneof![4 => 0u32..60, 1 => any::<u32>()];
    let pure = (
        0usize..50,
        0usize..50,
        prop::collection::vec(small_u32.clone(), 0..60),
        prop::collection::vec(small_u32, 0..200),
    );
    let near_valid = (0usize..50, 0usize..50)
        .prop_flat_map(|(nrows, ncols)| {
            (
                Just(nrows),
                Just(ncols),
                prop::collection::vec(prop::bool::weighted(0.08), nrows * ncols),
                0u8..16,
                any::<usize>(),
                any::<u32>(),
            )
        })
        .prop_map(|(nrows, ncols, mask, damage, a, b)| {
            damaged_csr(nrows, ncols, &mask, damage, a, b)
        });
    prop_oneof![1 => pure, 3 => near_valid]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Garbage never panics CsrPattern::new, and it accepts exactly the valid inputs.
    #[test]
    fn csr_new_accepts_exactly_the_valid((nrows, ncols, row_ptr, col_idx) in garbage_csr()) {
        let valid = csr_invariants_hold(nrows, ncols, &row_ptr, &col_idx);
        match CsrPattern::new(nrows, ncols, row_ptr.clone(), col_idx.clone()) {
            Ok(p) => {
                prop_assert!(valid, "accepted an invalid pattern");
                check_accepted(&p, nrows, ncols, &row_ptr, &col_idx);
                // The transpose of an accepted pattern is valid and round-trips.
                let t = p.transpose();
                prop_assert!(csr_invariants_hold(
                    t.pattern.nrows(), t.pattern.ncols(), t.pattern.row_ptr(), t.pattern.col_idx()
                ));
                prop_assert_eq!(&t.pattern.transpose().pattern, &p);
            }
            Err(e) => {
                prop_assert!(!valid, "rejected a valid pattern: {}", e);
                let is_invalid_csr = matches!(e, Error::InvalidPattern { format: "CSR", .. });
                prop_assert!(is_invalid_csr, "{:?}", e);
            }
        }
        // Csr::from_parts agrees, and checks the value count.
        let values = vec![1.0f32; col_idx.len()];
        let from_parts = Csr::from_parts(nrows, ncols, row_ptr.clone(), col_idx.clone(), &values);
        prop_assert_eq!(from_parts.is_ok(), valid);
        if valid {
            let res = Csr::from_parts(nrows, ncols, row_ptr, col_idx, &values[1.min(values.len())..]);
            prop_assert_eq!(res.is_ok(), values.is_empty());
        }
    }

    /// Garbage never panics BsrPattern::new; accepted patterns are valid at both levels.
    #[test]
    fn bsr_new_accepts_exactly_the_valid(
        (brows, bcols, row_ptr, col_idx) in garbage_csr(),
        r in 0usize..5,
        c in 0usize..5,
    ) {
        let valid = csr_invariants_hold(brows, bcols, &row_ptr, &col_idx) && r > 0 && c > 0;
        match BsrPattern::new(brows, bcols, r, c, row_ptr.clone(), col_idx.clone()) {
            Ok(p) => {
                prop_assert!(valid, "accepted an invalid pattern");
                check_accepted(p.blocks(), brows, bcols, &row_ptr, &col_idx);
                prop_assert_eq!((p.nrows(), p.ncols()), (brows * r, bcols * c));
                prop_assert_eq!(p.nnz(), col_idx.len() * r * c);
                let e = p.to_csr_pattern();
                prop_assert!(csr_invariants_hold(e.nrows(), e.ncols(), e.row_ptr(), e.col_idx()));
                prop_assert_eq!(e.nnz(), p.nnz());
                // Values of the right length are accepted, others rejected.
                let v = vec![1.0f32; p.nnz()];
                let pa = Arc::new(p);
                prop_assert!(Bsr::new(Arc::clone(&pa), &v).is_ok());
                let extra = [v.as_slice(), &[1.0]].concat();
                let is_length = matches!(Bsr::new(pa, &extra), Err(Error::Length { .. }));
                prop_assert!(is_length);
            }
            Err(e) => {
                prop_assert!(!valid, "rejected a valid pattern: {}", e);
                let expected_kind = matches!(
                    e,
                    Error::InvalidPattern { format: "BSR", .. } | Error::InvalidArgument { .. }
                );
                prop_assert!(expected_kind, "{:?}", e);
            }
        }
    }

    /// Patterns built from dense 0/1 masks are accepted, reproduce their mask, agree with
    /// from_dense, and their transpose round-trips with a value permutation that moves
    /// every value to its transposed place.
    #[test]
    fn mask_patterns_are_valid_and_transpose(
        (nrows, ncols, mask) in (0usize..20, 0usize..20).prop_flat_map(|(m, k)| {
            (Just(m), Just(k), prop::collection::vec(any::<bool>(), m * k))
        })
    ) {
        let mut row_ptr = vec![0u32];
        let mut col_idx = Vec::new();
        for i in 0..nrows {
            for j in 0..ncols {
                if mask[i * ncols + j] {
                    col_idx.push(j as u32);
                }
            }
            row_ptr.push(col_idx.len() as u32);
        }
        let p = CsrPattern::new(nrows, ncols, row_ptr.clone(), col_idx.clone())
            .expect("a pattern from a mask is valid");
        check_accepted(&p, nrows, ncols, &row_ptr, &col_idx);
        let dense_mask: Vec<f32> = mask.iter().map(|&b| f32::from(u8::from(b))).collect();
        prop_assert_eq!(p.to_dense_mask(), dense_mask.clone());
        prop_assert_eq!(&CsrPattern::from_dense(&dense_mask, nrows, ncols).unwrap(), &p);

        let t = p.transpose();
        // The transpose is the pattern of the transposed mask.
        let mut tmask = vec![0.0f32; nrows * ncols];
        for i in 0..nrows {
            for j in 0..ncols {
                tmask[j * nrows + i] = dense_mask[i * ncols + j];
            }
        }
        prop_assert_eq!(&CsrPattern::from_dense(&tmask, ncols, nrows).unwrap(), &t.pattern);
        prop_assert_eq!(&t.pattern.transpose().pattern, &p);
        // Values numbered by entry land where the transpose says.
        let values: Vec<f32> = (0..p.nnz()).map(|q| q as f32 + 1.0).collect();
        let dense = Csr::new(Arc::new(p.clone()), &values).unwrap().to_dense();
        let tvalues: Vec<f32> = t.perm.iter().map(|&q| values[q as usize]).collect();
        let tdense = Csr::new(Arc::new(t.pattern.clone()), &tvalues).unwrap().to_dense();
        for i in 0..nrows {
            for j in 0..ncols {
                prop_assert_eq!(tdense[j * nrows + i], dense[i * ncols + j]);
            }
        }
        // The same mask through BSR 1×1 blocks gives the same structure.
        let bp = BsrPattern::new(nrows, ncols, 1, 1, row_ptr, col_idx).unwrap();
        prop_assert_eq!(&bp.to_csr_pattern(), &p);
    }
}

#[test]
fn entries_without_rows_leaky_slopes_and_reserved_metadata_are_errors() {
    expect_err(skewed_row_nnz(0, 10, 5, 0.1, 0.5), &["0 rows"]);
    assert_eq!(
        skewed_row_nnz(0, 10, 0, 0.1, 0.5).unwrap(),
        Vec::<usize>::new()
    );
    use rewire::nn::{Activation, Mlp, MlpConfig};
    for slope in [f32::NAN, f32::INFINITY, 1e20, -0.5] {
        let cfg = MlpConfig {
            activation: Activation::LeakyRelu(slope),
            ..MlpConfig::new(8, &[6], 3)
        };
        expect_err(Mlp::new(cfg).map(|_| ()), &["slope"]);
    }
    let m = Mlp::new(MlpConfig::new(8, &[6], 3)).unwrap();
    let path = std::env::temp_dir().join(format!("rewire-meta-{}.safetensors", std::process::id()));
    let meta =
        std::collections::BTreeMap::from([("sparse:fc1.weight".to_string(), "1,2".to_string())]);
    expect_err(
        rewire::io::save(&path, &m, &meta),
        &["reserved", "sparse:fc1.weight"],
    );
    assert!(!path.exists());
}
