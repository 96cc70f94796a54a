//! Disk sizes (`16G`, binary units; banger-wire's parser) and durations (`30s`, `2h`).

use std::time::Duration;

pub use banger_wire::units::{format_size, parse_size};

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
