//! Request metrics of a `kv.KV` server, shared by the node and the proxy so
//! that both count the same way: one histogram family of request latencies by
//! gRPC method and status code (its `_count` is the request count), with the
//! codes named as gRPC names them (`OK`, `FailedPrecondition`, ...), so
//! dashboards made for other gRPC servers read them too.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::{Code, Status};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

/// Requests take from 100 µs (a read) to seconds (a proxy waiting through a
/// handoff).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Requests by method and code, with their latency. Cheap to clone: clones
/// share the family.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl RequestMetrics {
    /// Registers the family as `request_duration_seconds` in `registry` (the
    /// caller's prefix names the server).
    pub fn register(&self, registry: &mut Registry, server: &str) {
        registry.register(
            "request_duration_seconds",
            format!(
                "kv.KV requests {server} by gRPC method and status code, and how long they took; _count is the number of requests"
            ),
            self.requests.clone(),
        );
    }

    /// Runs the handler of one `method` call, recording its code and latency.
    pub async fn observe<T>(
        &self,
        method: &'static str,
        handler: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let began = Instant::now();
        let result = handler.await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: code_name(code),
            })
            .observe(began.elapsed().as_secs_f64());
        result
    }
}

/// A status code as gRPC's own implementations name it (`codes.Code.String()`
/// in Go): the label value other gRPC servers' metrics use.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_request_is_counted_under_its_method_and_code() {
        let metrics = RequestMetrics::default();
        let mut registry = Registry::with_prefix("test");
        metrics.register(&mut registry, "served");
        let _ = metrics.observe("Get", async { Ok(()) }).await;
        let _ = metrics.observe("Get", async { Ok(()) }).await;
        let refused = metrics
            .observe("Put", async {
                Err::<(), _>(Status::failed_precondition("not here"))
            })
            .await;
        assert_eq!(
            refused.map_err(|s| s.code()),
            Err(Code::FailedPrecondition),
            "the handler's status is passed on"
        );

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for line in [
            r#"test_request_duration_seconds_count{method="Get",code="OK"} 2"#,
            r#"test_request_duration_seconds_count{method="Put",code="FailedPrecondition"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains(r#"method="Put",code="OK""#), "{text}");
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::FailedPrecondition), "FailedPrecondition");
    }
}
