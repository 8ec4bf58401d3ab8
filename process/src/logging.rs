//! Log set-up shared by every binary (nodes, proxies, the controller, the
//! command-line tools), so that all of them read `RUST_LOG` the same way and can
//! write JSON lines for a log pipeline.

/// How a process writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// Human-readable lines on standard output: servers.
    Text,
    /// One JSON object per line on standard output: servers under a collector.
    Json,
    /// Human-readable lines on standard error: command-line tools, whose
    /// standard output is their result (tables, JSON) and must stay clean.
    Stderr,
}

impl LogOutput {
    /// `json` gives [`LogOutput::Json`]; anything else [`LogOutput::Text`] (the
    /// servers' `--log-format` flag).
    pub fn from_format(format: &str) -> Self {
        if format == "json" {
            LogOutput::Json
        } else {
            LogOutput::Text
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `default_level`
/// (e.g. "info" for servers, "warn" for tools). Call once, first thing in main.
pub fn init_logging(default_level: &str, output: LogOutput) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match output {
        LogOutput::Text => builder.init(),
        LogOutput::Json => builder.json().init(),
        LogOutput::Stderr => builder.with_writer(std::io::stderr).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_selects_json_lines() {
        assert_eq!(LogOutput::from_format("json"), LogOutput::Json);
        assert_eq!(LogOutput::from_format("text"), LogOutput::Text);
        assert_eq!(LogOutput::from_format(""), LogOutput::Text);
    }
}
