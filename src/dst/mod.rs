//! Dynamic sparse training: the rewiring engine. A method decides, at scheduled steps,
//! which live connections of a sparse layer to drop and which to grow; [`apply_edit`]
//! carries the decision out on the pattern, the values and the optimizer state.
//!
//! Rules of an edit (checked, an `Error` otherwise): dropped entries are live and named
//! once; grown connections are in range, named once, and not live after the drops.
//! Survivors keep their value and optimizer state; a connection dropped and grown in the
//! same edit is a survivor; every other grown connection starts at zero value and zero
//! state. The edited pattern is a new [`CsrPattern`] with a new version, so everything
//! cached against the old one (transposes) is rebuilt.

pub mod rewirer;

pub use rewirer::{
    GrowScores, MethodKind, RewireConfig, Rewirer, TapeScores, UpdateReport, UpdateSchedule,
};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::optim::Optimizer;
use crate::sparse::CsrPattern;

/// One rewiring of one sparse layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// entries of the current pattern to drop (indices into its values)
    pub drop: Vec<u32>,
    /// connections `(row, col)` to grow
    pub grow: Vec<(u32, u32)>,
}

/// What an edit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditStats {
    /// live entries before
    pub nnz_before: usize,
    /// live entries after
    pub nnz_after: usize,
    /// entries dropped and not grown back
    pub dropped: usize,
    /// connections grown that were not live before
    pub grown: usize,
}

/// The pattern after `edit`: `(old − drop) ∪ grow`, rows sorted.
pub fn edited_pattern(old: &CsrPattern, edit: &Edit) -> Result<CsrPattern> {
    let bad = |detail: String| Error::arg("edit", detail);
    let nnz = old.nnz();
    let mut dropped = vec![false; nnz];
    for &p in &edit.drop {
        let p = p as usize;
        if p >= nnz {
            return Err(bad(format!("dropped entry {p} out of range (nnz = {nnz})")));
        }
        if std::mem::replace(&mut dropped[p], true) {
            return Err(bad(format!("entry {p} dropped twice")));
        }
    }
    let mut grow_rows: Vec<Vec<u32>> = vec![Vec::new(); old.nrows()];
    for &(r, c) in &edit.grow {
        if r as usize >= old.nrows() || c as usize >= old.ncols() {
            return Err(bad(format!(
                "grown connection ({r}, {c}) outside the {}×{} layer",
                old.nrows(),
                old.ncols()
            )));
        }
        grow_rows[r as usize].push(c);
    }
    let mut row_ptr = Vec::with_capacity(old.nrows() + 1);
    row_ptr.push(0u32);
    let mut col_idx = Vec::with_capacity(nnz + edit.grow.len());
    for (i, grow) in grow_rows.iter_mut().enumerate() {
        grow.sort_unstable();
        if let Some(w) = grow.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("connection ({i}, {}) grown twice", w[0])));
        }
        let kept = old
            .row_range(i)
            .filter(|&p| !dropped[p])
            .map(|p| old.col_idx()[p]);
        // merge two sorted lists; a grown column that is still live is an error
        let mut g = grow.iter().copied().peekable();
        for c in kept {
            while let Some(&gc) = g.peek() {
                if gc < c {
                    col_idx.push(gc);
                    g.next();
                } else if gc == c {
                    return Err(bad(format!("grown connection ({i}, {c}) is already live")));
                } else {
                    break;
                }
            }
            col_idx.push(c);
        }
        col_idx.extend(g);
        row_ptr.push(u32::try_from(col_idx.len()).map_err(|_| Error::TooLarge {
            what: "nnz",
            value: col_idx.len(),
        })?);
    }
    CsrPattern::new(old.nrows(), old.ncols(), row_ptr, col_idx)
}

/// Applies `edit` to the sparse parameter `id`: new pattern, values and gradient remapped
/// (survivors keep theirs, new connections start at zero), optimizer state remapped the
/// same way.
pub fn apply_edit(
    params: &mut ParamStore,
    opt: &mut Optimizer,
    id: ParamId,
    edit: &Edit,
) -> Result<EditStats> {
    let param = params.get_mut(id);
    let old = param
        .pattern()
        .cloned()
        .ok_or_else(|| Error::arg("edit", format!("{} is not a sparse parameter", param.name)))?;
    let new = Arc::new(edited_pattern(&old, edit)?);
    param.set_pattern(Arc::clone(&new), 0.0)?;
    opt.remap(id, &old, &new)?;
    let survivors = count_common(&old, &new);
    Ok(EditStats {
        nnz_before: old.nnz(),
        nnz_after: new.nnz(),
        dropped: old.nnz() - survivors,
        grown: new.nnz() - survivors,
    })
}

/// Connections live in both patterns (same shape).
fn count_common(a: &CsrPattern, b: &CsrPattern) -> usize {
    (0..a.nrows())
        .map(|i| {
            let (mut x, mut y) = (a.row(i).iter().peekable(), b.row(i).iter().peekable());
            let mut n = 0;
            while let (Some(&&p), Some(&&q)) = (x.peek(), y.peek()) {
                match p.cmp(&q) {
                    std::cmp::Ordering::Less => {
                        x.next();
                    }
                    std::cmp::Ordering::Greater => {
                        y.next();
                    }
                    std::cmp::Ordering::Equal => {
                        n += 1;
                        x.next();
                        y.next();
                    }
                }
            }
            n
        })
        .sum()
}
