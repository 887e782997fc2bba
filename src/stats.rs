//! Small statistics for comparing runs over seeds: mean, 95 % confidence intervals (Student t),
//! Welch's unequal-variance t-test and its linear contrasts, a paired (one-sample) t-test,
//! Pearson's correlation, Hedges' g and Holm's correction for multiple comparisons.

/// Mean of `x` (NaN when empty).
pub fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn std_dev(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// A spread at most this fraction of the values' magnitude is floating-point rounding, not
/// data: e.g. 0.353 − 0.280 and 0.365 − 0.292 differ by 6·10⁻¹⁷ in `f64` although both are
/// 0.073, and a t-test on that "spread" would report p ≈ 0.
pub(crate) const ROUNDING: f64 = 1e-9;

/// The largest |v| of `x` (0 when empty).
fn magnitude(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m: f64, v| m.max(v.abs()))
}

/// [`std_dev`] of values computed from inputs of magnitude `scale`, or 0 when it is within
/// rounding of zero at that scale ([`ROUNDING`]).
fn spread(x: &[f64], scale: f64) -> f64 {
    let s = std_dev(x);
    if s <= ROUNDING * scale {
        0.0
    } else {
        s
    }
}

/// ln Γ(x) (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the regularised incomplete beta function (Numerical Recipes `betacf`).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let tiny = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// Regularised incomplete beta I_x(a, b).
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let bt = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        bt * beta_cf(a, b, x) / a
    } else {
        1.0 - bt * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Two-sided p-value of Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t.is_nan() { f64::NAN } else { 0.0 };
    }
    inc_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// The t quantile with two-sided tail mass 0.05 (`t_{0.975, df}`), by bisection.
pub fn t_crit_95(df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1000.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Half-width of the 95 % confidence interval of the mean (0 for fewer than two values).
pub fn ci95(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    t_crit_95((x.len() - 1) as f64) * std_dev(x) / (x.len() as f64).sqrt()
}

/// Welch's t-test of equal means: (t, degrees of freedom, two-sided p). `None` with fewer than
/// two values in a group or zero variance in both.
pub fn welch(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    let (se, df) = welch_se_df(a, b)?;
    let t = (mean(a) - mean(b)) / se;
    Some((t, df, t_two_sided_p(t, df)))
}

/// The 95 % confidence interval half-width of `mean(a) − mean(b)` under Welch's
/// approximation (`None` as for [`welch`]).
pub fn welch_ci95(a: &[f64], b: &[f64]) -> Option<f64> {
    let (se, df) = welch_se_df(a, b)?;
    Some(t_crit_95(df) * se)
}

/// The standard error √(s_a²/n_a + s_b²/n_b) of `mean(a) − mean(b)` and its
/// Welch–Satterthwaite degrees of freedom (`None` as for [`welch`]).
fn welch_se_df(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (va, vb) = (
        spread(a, magnitude(a)).powi(2) / a.len() as f64,
        spread(b, magnitude(b)).powi(2) / b.len() as f64,
    );
    if va + vb == 0.0 {
        return None;
    }
    let df = (va + vb).powi(2) / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    Some(((va + vb).sqrt(), df))
}

/// One-sample t-test of mean zero (e.g. paired differences): (mean, 95 % CI half-width,
/// two-sided p). `None` with fewer than two values or zero variance (a spread within rounding
/// of the values' magnitude counts as zero; see [`one_sample_at`] for differences of larger
/// values).
pub fn one_sample(d: &[f64]) -> Option<(f64, f64, f64)> {
    one_sample_at(d, magnitude(d))
}

/// [`one_sample`] for values `d` computed from inputs of magnitude `scale` (e.g. differences
/// or contrasts of accuracies: `scale` is the largest accuracy times its coefficient): a
/// spread within 10⁻⁹ × `scale` of zero is rounding, and the test is `None` as for
/// constant values.
pub fn one_sample_at(d: &[f64], scale: f64) -> Option<(f64, f64, f64)> {
    if d.len() < 2 {
        return None;
    }
    let se = spread(d, scale.max(magnitude(d))) / (d.len() as f64).sqrt();
    if se == 0.0 {
        return None;
    }
    let df = (d.len() - 1) as f64;
    let m = mean(d);
    Some((m, t_crit_95(df) * se, t_two_sided_p(m / se, df)))
}

/// Paired t-test of `mean(a − b) = 0` over the pairs `(a[i], b[i])` (e.g. two arms trained on
/// the same data per seed): (mean difference, 95 % CI half-width, two-sided p). `None` when
/// the lengths differ, with fewer than two pairs, or when every difference is the same.
pub fn paired(a: &[f64], b: &[f64]) -> Option<(f64, f64, f64)> {
    if a.len() != b.len() {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    one_sample_at(&d, magnitude(a).max(magnitude(b)))
}

/// Welch-type test of a linear contrast `Σ c_k · mean(x_k)` of independent groups
/// (e.g. a main effect or an interaction of a factorial design): the standard error
/// √(Σ c_k² s_k²/n_k) with Welch–Satterthwaite degrees of freedom. Returns (estimate,
/// 95 % CI half-width, two-sided p); `None` when a group has fewer than two values or the
/// standard error is zero. With `[(1, a), (−1, b)]` it is [`welch`].
pub fn contrast(groups: &[(f64, &[f64])]) -> Option<(f64, f64, f64)> {
    if groups.is_empty() || groups.iter().any(|(_, x)| x.len() < 2) {
        return None;
    }
    let est: f64 = groups.iter().map(|(c, x)| c * mean(x)).sum();
    let v: Vec<(f64, f64)> = groups
        .iter()
        .map(|(c, x)| {
            (
                c * c * spread(x, magnitude(x)).powi(2) / x.len() as f64,
                (x.len() - 1) as f64,
            )
        })
        .collect();
    let var: f64 = v.iter().map(|(v, _)| v).sum();
    if var == 0.0 {
        return None;
    }
    let df = var * var / v.iter().map(|(v, n)| v * v / n).sum::<f64>();
    let se = var.sqrt();
    Some((est, t_crit_95(df) * se, t_two_sided_p(est / se, df)))
}

/// Pearson's correlation of `x` and `y` and the two-sided p of `r = 0`
/// (t = r·√((n − 2)/(1 − r²)), n − 2 degrees of freedom). `None` when the lengths differ,
/// with fewer than three pairs, or when either has no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    let n = x.len();
    if n != y.len() || n < 3 {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    let r = (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0);
    let df = (n - 2) as f64;
    let p = if r.abs() >= 1.0 {
        0.0
    } else {
        t_two_sided_p(r * (df / (1.0 - r * r)).sqrt(), df)
    };
    Some((r, p))
}

/// Hedges' g: the standardised mean difference `(mean(a) − mean(b)) / s_pooled` with the
/// small-sample correction `1 − 3/(4(n_a + n_b) − 9)`. `None` with fewer than two values in a
/// group or zero pooled variance.
pub fn hedges_g(a: &[f64], b: &[f64]) -> Option<f64> {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let sp = (((na - 1.0) * spread(a, magnitude(a)).powi(2)
        + (nb - 1.0) * spread(b, magnitude(b)).powi(2))
        / (na + nb - 2.0))
        .sqrt();
    if sp == 0.0 {
        return None;
    }
    Some((mean(a) - mean(b)) / sp * (1.0 - 3.0 / (4.0 * (na + nb) - 9.0)))
}

/// Holm's step-down adjustment of p-values (family-wise error control): the i-th smallest
/// p is multiplied by `n − i` (i from 0), made monotone, and capped at 1. NaN stays NaN and
/// does not count towards `n`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let n = idx.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max((p[i] * (n - rank) as f64).min(1.0));
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        // t_{0.975} from standard tables
        for (df, want) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (4.0, 2.776),
            (10.0, 2.228),
            (30.0, 2.042),
            (1000.0, 1.962),
        ] {
            assert!(
                (t_crit_95(df) - want).abs() < 2e-3,
                "df {df}: {}",
                t_crit_95(df)
            );
        }
        // t = 2, df = 10: two-sided p = 0.0734
        assert!((t_two_sided_p(2.0, 10.0) - 0.07339).abs() < 1e-4);
    }

    #[test]
    fn welch_on_a_textbook_example() {
        let a = [19.1, 21.3, 20.5, 22.0, 18.7];
        let b = [23.4, 25.1, 22.9, 24.8, 26.0];
        let (t, df, p) = welch(&a, &b).unwrap();
        // means 20.32 and 24.44, variances 1.982 and 1.613 (Python statistics)
        assert!((t - (-4.8588)).abs() < 1e-3, "{t}");
        assert!((df - 7.9166).abs() < 1e-3, "{df}");
        assert!((p - 0.0012959).abs() < 1e-5, "{p}"); // numerical integration of the t density
        assert!(welch(&[1.0], &b).is_none());
        assert!((mean(&a) - 20.32).abs() < 1e-12);
        assert!(ci95(&a) > 0.0);
    }

    #[test]
    fn holm_hedges_and_paired_tests() {
        // Holm on [0.01, 0.04, 0.03, 0.005]: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        let adj = holm(&[0.5, f64::NAN, 0.9]);
        assert!(adj[1].is_nan() && (adj[0] - 1.0).abs() < 1e-12 && adj[2] == 1.0);
        // Hedges' g: means 20.32 and 24.44, pooled sd sqrt((1.982 + 1.613)/2) = 1.3407,
        // d = −3.0730, correction 1 − 3/31
        let a = [19.1, 21.3, 20.5, 22.0, 18.7];
        let b = [23.4, 25.1, 22.9, 24.8, 26.0];
        let g = hedges_g(&a, &b).unwrap();
        assert!((g - (-3.0730 * (1.0 - 3.0 / 31.0))).abs() < 2e-3, "{g}");
        // paired: d = [1, 2, 3]: mean 2, se 1/√3, t = 3.464, df 2, p = 0.0742
        let (m, ci, p) = one_sample(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        assert!((ci - 4.303 / 3f64.sqrt()).abs() < 2e-3, "{ci}");
        assert!((p - 0.0742).abs() < 1e-3, "{p}");
        // the Welch CI of the difference brackets it
        let ci = welch_ci95(&a, &b).unwrap();
        assert!(ci > 0.0 && (mean(&a) - mean(&b)).abs() > ci);
        // equal means still have an interval: t_crit(df) · √(s_a²/n_a + s_b²/n_b)
        // (a = [1, 3], b = [0, 2, 4]: se = √(2/2 + 4/3), df = 2.63…)
        let (_, df, p) = welch(&[1.0, 3.0], &[0.0, 2.0, 4.0]).unwrap();
        assert!((p - 1.0).abs() < 1e-9, "{p}");
        let ci = welch_ci95(&[1.0, 3.0], &[0.0, 2.0, 4.0]).unwrap();
        assert!(
            (ci - t_crit_95(df) * (1.0f64 + 4.0 / 3.0).sqrt()).abs() < 1e-12,
            "{ci}"
        );
    }

    #[test]
    fn paired_contrast_and_pearson() {
        // paired: a − b = [1, 2, 3] as in one_sample
        let (m, ci, p) = paired(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        assert!((ci - 4.303 / 3f64.sqrt()).abs() < 2e-3, "{ci}");
        assert!((p - 0.0742).abs() < 1e-3, "{p}");
        assert!(paired(&[1.0, 2.0], &[1.0]).is_none());
        assert!(
            paired(&[2.0, 3.0], &[1.0, 2.0]).is_none(),
            "constant differences"
        );
        // equal differences that rounding makes unequal (0.073 − 6·10⁻¹⁷ and 0.073 + 10⁻¹⁷)
        // are constant too, not p ≈ 0
        let (a, b) = ([0.353, 0.365], [0.28, 0.292]);
        assert_ne!(a[0] - b[0], a[1] - b[1], "the case needs rounding");
        assert!(paired(&a, &b).is_none());
        let d = [a[0] - b[0], a[1] - b[1]];
        assert!(one_sample_at(&d, 0.365).is_none());
        assert!(
            one_sample(&[1e-17, 2e-17, 4e-17]).is_some(),
            "tiny values, real spread"
        );
        assert!(
            one_sample_at(&[1e-17, 2e-17, 4e-17], 0.3).is_none(),
            "rounding at 0.3"
        );
        let x = [0.1 + 0.2, 0.3, 0.3];
        assert!(welch(&x, &x).is_none() && contrast(&[(1.0, &x)]).is_none());
        assert!(hedges_g(&x, &x).is_none());
        // pairing removes the between-seed spread that Welch keeps
        let a = [0.30, 0.35, 0.40, 0.45];
        let b = [0.290, 0.338, 0.389, 0.437];
        assert!(paired(&a, &b).unwrap().2 < 0.01);
        assert!(welch(&a, &b).unwrap().2 > 0.5);
        // a two-group contrast is Welch's test
        let x = [19.1, 21.3, 20.5, 22.0, 18.7];
        let y = [23.4, 25.1, 22.9, 24.8, 26.0];
        let (e, ci, p) = contrast(&[(1.0, &x), (-1.0, &y)]).unwrap();
        assert!((e - (mean(&x) - mean(&y))).abs() < 1e-12);
        assert!((ci - welch_ci95(&x, &y).unwrap()).abs() < 1e-9);
        assert!((p - welch(&x, &y).unwrap().2).abs() < 1e-12);
        // an interaction of four groups, (x − y) − (y − x): se² = Σ s²/n, twice Welch's
        // variance, with twice its degrees of freedom
        let (e, ci, _) = contrast(&[(1.0, &x), (-1.0, &y), (-1.0, &y), (1.0, &x)]).unwrap();
        assert!((e - 2.0 * (mean(&x) - mean(&y))).abs() < 1e-12);
        let (t, df, _) = welch(&x, &y).unwrap();
        let se = (mean(&x) - mean(&y)) / t;
        assert!(
            (ci - t_crit_95(2.0 * df) * 2f64.sqrt() * se).abs() < 1e-9,
            "{ci}"
        );
        assert!(contrast(&[(1.0, &x[..1])]).is_none());
        // Pearson: y = 2x + 1 exactly, and a textbook case
        let (r, p) = pearson(&[1.0, 2.0, 3.0, 4.0], &[3.0, 5.0, 7.0, 9.0]).unwrap();
        assert!((r - 1.0).abs() < 1e-12 && p == 0.0);
        // x = 1..5, y = [2, 4, 5, 4, 5]: r = 6/√(10·6) = 0.7746, t = 2.1213, df 3, p = 0.1241
        let (r, p) = pearson(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 5.0, 4.0, 5.0]).unwrap();
        assert!((r - 0.774_596_7).abs() < 1e-6, "{r}");
        assert!((p - 0.1241).abs() < 1e-3, "{p}");
        assert!(pearson(&[1.0, 2.0], &[1.0, 2.0]).is_none());
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    }
}
