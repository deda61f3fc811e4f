//! Value parsers of numeric options: every number is checked when the
//! command line is parsed (finite, in range), so that `--lr NaN` or
//! `--batch 0` is a clear error before anything is loaded, never a NaN
//! adapter written hours later.

fn number(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(v)
}

/// Any finite number.
pub fn finite_f64(s: &str) -> Result<f64, String> {
    number(s)
}

/// A finite number > 0 (learning rates, LoRA alpha).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v <= 0.0 {
        return Err(format!("{v}: expected a number > 0"));
    }
    Ok(v)
}

/// A finite number >= 0 (clipping norms, decays, damping, temperature).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v < 0.0 {
        return Err(format!("{v}: expected a number >= 0"));
    }
    Ok(v)
}

/// A number in [0, 1] (λ).
pub fn unit_f64(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v}: expected a number in [0, 1]"));
    }
    Ok(v)
}

/// A number in (0, 1] (kept fractions, top-p).
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("{v}: expected a number in (0, 1]"));
    }
    Ok(v)
}

/// A whole number >= 1 (counts, sizes, steps).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number >= 1"))?;
    if v == 0 {
        return Err("0: expected a whole number >= 1".into());
    }
    Ok(v)
}

/// A thread count >= 1.
pub fn threads(s: &str) -> Result<i32, String> {
    let v: i32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number >= 1"))?;
    if v < 1 {
        return Err(format!("{v}: expected a whole number >= 1"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_out_of_range_values_are_refused() {
        for bad in ["NaN", "nan", "inf", "-inf", "1e999", "x", ""] {
            assert!(finite_f64(bad).is_err(), "{bad}");
        }
        assert!(positive_f64("0").is_err());
        assert!(positive_f64("-1e-4").is_err());
        assert_eq!(positive_f64("2e-4"), Ok(2e-4));
        assert!(unit_f64("1.5").is_err());
        assert_eq!(unit_f64("0"), Ok(0.0));
        assert!(fraction("0").is_err());
        assert_eq!(fraction("1"), Ok(1.0));
        assert!(non_negative_f64("-0.1").is_err());
        assert!(positive_usize("0").is_err());
        assert!(positive_usize("-3").is_err());
        assert_eq!(positive_usize("8"), Ok(8));
        assert!(threads("0").is_err());
    }
}
