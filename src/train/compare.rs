//! Side-by-side comparison of training runs (dense and sparse methods at several
//! sparsities): a table, CSV and JSON files, and SVG plots of accuracy and epoch time
//! against sparsity.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::write_atomically;
use crate::train::EpochReport;

/// One run's summary.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// "dense", "static", "set", "rigl", ...
    pub method: String,
    /// sparsity asked for
    pub sparsity: f64,
    /// fraction of the dense model's weights not live at the end
    pub actual_sparsity: f64,
    /// accuracy after the last epoch, on the set named by `evaluated_on`
    pub test_acc: f64,
    /// what `test_acc` was measured on: `test`, or `holdout:N` (the last `N` training
    /// samples, held out from training)
    pub evaluated_on: String,
    /// test accuracy minus the dense run's, in points
    pub delta_vs_dense: f64,
    /// mean epoch time (training steps), seconds
    pub epoch_s: f64,
    /// dense epoch time / this epoch time
    pub speedup_vs_dense: f64,
    /// live weights at the end
    pub live_weights: usize,
    /// training FLOPs over all epochs
    pub train_flops: f64,
    /// epochs run
    pub epochs: usize,
}

/// Summarises one run's epoch reports, evaluated on `evaluated_on` (`test`,
/// `holdout:N`); the dense-relative fields are filled by [`relate_to_dense`].
pub fn summarize(
    method: &str,
    sparsity: f64,
    reports: &[EpochReport],
    evaluated_on: &str,
) -> Result<CompareRow> {
    let last = reports
        .last()
        .ok_or_else(|| Error::Training(format!("{method} at {sparsity} ran no epoch")))?;
    Ok(CompareRow {
        method: method.to_string(),
        sparsity,
        actual_sparsity: 1.0 - last.live_weights as f64 / last.dense_weights.max(1) as f64,
        test_acc: last.test_acc,
        evaluated_on: evaluated_on.to_string(),
        delta_vs_dense: f64::NAN,
        epoch_s: reports.iter().map(|r| r.epoch_s).sum::<f64>() / reports.len() as f64,
        speedup_vs_dense: f64::NAN,
        live_weights: last.live_weights,
        train_flops: reports.iter().map(|r| r.train_flops).sum(),
        epochs: reports.len(),
    })
}

/// Fills accuracy difference and speedup against the row whose method is "dense".
pub fn relate_to_dense(rows: &mut [CompareRow]) {
    let Some(dense) = rows.iter().find(|r| r.method == "dense").cloned() else {
        return;
    };
    for r in rows.iter_mut() {
        r.delta_vs_dense = 100.0 * (r.test_acc - dense.test_acc);
        r.speedup_vs_dense = dense.epoch_s / r.epoch_s.max(1e-12);
    }
}

/// The rows as an aligned text table, the accuracy column headed `acc_label` (`test
/// acc`, or `held-out acc` where the runs were evaluated on held-out training samples);
/// its last lines say what the FLOPs column counts and, without a dense row, why the
/// columns relative to dense are empty.
pub fn table(rows: &[CompareRow], acc_label: &str) -> String {
    let mut out = format!(
        "{:<14} {:>8} {:>12} {:>8} {:>9} {:>8} {:>12} {:>12}\n",
        "method", "sparsity", acc_label, "Δ dense", "epoch s", "speedup", "live", "run FLOPs"
    );
    // NaN: no dense run to relate to
    let or_na = |v: f64, text: String| if v.is_nan() { "n/a".into() } else { text };
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:>8.3} {:>11.2}% {:>8} {:>9.2} {:>8} {:>12} {:>12.3e}\n",
            r.method,
            r.actual_sparsity,
            100.0 * r.test_acc,
            or_na(r.delta_vs_dense, format!("{:+.2}", r.delta_vs_dense)),
            r.epoch_s,
            or_na(r.speedup_vs_dense, format!("{:.2}x", r.speedup_vs_dense)),
            r.live_weights,
            r.train_flops
        ));
    }
    out.push_str(
        "(run FLOPs: training FLOPs summed over all epochs; each run's log has them per epoch)\n",
    );
    if !rows.iter().any(|r| r.method == "dense") {
        out.push_str("(n/a: no dense run finished to compare with)\n");
    }
    out
}

/// Writes the rows as CSV.
pub fn write_csv(path: &Path, rows: &[CompareRow]) -> Result<()> {
    let mut s = String::from(
        "method,sparsity,actual_sparsity,test_acc,delta_vs_dense,epoch_s,speedup_vs_dense,live_weights,train_flops,epochs,evaluated_on\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{},{},{:.6},{:.6},{:.4},{:.4},{:.4},{},{:.6e},{},{}\n",
            r.method,
            r.sparsity,
            r.actual_sparsity,
            r.test_acc,
            r.delta_vs_dense,
            r.epoch_s,
            r.speedup_vs_dense,
            r.live_weights,
            r.train_flops,
            r.epochs,
            r.evaluated_on
        ));
    }
    write_atomically(path, s.as_bytes())
}

/// Writes the rows as a JSON array.
pub fn write_json(path: &Path, rows: &[CompareRow]) -> Result<()> {
    let s = serde_json::to_string_pretty(rows).map_err(|e| Error::io(path, e))?;
    write_atomically(path, s.as_bytes())
}

/// Draws `y(row)` against sparsity, one line per sparse method and the dense run as a
/// horizontal line, into an SVG file.
pub fn plot(
    path: &Path,
    rows: &[CompareRow],
    title: &str,
    y_label: &str,
    y: impl Fn(&CompareRow) -> f64,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::io(path, e);
    let ys: Vec<f64> = rows.iter().map(&y).filter(|v| v.is_finite()).collect();
    if ys.is_empty() {
        return Ok(());
    }
    let (lo, hi) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let xs: Vec<f64> = rows
        .iter()
        .filter(|r| r.method != "dense")
        .map(|r| r.actual_sparsity)
        .collect();
    let (xlo, xhi) = xs
        .iter()
        .fold((1.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let (xlo, xhi) = if xs.is_empty() {
        (0.0, 1.0) // the dense run alone
    } else if xlo >= xhi {
        (xlo - 0.05, xhi + 0.05)
    } else {
        (xlo - 0.01, xhi + 0.01)
    };
    // drawn into memory, then written whole (never half a plot on disk)
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xlo..xhi, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("sparsity")
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(&e))?;
        let mut methods: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
        methods.sort_unstable();
        methods.dedup();
        for (k, m) in methods.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == *m)
                .map(|r| (r.actual_sparsity, y(r)))
                .collect();
            if *m == "dense" {
                let v = pts.first().map(|p| p.1).unwrap_or(0.0);
                pts = vec![(xlo, v), (xhi, v)];
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*m)
                .legend(move |(x, yy)| {
                    PathElement::new(vec![(x, yy), (x + 20, yy)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_atomically(path, svg.as_bytes())
}
