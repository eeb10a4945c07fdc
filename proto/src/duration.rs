//! Durations as people and Kubernetes write them: `90s`, `5m`, `1h30m`, `1.5s`, `250ms`
//! (Go's `time.Duration` syntax, which VolSync's `lastSyncDuration` uses), and protobuf's
//! `600s`, which is the same thing.

use std::time::Duration;

/// Parses `1h30m`, `5m`, `90s`, `1.5s`, `250ms`, `0`. A bare number is refused (no unit).
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: missing unit (use h, m, s or ms)"))?;
        if number_len == 0 {
            return Err(format!("{text:?}: expected a number before {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            unit => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use h, m, s or ms)"
                ));
            }
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{text:?}: {e}"))
}

/// Formats as Go does: `1h30m0s`, `5m0s`, `1.5s`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ms = d.as_secs_f64() * 1000.0;
        return format!("{}ms", trim(ms));
    }
    let total = d.as_secs();
    let (h, m) = (total / 3600, (total % 3600) / 60);
    let s = (total % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
    let seconds = format!("{}s", trim(s));
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

fn trim(x: f64) -> String {
    let text = format!("{x:.9}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A protobuf duration as a std one (negative becomes zero).
pub fn from_proto(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

/// A std duration as a protobuf one.
pub fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse_and_format_back() {
        let cases = [
            ("90s", 90_000, "1m30s"),
            ("5m", 300_000, "5m0s"),
            ("1h30m", 5_400_000, "1h30m0s"),
            ("1.5s", 1_500, "1.5s"),
            ("250ms", 250, "250ms"),
            ("600s", 600_000, "10m0s"),
            ("0", 0, "0s"),
        ];
        for (text, millis, formatted) in cases {
            let d = parse(text).unwrap();
            assert_eq!(d, Duration::from_millis(millis), "{text}");
            assert_eq!(format(d), formatted, "{text}");
            assert_eq!(parse(formatted).unwrap(), d, "{formatted}");
        }
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for bad in ["", "10", "5 minutes", "m", "1x", "1.2.3s"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
