//! Byte sizes as people write and read them, the same everywhere: config
//! files, recipes, CLI flags, API bodies and messages.
//!
//! Sizes are binary. A size is an integer and a unit; a bare number is
//! refused, because it would mean bytes here, MiB for `--memory` and a typo
//! most of the time.

/// Units [`parse_size`] accepts (besides `B` and the `…iB` spellings) and
/// [`format_size`] writes, with their power of two.
const UNITS: [(&str, u32); 4] = [("K", 10), ("M", 20), ("G", 30), ("T", 40)];
const HUMAN_UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
const FORM: &str = "expected an integer and a unit B, K, M, G or T (binary), like \"16G\"";

/// A text that is not a size; the message shows the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{text:?}: {FORM}")]
    NoNumber { text: String },
    #[error("{text:?} has no unit: {FORM}")]
    NoUnit { text: String },
    #[error("{text:?}: `{unit}` is ambiguous; sizes are binary, write {suggest} or {suggest_ib}")]
    Ambiguous {
        text: String,
        unit: String,
        suggest: String,
        suggest_ib: String,
    },
    #[error("{text:?}: unknown unit `{unit}`; {FORM}")]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?}: size too large")]
    TooLarge { text: String },
}

/// Parse a size: an integer and a binary unit `B`, `K`, `M`, `G`, `T` (or
/// `KiB`, `MiB`, `GiB`, `TiB`), case-insensitive, space allowed between,
/// e.g. `16G`, `512MiB`, `4096B`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let owned = || text.to_owned();
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(SizeError::NoNumber { text: owned() });
    }
    if unit.is_empty() {
        return Err(SizeError::NoUnit { text: owned() });
    }
    let upper = unit.to_ascii_uppercase();
    let shift = if upper == "B" {
        Some(0)
    } else {
        UNITS
            .iter()
            .find(|(u, _)| upper == *u || upper == format!("{u}IB"))
            .map(|(_, s)| *s)
    };
    let Some(shift) = shift else {
        if upper.len() == 2
            && upper.ends_with('B')
            && UNITS.iter().any(|(u, _)| upper.starts_with(u))
        {
            let u = &upper[..1];
            return Err(SizeError::Ambiguous {
                text: owned(),
                unit: unit.to_owned(),
                suggest: format!("{digits}{u}"),
                suggest_ib: format!("{digits}{u}iB"),
            });
        }
        return Err(SizeError::UnknownUnit {
            text: owned(),
            unit: unit.to_owned(),
        });
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::TooLarge { text: owned() })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::TooLarge { text: owned() })
}

/// Format bytes exactly, in the largest binary unit that divides them
/// (`8589934592` → `8G`), else as bytes (`100B`); [`parse_size`] reads it back.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in UNITS.iter().rev() {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// Bytes for people, rounded: `1.5 GiB`, `512 MiB`, `100 B` (one decimal,
/// none when the value is whole). For messages, tables and progress.
pub fn human_bytes(bytes: u64) -> String {
    // f64 is exact to 2^53 and only a rounded display is wanted.
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < HUMAN_UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", HUMAN_UNITS[unit])
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
        assert_eq!(parse_size(" 2G "), Ok(2 << 30));
        // Exact byte counts need the `B` unit (what format_size writes).
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("0b"), Ok(0));
    }

    #[test]
    fn junk_sizes_are_explained() {
        for (input, needle) in [
            ("", "expected an integer"),
            ("G", "expected an integer"),
            // The recipe parser took a bare number as bytes; the config one
            // refused it. Refused everywhere now.
            ("16", "has no unit"),
            ("1073741824", "has no unit"),
            ("16GB", "ambiguous; sizes are binary, write 16G or 16GiB"),
            ("16X", "unknown unit `X`"),
            ("1.5G", "unknown unit `.5G`"),
            ("-1G", "expected an integer"),
            ("2G2", "unknown unit `G2`"),
            ("99999999999999999999G", "too large"),
            ("99999999999T", "too large"),
        ] {
            let err = parse_size(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn exact_sizes_round_trip() {
        for s in ["8G", "512M", "3T", "7K", "100B", "0B"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(u64::MAX), format!("{}B", u64::MAX));
        assert_eq!(parse_size(&format_size(u64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn human_bytes_rounds_to_one_decimal() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(82_116_608), "78.3 MiB");
        // Rounding up to a whole value prints no decimal.
        assert_eq!(human_bytes((1 << 30) - 1), "1024 MiB");
        assert_eq!(human_bytes(5 << 40), "5 TiB");
        assert_eq!(human_bytes(5000 << 40), "5000 TiB");
    }
}
