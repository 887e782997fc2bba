//! Small statistics for comparing runs over seeds: mean, 95 % confidence intervals (Student t)
//! and Welch's unequal-variance t-test.

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
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (va, vb) = (
        std_dev(a).powi(2) / a.len() as f64,
        std_dev(b).powi(2) / b.len() as f64,
    );
    if va + vb == 0.0 {
        return None;
    }
    let t = (mean(a) - mean(b)) / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    Some((t, df, t_two_sided_p(t, df)))
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
}
