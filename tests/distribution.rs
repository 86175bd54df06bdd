//! Layer sparsity distributions: uniform densities are exact; ER and ERK hit the global
//! budget, make over-full layers dense (RigL's procedure), give larger layers lower
//! densities; parsing and validation.

use rewire::nn::distribution::{layer_densities, layer_nnz, Distribution, LayerShape};
use rewire::Error;

/// Linear layers of an MLP with the given widths, input first.
fn mlp(widths: &[usize]) -> Vec<LayerShape> {
    widths
        .windows(2)
        .map(|w| LayerShape::linear(w[1], w[0]))
        .collect()
}

fn sizes(layers: &[LayerShape]) -> Vec<f64> {
    layers
        .iter()
        .map(|l| (l.fan_out * l.fan_in * l.kh * l.kw) as f64)
        .collect()
}

const SPARSITIES: [f64; 5] = [0.5, 0.9, 0.95, 0.98, 0.99];

fn shapes() -> Vec<Vec<LayerShape>> {
    vec![
        mlp(&[784, 300, 100, 10]),
        mlp(&[784, 1000, 1000, 1000, 10]),
        mlp(&[784, 1000, 1000, 10]),
        mlp(&[32, 64, 10]),
        vec![
            LayerShape::conv(32, 1, 5, 5),
            LayerShape::conv(64, 32, 5, 5),
            LayerShape::conv(128, 64, 3, 3),
            LayerShape::linear(256, 128 * 4 * 4),
            LayerShape::linear(10, 256),
        ],
    ]
}

/// Checks the densities hit the target exactly (in reals) and the rounded counts
/// within rounding (half a weight per layer).
#[track_caller]
fn check_total(dist: Distribution, layers: &[LayerShape], s: f64) -> Vec<f64> {
    let d = layer_densities(dist, layers, s).unwrap();
    assert_eq!(d.len(), layers.len());
    let sz = sizes(layers);
    let total: f64 = sz.iter().sum();
    let target = (1.0 - s) * total;
    for (l, &x) in d.iter().enumerate() {
        assert!(x > 0.0 && x <= 1.0, "{dist:?} s={s} layer {l}: density {x}");
    }
    let live: f64 = d.iter().zip(&sz).map(|(d, n)| d * n).sum();
    assert!(
        (live - target).abs() <= 1e-6 * target,
        "{dist:?} s={s}: live {live} vs target {target}"
    );
    let nnz = layer_nnz(&d, layers);
    let counted: usize = nnz.iter().sum();
    assert!(
        (counted as f64 - target).abs() <= 0.5 * layers.len() as f64 + 1e-9,
        "{dist:?} s={s}: {counted} live weights vs target {target}"
    );
    d
}

#[test]
fn uniform_gives_exact_densities() {
    let layers = mlp(&[784, 300, 100, 10]);
    for s in SPARSITIES {
        let d = layer_densities(Distribution::Uniform { dense_first: false }, &layers, s).unwrap();
        assert_eq!(d, vec![1.0 - s; 3]);
        let d = layer_densities(Distribution::Uniform { dense_first: true }, &layers, s).unwrap();
        assert_eq!(d, vec![1.0, 1.0 - s, 1.0 - s]);
    }
    let d = layer_densities(Distribution::Uniform { dense_first: false }, &layers, 0.9).unwrap();
    assert_eq!(layer_nnz(&d, &layers), vec![23520, 3000, 100]);
}

#[test]
fn sparsity_zero_is_all_dense() {
    let layers = mlp(&[784, 300, 100, 10]);
    for dist in [
        Distribution::Uniform { dense_first: false },
        Distribution::Uniform { dense_first: true },
        Distribution::Er,
        Distribution::Erk,
    ] {
        let d = layer_densities(dist, &layers, 0.0).unwrap();
        assert_eq!(d, vec![1.0; 3], "{dist:?}");
        assert_eq!(layer_nnz(&d, &layers), vec![235200, 30000, 1000]);
    }
}

#[test]
fn er_and_erk_hit_the_target_total() {
    for layers in shapes() {
        for s in SPARSITIES {
            check_total(Distribution::Er, &layers, s);
            check_total(Distribution::Erk, &layers, s);
        }
    }
}

#[test]
fn er_matches_the_closed_form_when_no_layer_saturates() {
    // 784-300-100-10 at 0.95: ε solves Σ ε(i+o)/(i·o)·i·o = ε·Σ(i+o) = 0.05·Σ i·o.
    let layers = mlp(&[784, 300, 100, 10]);
    let d = layer_densities(Distribution::Er, &layers, 0.95).unwrap();
    let eps =
        0.05 * (235200.0 + 30000.0 + 1000.0) / ((784.0 + 300.0) + (300.0 + 100.0) + (100.0 + 10.0));
    let want = [
        eps * 1084.0 / 235200.0,
        eps * 400.0 / 30000.0,
        eps * 110.0 / 1000.0,
    ];
    assert!(want.iter().all(|&x| x < 1.0), "premise: no layer saturates");
    for (g, w) in d.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "got {g}, want {w}");
    }
}

#[test]
fn erk_makes_a_small_layer_dense_and_still_hits_the_total() {
    // 784-1000-1000-10 at 0.8: the raw ε would give the 1000→10 layer a density > 1.
    let layers = mlp(&[784, 1000, 1000, 10]);
    let sz = sizes(&layers);
    let naive_eps = 0.2 * sz.iter().sum::<f64>()
        / layers
            .iter()
            .map(|l| (l.fan_in + l.fan_out) as f64)
            .sum::<f64>();
    assert!(
        naive_eps * 1010.0 / 10000.0 > 1.0,
        "premise: last layer saturates"
    );

    for dist in [Distribution::Er, Distribution::Erk] {
        let d = check_total(dist, &layers, 0.8);
        assert_eq!(d[2], 1.0, "{dist:?}: the 1000→10 layer is dense");
        assert!(d[0] < 1.0 && d[1] < 1.0, "{dist:?}: {d:?}");
        // the others follow the ER ratio with ε re-solved for the remaining budget
        let eps = (0.2 * sz.iter().sum::<f64>() - sz[2]) / (1784.0 + 2000.0);
        assert!((d[0] - eps * 1784.0 / sz[0]).abs() < 1e-12);
        assert!((d[1] - eps * 2000.0 / sz[1]).abs() < 1e-12);
        let nnz = layer_nnz(&d, &layers);
        assert_eq!(nnz[2], 10_000);
    }
}

#[test]
fn several_layers_can_saturate() {
    // Tiny output layers next to a huge one, at a low sparsity: both small layers dense.
    let layers = mlp(&[4096, 4096, 8, 4]);
    let d = check_total(Distribution::Erk, &layers, 0.3);
    assert_eq!(&d[1..], &[1.0, 1.0]);
    assert!(d[0] < 0.7);
}

#[test]
fn larger_layers_get_lower_density() {
    for dist in [Distribution::Er, Distribution::Erk] {
        for s in SPARSITIES {
            // the 1000×1000 layer has the smallest (i+o)/(i·o), then 784→1000, then 1000→10
            let layers = mlp(&[784, 1000, 1000, 10]);
            let d = layer_densities(dist, &layers, s).unwrap();
            assert!(d[1] < d[0], "{dist:?} s={s}: {d:?}");
            assert!(d[0] < d[2] || d[2] == 1.0, "{dist:?} s={s}: {d:?}");
            let layers = mlp(&[784, 300, 100, 10]);
            let d = layer_densities(dist, &layers, s).unwrap();
            assert!(d[0] < d[1] && d[1] <= d[2], "{dist:?} s={s}: {d:?}");
        }
    }
}

#[test]
fn erk_with_conv_kernels_differs_from_er() {
    let layers = vec![
        LayerShape::conv(32, 3, 3, 3),
        LayerShape::conv(64, 32, 3, 3),
        LayerShape::conv(128, 64, 5, 5),
        LayerShape::linear(10, 128),
    ];
    for s in [0.8, 0.9, 0.95] {
        let er = check_total(Distribution::Er, &layers, s);
        let erk = check_total(Distribution::Erk, &layers, s);
        assert!(
            er.iter().zip(&erk).any(|(a, b)| (a - b).abs() > 1e-3),
            "s={s}: ER {er:?} vs ERK {erk:?}"
        );
        // ERK's kernel term favours the layer with the larger kernel less than ER does
        // relative to the 3×3 layers: its raw density scales with 1/(kh·kw).
        assert!(erk[2] / erk[1] < er[2] / er[1], "s={s}");
    }
    // for fully connected layers ERK equals ER (RigL: a 2-D weight has no kernel dims)
    let layers = mlp(&[784, 300, 100, 10]);
    for s in SPARSITIES {
        assert_eq!(
            layer_densities(Distribution::Er, &layers, s).unwrap(),
            layer_densities(Distribution::Erk, &layers, s).unwrap()
        );
    }
}

#[test]
fn layer_nnz_clamps_to_at_least_one_and_at_most_size() {
    let layers = mlp(&[100, 10, 2]);
    assert_eq!(layer_nnz(&[1e-9, 1.0], &layers), vec![1, 20]);
    assert_eq!(layer_nnz(&[2.0, 0.5], &layers), vec![1000, 10]);
    assert_eq!(layer_nnz(&[f64::NAN, -1.0], &layers), vec![1, 1]);
    assert_eq!(layer_nnz(&[0.0105, 0.25], &layers), vec![11, 5]);
    assert_eq!(layer_nnz(&[0.5], &layers), vec![500]);
}

#[test]
fn parse_names_and_errors() {
    assert_eq!(
        Distribution::parse("uniform").unwrap(),
        Distribution::Uniform { dense_first: false }
    );
    assert_eq!(
        Distribution::parse("uniform-dense-first").unwrap(),
        Distribution::Uniform { dense_first: true }
    );
    assert_eq!(Distribution::parse("er").unwrap(), Distribution::Er);
    assert_eq!(Distribution::parse("ERK").unwrap(), Distribution::Erk);
    for bad in ["", "erdos", "uniform-dense", "er k", "random"] {
        match Distribution::parse(bad) {
            Err(Error::InvalidArgument { name, detail }) => {
                assert_eq!(name, "distribution");
                assert!(detail.contains("erk"), "{detail}");
            }
            other => panic!("{bad:?}: expected an error, got {other:?}"),
        }
    }
    for d in [
        Distribution::Uniform { dense_first: false },
        Distribution::Uniform { dense_first: true },
        Distribution::Er,
        Distribution::Erk,
    ] {
        assert_eq!(Distribution::parse(&d.to_string()).unwrap(), d);
    }
}

#[test]
fn invalid_inputs_are_rejected() {
    let layers = mlp(&[784, 300, 10]);
    for dist in [
        Distribution::Uniform { dense_first: false },
        Distribution::Er,
        Distribution::Erk,
    ] {
        for s in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    layer_densities(dist, &layers, s),
                    Err(Error::InvalidArgument {
                        name: "sparsity",
                        ..
                    })
                ),
                "{dist:?} s={s}"
            );
        }
        assert!(matches!(
            layer_densities(dist, &[], 0.9),
            Err(Error::InvalidArgument { name: "layers", .. })
        ));
        for bad in [
            LayerShape::linear(0, 10),
            LayerShape::linear(10, 0),
            LayerShape::conv(8, 8, 0, 3),
            LayerShape::conv(8, 8, 3, 0),
        ] {
            assert!(matches!(
                layer_densities(dist, &[layers[0], bad], 0.9),
                Err(Error::InvalidArgument { name: "layers", .. })
            ));
        }
        let huge = LayerShape::conv(usize::MAX / 2, 3, 3, 3);
        assert!(matches!(
            layer_densities(dist, &[huge], 0.9),
            Err(Error::TooLarge { .. })
        ));
    }
}
