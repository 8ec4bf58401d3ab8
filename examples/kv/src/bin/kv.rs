//! `kv`: a command-line client of the example store's `kv.KV` service, for a
//! proxy or a single node.
//!
//! ```text
//! kv [--addr 127.0.0.1:5100] [--json] put KEY VALUE
//! kv get KEY
//! kv delete KEY
//! kv scan START [END] [--limit N]
//! ```
//!
//! Keys and values are text, `hex:...` or `b64:...`. Keys on the wire are strings,
//! so a key must decode to UTF-8. Values are printed as text when they are
//! printable UTF-8, else as `hex:...` (so that printed values parse back).
//!
//! Exit status, like grep: 0 on success, 1 when `get` finds no such key (it
//! prints `not found` on stderr), 2 on any other error (gRPC code and message on
//! stderr).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ranger_kv::keys::parse_key;
use ranger_kv::pb::kv_client::KvClient;
use ranger_kv::pb::{DeleteRequest, GetRequest, PutRequest, ScanRequest};
use ranger_node_sdk::{LogOutput, init_logging};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Pairs asked per Scan call when no limit is left to bound it.
const SCAN_PAGE: u32 = 1000;

#[derive(Debug, Parser)]
#[command(name = "kv", version, about = "Client of the example KV store")]
struct Cli {
    /// The proxy's or node's address.
    #[arg(long, env = "KV_ADDR", default_value = "127.0.0.1:5100", global = true)]
    addr: String,

    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Deadline of each request, in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    timeout_ms: u64,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Store VALUE under KEY.
    Put { key: String, value: String },
    /// Print the value of KEY (exit 1 if there is none).
    Get { key: String },
    /// Remove KEY (absent keys are fine).
    Delete { key: String },
    /// Print `key<TAB>value` for every key in [START, END), across ranges.
    Scan {
        start: String,
        /// Exclusive; omitted means to the end of the keyspace.
        end: Option<String>,
        /// Stop after this many pairs (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

/// How a command ended, beyond success.
#[derive(Debug)]
enum Failure {
    /// `get` of a missing key.
    NotFound,
    /// Anything else.
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::Error(error)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    init_logging("warn", LogOutput::Stderr);
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound) => {
            eprintln!("not found");
            ExitCode::from(1)
        }
        Err(Failure::Error(error)) => {
            eprintln!("kv: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    // Keys are parsed before connecting: a typo should not wait for the network.
    match &cli.command {
        Cmd::Put { key, value } => put(cli, wire_key(key)?, parse_value(value)?).await?,
        Cmd::Get { key } => get(cli, wire_key(key)?).await?,
        Cmd::Delete { key } => delete(cli, wire_key(key)?).await?,
        Cmd::Scan { start, end, limit } => {
            let end = end.as_deref().map(wire_key).transpose()?;
            scan(cli, wire_key(start)?, end.unwrap_or_default(), *limit).await?;
        }
    }
    Ok(())
}

async fn put(cli: &Cli, key: String, value: Vec<u8>) -> anyhow::Result<()> {
    connect(cli)
        .await?
        .put(PutRequest {
            key: key.clone(),
            value,
        })
        .await
        .map_err(|s| status_error("put", &key, s))?;
    print(cli, json!({"key": key, "ok": true}), "OK");
    Ok(())
}

async fn get(cli: &Cli, key: String) -> Result<(), Failure> {
    let request = GetRequest { key: key.clone() };
    let value = match connect(cli).await?.get(request).await {
        Ok(response) => response.into_inner().value,
        Err(status) if status.code() == Code::NotFound => return Err(Failure::NotFound),
        Err(status) => return Err(status_error("get", &key, status).into()),
    };
    let shown = show(&value);
    print(cli, json!({"key": key, "value": shown}), &shown);
    Ok(())
}

async fn delete(cli: &Cli, key: String) -> anyhow::Result<()> {
    connect(cli)
        .await?
        .delete(DeleteRequest { key: key.clone() })
        .await
        .map_err(|s| status_error("delete", &key, s))?;
    print(cli, json!({"key": key, "ok": true}), "OK");
    Ok(())
}

/// Follows `next` from range to range until END or the limit, printing as it goes.
async fn scan(cli: &Cli, start: String, end: String, limit: u32) -> anyhow::Result<()> {
    let mut client = connect(cli).await?;
    let mut cursor = start;
    let mut left = if limit == 0 { u32::MAX } else { limit };
    let mut json_pairs = Vec::new();
    loop {
        let request = ScanRequest {
            start: cursor.clone(),
            end: end.clone(),
            limit: left.min(SCAN_PAGE),
        };
        let response = client
            .scan(request)
            .await
            .map_err(|s| status_error("scan", &cursor, s))?
            .into_inner();
        for pair in response.pairs.into_iter().take(left as usize) {
            left -= 1;
            let (key, value) = (show(pair.key.as_bytes()), show(&pair.value));
            if cli.json {
                json_pairs.push(json!({"key": key, "value": value}));
            } else {
                println!("{key}\t{value}");
            }
        }
        if left == 0 || response.next.is_empty() {
            break;
        }
        if response.next <= cursor {
            bail!(
                "the server's scan did not advance (next {:?})",
                response.next
            );
        }
        cursor = response.next;
    }
    if cli.json {
        println!("{}", serde_json::Value::Array(json_pairs));
    }
    Ok(())
}

async fn connect(cli: &Cli) -> anyhow::Result<KvClient<Channel>> {
    let url = if cli.addr.contains("://") {
        cli.addr.clone()
    } else {
        format!("http://{}", cli.addr)
    };
    let timeout = Duration::from_millis(cli.timeout_ms);
    let channel = Endpoint::from_shared(url)
        .with_context(|| format!("bad address {:?}", cli.addr))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", cli.addr))?;
    Ok(KvClient::new(channel))
}

/// A command-line key as the wire wants it: a UTF-8 string.
fn wire_key(text: &str) -> anyhow::Result<String> {
    let bytes = parse_key(text)?;
    String::from_utf8(bytes)
        .with_context(|| format!("key {text:?} is not UTF-8 (kv keys are strings on the wire)"))
}

/// A command-line value: text, `hex:` or `b64:` like keys, but any bytes.
fn parse_value(text: &str) -> anyhow::Result<Vec<u8>> {
    parse_key(text).with_context(|| format!("bad value {text:?}"))
}

/// Bytes for humans: printable UTF-8 as is, anything else as `hex:...`, and
/// text that would read as an encoding (`hex:`, `b64:`) encoded too, so every
/// printed value parses back to the same bytes.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text.chars().any(char::is_control)
                && !text.starts_with("hex:")
                && !text.starts_with("b64:") =>
        {
            text.to_owned()
        }
        _ => format!("hex:{}", hex::encode(bytes)),
    }
}

/// A failed request as a readable error: what, on which key, the code, the message.
fn status_error(what: &str, key: &str, status: Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} {key:?} failed: {:?}: {}",
        status.code(),
        status.message()
    )
}

/// Prints a result as JSON or as text.
fn print(cli: &Cli, json: serde_json::Value, text: &str) {
    if cli.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}
