//! The HTTP plumbing every endpoint shares: URLs, the token and datacenter,
//! time limits (longer for blocking reads), and turning answers into values or
//! typed errors. The endpoints themselves live in their own modules, each as an
//! `impl Client` block.

use std::sync::Arc;

use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::duration::go_duration;
use crate::error::{Error, Result};
use crate::query::{Consistency, QueryMeta, QueryOptions};

/// How much of an error answer's body to keep in [`Error::Status`].
const MAX_ERROR_BODY: usize = 1024;

/// A Consul client. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    config: Arc<ClientConfig>,
}

/// Whether an endpoint serves the whole cluster (and so takes `dc`) or only the
/// local agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Cluster,
    Agent,
}

/// A request about to be sent, with what error messages need to name it.
#[derive(Debug)]
pub(crate) struct Call {
    builder: RequestBuilder,
    method: Method,
    path: String,
}

impl Client {
    /// A client for the agent described by `config`. Fails only on an address
    /// that is not an `http(s)` URL; nothing is sent yet.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidAddress {
            address: config.address.clone(),
            reason,
        };
        let mut base = Url::parse(&config.address).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment has no place here".into()));
        }
        // Endpoint paths are appended segment by segment; a trailing slash
        // would leave an empty one behind.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|source| Error::Transport {
                method: String::new(),
                path: String::new(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            config: Arc::new(config),
        })
    }

    /// A client for the agent at `address` with the default configuration.
    pub fn from_address(address: impl Into<String>) -> Result<Self> {
        Self::new(ClientConfig::new(address))
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The URL of `/v1/<path...>/<tail>`. Each path element is one segment;
    /// `tail` (a KV key, say) may hold slashes, which separate segments. Every
    /// segment is percent-encoded, so keys may hold any character.
    pub(crate) fn url(&self, path: &[&str], tail: Option<&str>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push("v1").extend(path);
            if let Some(tail) = tail {
                segments.extend(tail.split('/'));
            }
        }
        url
    }

    /// Starts a request with the token, the datacenter (for cluster-wide
    /// endpoints) and the time limit of a non-blocking request.
    pub(crate) fn call(&self, method: Method, url: Url, scope: Scope) -> Call {
        let path = url.path().to_owned();
        let mut builder = self
            .http
            .request(method.clone(), url)
            .timeout(self.config.request_timeout);
        if let Some(token) = &self.config.token {
            builder = builder.header("X-Consul-Token", token);
        }
        if scope == Scope::Cluster
            && let Some(dc) = &self.config.datacenter
        {
            builder = builder.query(&[("dc", dc)]);
        }
        Call {
            builder,
            method,
            path,
        }
    }

    /// Starts a read with `opts`. A blocking read gets `index` and `wait`, and a
    /// time limit of the wait plus the up-to-1/16 jitter Consul adds plus the
    /// usual request limit, so that the client never gives up before Consul
    /// answers. An index of 0 is never sent: it would not block.
    pub(crate) fn read(&self, url: Url, opts: &QueryOptions) -> Call {
        let mut call = self.call(Method::GET, url, Scope::Cluster);
        if let Some(wait) = opts.effective_wait() {
            let timeout = wait + wait / 16 + self.config.request_timeout;
            call.builder = call
                .builder
                .query(&[
                    ("index", opts.index.to_string()),
                    ("wait", go_duration(wait)),
                ])
                .timeout(timeout);
        }
        match opts.consistency {
            Consistency::Default => {}
            Consistency::Consistent => call.builder = call.builder.query(&[("consistent", "")]),
            Consistency::Stale => call.builder = call.builder.query(&[("stale", "")]),
        }
        call
    }
}

impl Call {
    /// Adds query parameters.
    pub(crate) fn query<T: serde::Serialize + ?Sized>(mut self, params: &T) -> Self {
        self.builder = self.builder.query(params);
        self
    }

    /// Sets a raw body.
    pub(crate) fn body(mut self, body: Vec<u8>) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    /// Sets a JSON body.
    pub(crate) fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.builder = self.builder.json(body);
        self
    }

    /// Sends the request and returns the answer whatever its status.
    pub(crate) async fn send_raw(self) -> Result<Answer> {
        let Call {
            builder,
            method,
            path,
        } = self;
        match builder.send().await {
            Ok(response) => Ok(Answer {
                response,
                method,
                path,
            }),
            Err(source) => Err(Error::Transport {
                method: method.to_string(),
                path,
                source,
            }),
        }
    }

    /// Sends the request; any status but 2xx is an [`Error::Status`].
    pub(crate) async fn send(self) -> Result<Answer> {
        self.send_raw().await?.success().await
    }
}

/// An answer from Consul, with what error messages need to name its request.
#[derive(Debug)]
pub(crate) struct Answer {
    response: Response,
    method: Method,
    path: String,
}

impl Answer {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The metadata headers.
    pub(crate) fn meta(&self) -> QueryMeta {
        QueryMeta::from_headers(self.response.headers())
    }

    /// The answer itself if its status is 2xx, else an [`Error::Status`] with
    /// the start of the body, which is where Consul explains itself.
    pub(crate) async fn success(self) -> Result<Self> {
        if self.status().is_success() {
            Ok(self)
        } else {
            Err(self.into_status_error().await)
        }
    }

    /// Turns an unexpected answer into an [`Error::Status`].
    pub(crate) async fn into_status_error(self) -> Error {
        let status = self.status().as_u16();
        let method = self.method.to_string();
        let path = self.path.clone();
        let body = match self.response.bytes().await {
            Ok(bytes) => {
                let end = bytes.len().min(MAX_ERROR_BODY);
                String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
            }
            Err(e) => format!("<body unreadable: {e}>"),
        };
        Error::Status {
            status,
            method,
            path,
            body,
        }
    }

    /// The body as bytes.
    pub(crate) async fn bytes(self) -> Result<Vec<u8>> {
        let Answer {
            response,
            method,
            path,
        } = self;
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|source| Error::Transport {
                method: method.to_string(),
                path,
                source,
            })
    }

    /// The body decoded from JSON.
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T> {
        let path = self.path.clone();
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            path,
            reason: e.to_string(),
        })
    }

    /// The URL path of the request, for error messages.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment_of_a_key() {
        let client = Client::from_address("http://127.0.0.1:8500/").unwrap();
        let url = client.url(&["kv"], Some("ranges/a b/%?#"));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/kv/ranges/a%20b/%25%3F%23"
        );
        let url = client.url(&["kv"], Some("prefix/"));
        assert_eq!(url.as_str(), "http://127.0.0.1:8500/v1/kv/prefix/");
    }

    #[test]
    fn urls_keep_a_base_path() {
        let client = Client::from_address("http://proxy:1/consul").unwrap();
        let url = client.url(&["status", "leader"], None);
        assert_eq!(url.as_str(), "http://proxy:1/consul/v1/status/leader");
    }

    #[test]
    fn refuses_addresses_that_are_not_http() {
        for address in ["127.0.0.1:8500", "unix:/tmp/sock", "http://h:1/?x=1", ""] {
            assert!(
                matches!(
                    Client::from_address(address),
                    Err(Error::InvalidAddress { .. })
                ),
                "{address}"
            );
        }
    }
}
