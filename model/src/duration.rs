//! Protobuf-JSON durations as Istio writes them: `1s`, `0.5s`, `100ms`, `1m`, `1h`, `2us`.

use std::time::Duration;

/// Parse an Istio duration. Istio's API takes protobuf `Duration`s whose JSON
/// form is seconds with an `s` suffix; kubectl users also write `ms`, `m`, `h`,
/// which Istio's validation accepts too.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) =
        [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
            .into_iter()
            .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, scale)))
            .ok_or_else(|| format!("{text:?} is not a duration: write it like 1s, 250ms, 1.5s, 2m or 1h"))?;
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration: write it like 1s, 250ms, 1.5s, 2m or 1h"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
