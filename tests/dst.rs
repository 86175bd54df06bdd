//! The rewiring engine: invariants after every edit.

use std::sync::Arc;

use rewire::cpu::reference::spmm_t_ref;
use rewire::cpu::{spmm_t, Accum, Par};
use rewire::dst::{apply_edit, edited_pattern, Edit};
use rewire::nn::{Param, ParamShape, ParamStore};
use rewire::optim::{Optimizer, OptimizerConfig};
use rewire::sparse::{aligned_from_slice, seed_rng, CsrPattern};

fn setup() -> (ParamStore, Optimizer, rewire::nn::ParamId) {
    // 3×5:  row 0: cols 0 2 4;  row 1: (empty);  row 2: cols 1 3
    let pattern = CsrPattern::new(3, 5, vec![0, 3, 3, 5], vec![0, 2, 4, 1, 3]).unwrap();
    let values = [1.0, 2.0, 3.0, 4.0, 5.0];
    let mut params = ParamStore::new();
    let id = params.add(
        Param::new(
            "w",
            ParamShape::Sparse {
                pattern: Arc::new(pattern),
            },
            aligned_from_slice(&values),
            true,
        )
        .unwrap(),
    );
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        &params,
    )
    .unwrap();
    // give the momentum buffer recognisable contents: one step with gradient = value
    let v: Vec<f32> = params.get(id).value.to_vec();
    params.get_mut(id).grad.copy_from_slice(&v);
    opt.step(&mut params, 0.0).unwrap(); // lr 0: values unchanged, buffer = grad
    (params, opt, id)
}

#[test]
fn edit_keeps_survivors_and_zeroes_new_connections() {
    let (mut params, mut opt, id) = setup();
    let old_version = params.get(id).pattern().unwrap().version();
    // drop (0,2)=2.0 and (2,3)=5.0; grow (1,1) and (0,3)
    let edit = Edit {
        drop: vec![1, 4],
        grow: vec![(1, 1), (0, 3)],
    };
    let stats = apply_edit(&mut params, &mut opt, id, &edit).unwrap();
    assert_eq!(
        (
            stats.nnz_before,
            stats.nnz_after,
            stats.dropped,
            stats.grown
        ),
        (5, 5, 2, 2)
    );
    let p = params.get(id);
    let pat = p.pattern().unwrap();
    assert_ne!(pat.version(), old_version);
    assert_eq!(pat.row_ptr(), &[0, 3, 4, 5]);
    assert_eq!(pat.col_idx(), &[0, 3, 4, 1, 1]);
    assert_eq!(&p.value[..], &[1.0, 0.0, 3.0, 0.0, 4.0]);
    assert_eq!(&opt.state(id)[0][..], &[1.0, 0.0, 3.0, 0.0, 4.0]);
    assert!(p.grad.iter().all(|&g| g == 0.0));
    // the optimizer accepts the new pattern
    params.get_mut(id).grad.fill(1.0);
    opt.step(&mut params, 0.1).unwrap();
}

#[test]
fn dropped_and_regrown_connection_keeps_its_value() {
    let (mut params, mut opt, id) = setup();
    let edit = Edit {
        drop: vec![0, 1],
        grow: vec![(0, 0), (1, 4)],
    };
    let stats = apply_edit(&mut params, &mut opt, id, &edit).unwrap();
    assert_eq!((stats.dropped, stats.grown), (1, 1));
    let p = params.get(id);
    assert_eq!(p.pattern().unwrap().col_idx(), &[0, 4, 4, 1, 3]);
    assert_eq!(&p.value[..], &[1.0, 3.0, 0.0, 4.0, 5.0]);
}

#[test]
fn bad_edits_are_errors_and_change_nothing() {
    let (mut params, mut opt, id) = setup();
    let before = params.get(id).value.to_vec();
    let cases = [
        (
            Edit {
                drop: vec![5],
                grow: vec![],
            },
            "out of range",
        ),
        (
            Edit {
                drop: vec![1, 1],
                grow: vec![],
            },
            "twice",
        ),
        (
            Edit {
                drop: vec![],
                grow: vec![(0, 2)],
            },
            "already live",
        ),
        (
            Edit {
                drop: vec![],
                grow: vec![(3, 0)],
            },
            "outside",
        ),
        (
            Edit {
                drop: vec![],
                grow: vec![(1, 0), (1, 0)],
            },
            "twice",
        ),
    ];
    for (edit, what) in cases {
        let err = apply_edit(&mut params, &mut opt, id, &edit).unwrap_err();
        assert!(
            err.to_string().contains(what),
            "{err} should mention {what}"
        );
        assert_eq!(params.get(id).value.to_vec(), before);
    }
}

#[test]
fn random_edits_keep_invariants_and_rebuild_the_transpose() {
    let mut rng = seed_rng(5);
    let (m, k, n) = (40, 30, 9);
    let pattern = CsrPattern::random(m, k, 300, &mut rng).unwrap();
    let mut old = pattern.clone();
    let _ = old.transpose(); // cache it, to be sure the edit does not reuse it
    for round in 0..20u32 {
        // drop every 7th entry (shifted per round), grow as many free connections
        let drop: Vec<u32> = (0..old.nnz() as u32)
            .filter(|p| (p + round) % 7 == 0)
            .collect();
        let dense = old.to_dense_mask();
        let free: Vec<(u32, u32)> = (0..m * k)
            .filter(|&f| dense[f] == 0.0)
            .map(|f| ((f / k) as u32, (f % k) as u32))
            .collect();
        let grow: Vec<(u32, u32)> = free
            .iter()
            .copied()
            .skip(round as usize)
            .step_by(11)
            .take(drop.len())
            .collect();
        let edit = Edit { drop, grow };
        let new = edited_pattern(&old, &edit).unwrap();
        assert_eq!(new.nnz(), old.nnz() - edit.drop.len() + edit.grow.len());
        // checked constructor accepted it: sorted, unique, in range; grown are live now
        for &(r, c) in &edit.grow {
            assert!(new.row(r as usize).binary_search(&c).is_ok());
        }
        // transposed product on the new pattern agrees with the reference
        let values: Vec<f32> = (0..new.nnz()).map(|q| (q % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..m * n).map(|q| (q % 5) as f32 - 2.0).collect();
        let (mut c1, mut c2) = (vec![0.0; k * n], vec![0.0; k * n]);
        spmm_t(&mut c1, &new, &values, &b, n, 1.0, Accum::Replace, Par::Seq).unwrap();
        spmm_t_ref(&mut c2, &new, &values, &b, n, 1.0, Accum::Replace);
        assert_eq!(c1, c2);
        old = new;
    }
}
