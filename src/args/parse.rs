//! Parsers for flag values clap does not know: durations and ratios.

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ));
        }
    };
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("`{s}` must be longer than zero"));
    }
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{s}` is longer than a duration can be"))
}

/// A finite number (not NaN or infinite: a ranking computed with one would be meaningless).
pub fn parse_finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

/// A finite number above 0 (a scale factor).
pub fn parse_positive(s: &str) -> Result<f64, String> {
    match parse_finite(s)? {
        v if v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number above 0")),
    }
}

/// A number between 0 and 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("the ratio must be between 0 and 1, got {r}"))
    }
}
