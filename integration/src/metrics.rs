//! A process's Prometheus metrics, as a test reads them: one `GET /metrics`
//! over a bare HTTP/1.1 connection (the harness needs no HTTP client crate),
//! and the text exposition parsed into samples, so that a test asserts
//! values ("the source's drop callbacks went up by one"), not that the
//! endpoint answers.
//!
//! The parser reads what Prometheus's text formats put on a sample line
//! (`name{label="value",...} value [timestamp]`), skipping comments; it is not
//! a validator of the format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: a series (name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses an exposition text.
    pub fn parse(text: &str) -> anyhow::Result<Samples> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_line(line).with_context(|| format!("bad sample line `{line}`")))
            .collect::<anyhow::Result<_>>()
            .map(Samples)
    }

    /// The sum of the samples named `name` whose labels include `labels` (0
    /// when none does: a labelled series appears only once it moved).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(at) => line.split_at(at),
        None => bail!("no value"),
    };
    let mut labels = BTreeMap::new();
    let rest = match rest.strip_prefix('{') {
        Some(mut inside) => loop {
            inside = inside.trim_start_matches(',');
            if let Some(after) = inside.strip_prefix('}') {
                break after;
            }
            let (key, after) = inside
                .split_once("=\"")
                .context("a label without a value")?;
            let (value, after) = quoted(after)?;
            labels.insert(key.trim().to_owned(), value);
            inside = after;
        },
        None => rest,
    };
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().with_context(|| format!("value {other:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped; and what follows it.
fn quoted(text: &str) -> anyhow::Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            c => value.push(c),
        }
    }
    bail!("an unterminated label value")
}

/// `GET /metrics` from `addr`, parsed.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Samples> {
    let body = tokio::time::timeout(Duration::from_secs(10), get(addr, "/metrics"))
        .await
        .with_context(|| format!("scraping {addr} timed out"))??;
    Samples::parse(&body).with_context(|| format!("parsing the scrape of {addr}"))
}

/// A bare HTTP/1.1 GET: the body of a 200 answer with a Content-Length (what
/// the metrics endpoint sends).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP answer without a header end")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {addr}: {status}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("GET {path} from {addr}: a chunked answer (not read by this helper)");
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP ranger_node_ranges Ranges on this node by state.
# TYPE ranger_node_ranges gauge
ranger_node_ranges{state="active"} 2
ranger_node_ranges{state="inactive"} 0
# TYPE ranger_node_callback_duration_seconds histogram
ranger_node_callback_duration_seconds_bucket{le="+Inf",callback="drop",result="ok"} 3
ranger_node_callback_duration_seconds_count{callback="drop",result="ok"} 3
ranger_node_callback_duration_seconds_count{callback="drop",result="refused"} 1
ranger_node_lease_remaining_seconds 1.5
odd{path="a \"quoted\", \\ value"} -Inf 1700000000
# EOF
"#;

    #[test]
    fn samples_are_parsed_with_their_labels_and_values() {
        let samples = Samples::parse(TEXT).expect("parses");
        assert_eq!(samples.0.len(), 7);
        assert_eq!(
            samples.sum("ranger_node_ranges", &[("state", "active")]),
            2.0
        );
        assert_eq!(samples.sum("ranger_node_lease_remaining_seconds", &[]), 1.5);
        let bucket = &samples.0[2];
        assert_eq!(bucket.labels.get("le").map(String::as_str), Some("+Inf"));
        assert_eq!(bucket.labels.len(), 3);
        let odd = &samples.0[6];
        assert_eq!(odd.labels["path"], r#"a "quoted", \ value"#);
        assert_eq!(odd.value, f64::NEG_INFINITY);
    }

    #[test]
    fn a_sum_adds_every_series_matching_the_labels_given() {
        let samples = Samples::parse(TEXT).expect("parses");
        let count = "ranger_node_callback_duration_seconds_count";
        assert_eq!(samples.sum(count, &[("callback", "drop")]), 4.0);
        assert_eq!(
            samples.sum(count, &[("callback", "drop"), ("result", "ok")]),
            3.0
        );
        assert_eq!(samples.sum(count, &[("callback", "prepare")]), 0.0);
        assert!(samples.has(count));
        assert!(!samples.has("ranger_node_missing"));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        for bad in [
            "name_without_value",
            r#"name{label="unterminated} 1"#,
            "name{label} 1",
            "name notanumber",
        ] {
            let error = Samples::parse(bad).expect_err(bad);
            assert!(format!("{error:#}").contains(bad), "{error:#}");
        }
    }

    #[tokio::test]
    async fn a_scrape_reads_the_body_of_a_200_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accepts");
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await.expect("reads");
            let body = "up 1\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.expect("writes");
        });
        let samples = scrape(addr).await.expect("scrapes");
        assert_eq!(samples.sum("up", &[]), 1.0);
        server.await.expect("serves");
    }
}
