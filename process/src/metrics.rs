//! One way for every Ranger binary to serve its metrics: the Prometheus text
//! exposition (OpenMetrics 1.0) of a `prometheus_client` registry at
//! `GET /metrics`, on an address of the operator's choosing.
//!
//! The registry is built by the binary (the node SDK, the KV store, the proxy and
//! the controller each register their own families into it), so this module only
//! knows how to answer a scrape. A binary that serves more over HTTP (`rangerd`'s
//! dashboard) merges [`metrics_router`] into its own router; the others call
//! [`serve_metrics`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type Prometheus asks for and `prometheus_client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Work to do just before a scrape is encoded: refresh gauges that are sampled
/// rather than kept up to date (a node's ranges by state, the controller's view
/// of the keyspace). Asynchronous because sampling may ask another task.
pub type BeforeScrape =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static>;

/// The registry a binary serves, and what to refresh before each scrape.
#[derive(Clone)]
pub struct MetricsSource {
    registry: Arc<Registry>,
    before_scrape: Option<BeforeScrape>,
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("before_scrape", &self.before_scrape.is_some())
            .finish_non_exhaustive()
    }
}

impl MetricsSource {
    /// Serves `registry` as it is at each scrape.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
            before_scrape: None,
        }
    }

    /// Runs `refresh` before each scrape is encoded.
    pub fn before_scrape(mut self, refresh: BeforeScrape) -> Self {
        self.before_scrape = Some(refresh);
        self
    }

    /// The exposition text of every registered metric, after the refresh.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        if let Some(refresh) = &self.before_scrape {
            refresh().await;
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A router answering `GET /metrics` from `source`.
pub fn metrics_router(source: MetricsSource) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let source = source.clone();
            async move { scrape(&source).await }
        }),
    )
}

async fn scrape(source: &MetricsSource) -> Response {
    match source.render().await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

/// Why an HTTP endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpServeError {
    #[error("binding the HTTP address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` and serves `router` until `stop` resolves. Returns the bound
/// address (port 0 picks a free one) and the server task.
pub async fn serve_http(
    addr: SocketAddr,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>), HttpServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpServeError::Bind { addr, source })?;
    tracing::info!(http = %bound, "serving HTTP");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
    });
    Ok((bound, task))
}

/// [`serve_http`] with only `GET /metrics`.
pub async fn serve_metrics(
    addr: SocketAddr,
    source: MetricsSource,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>), HttpServeError> {
    serve_http(addr, metrics_router(source), stop).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[tokio::test]
    async fn a_scrape_refreshes_sampled_gauges_before_encoding() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        let sampled = Gauge::<i64>::default();
        registry.register("requests", "Requests served", requests.clone());
        registry.register(
            "sampled",
            "A gauge set just before each scrape",
            sampled.clone(),
        );
        let refreshes = Arc::new(AtomicU64::new(0));
        let refresh: BeforeScrape = {
            let refreshes = refreshes.clone();
            Arc::new(move || {
                let n = refreshes.fetch_add(1, Ordering::SeqCst) + 1;
                let sampled = sampled.clone();
                Box::pin(async move {
                    sampled.set(n as i64 * 10);
                })
            })
        };
        let source = MetricsSource::new(registry).before_scrape(refresh);
        requests.inc_by(3);

        let text = source.render().await.expect("encodes");
        assert!(text.contains("requests_total 3"), "{text}");
        assert!(text.contains("sampled 10"), "{text}");
        let text = source.render().await.expect("encodes");
        assert!(text.contains("sampled 20"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_served_over_http_until_stop() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things", counter.clone());
        counter.inc();
        let stop = crate::Stop::new();
        let (addr, task) = serve_metrics(
            "127.0.0.1:0".parse().expect("address"),
            MetricsSource::new(registry),
            stop.wait(),
        )
        .await
        .expect("binds");

        let body = http_get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("openmetrics-text"), "{body}");
        assert!(body.contains("things_total 1"), "{body}");

        stop.stop();
        task.await.expect("joins").expect("serves cleanly");
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = taken.local_addr().expect("address");
        let error = serve_metrics(addr, MetricsSource::new(Registry::default()), async {})
            .await
            .expect_err("the port is taken");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    /// A bare HTTP/1.1 GET, so the test needs no HTTP client crate.
    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }
}
