//! Disk sizes (`16G`, binary units) and durations (`30s`, `2h`).

use std::time::Duration;

const UNITS: [(&str, u32); 4] = [("K", 10), ("M", 20), ("G", 30), ("T", 40)];

/// Parse a disk size: an integer and a binary unit `K`, `M`, `G`, `T` (or
/// `KiB`, `MiB`, `GiB`, `TiB`; case-insensitive), e.g. `16G` or `512MiB`.
/// The error says what is wrong with `text` and shows the accepted form.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const FORM: &str = "expected an integer and a unit K, M, G or T (binary), like \"16G\"";
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!("{text:?}: {FORM}"));
    }
    if unit.is_empty() {
        return Err(format!("{text:?} has no unit: {FORM}"));
    }
    let upper = unit.to_ascii_uppercase();
    let shift = UNITS
        .iter()
        .find(|(u, _)| upper == *u || upper == format!("{u}IB"))
        .map(|(_, s)| *s);
    let Some(shift) = shift else {
        if upper.len() == 2
            && upper.ends_with('B')
            && UNITS.iter().any(|(u, _)| upper.starts_with(u))
        {
            return Err(format!(
                "{text:?}: `{unit}` is ambiguous; sizes are binary, write {}{} or {}{}iB",
                digits,
                &upper[..1],
                digits,
                &upper[..1]
            ));
        }
        return Err(format!("{text:?}: unknown unit `{unit}`; {FORM}"));
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?}: size too large"))
}

/// Format bytes in the largest binary unit that divides them exactly
/// (`8589934592` → `8G`), or plain bytes with a `B` suffix.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in UNITS.iter().rev() {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Parse a duration like `30s`, `5m`, `2h`, `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"2h\"")
    })
}

/// Format a duration the way [`parse_duration`] reads it.
pub(crate) fn format_duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("4 K"), Ok(4096));
    }

    #[test]
    fn junk_sizes_are_explained() {
        for (input, needle) in [
            ("", "expected an integer"),
            ("G", "expected an integer"),
            ("16", "has no unit"),
            ("16GB", "ambiguous"),
            ("16X", "unknown unit `X`"),
            ("1.5G", "unknown unit `.5G`"),
            ("-1G", "expected an integer"),
            ("99999999999999999999G", "too large"),
            ("99999999999T", "too large"),
        ] {
            let err = parse_size(input).unwrap_err();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn sizes_round_trip_through_format() {
        for s in ["8G", "512M", "3T", "7K", "100B"] {
            let bytes = if s == "100B" {
                100
            } else {
                parse_size(s).unwrap()
            };
            assert_eq!(format_size(bytes), s);
        }
        assert_eq!(format_size(1536 << 20), "1536M");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("30").unwrap_err().contains("not a duration"));
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
    }
}
