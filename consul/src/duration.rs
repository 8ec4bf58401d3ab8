//! Durations in the text form Consul parses (Go's `time.ParseDuration`).

use std::time::Duration;

/// Formats `d` for Consul: whole seconds as `"10s"`, else milliseconds, else
/// nanoseconds, so that no precision Consul could use is lost.
pub(crate) fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_the_coarsest_exact_unit() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_nanos(1_000_001)), "1000001ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
