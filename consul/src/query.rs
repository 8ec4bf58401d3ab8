//! Options and metadata shared by Consul's read endpoints, including blocking
//! queries: a read that names the index it has seen waits until the data
//! changes past it (or the wait runs out) instead of answering at once.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader, which may be stale for a moment after losing
    /// leadership; Consul's default.
    #[default]
    Default,
    /// The leader confirms its leadership first: never stale, slower.
    Consistent,
    /// Any server may answer: fast, possibly stale. See [`QueryMeta::last_contact`].
    Stale,
}

/// Options of a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// The index of the last answer seen. 0 makes a plain read that answers at
    /// once; above 0, Consul holds the request until its index passes this one
    /// or `wait` runs out.
    pub index: u64,
    /// Longest time to hold a blocking read (Consul's default is 5 minutes, its
    /// maximum 10). Ignored when `index` is 0.
    pub wait: Option<Duration>,
    /// Freshness required.
    pub consistency: Consistency,
}

impl QueryOptions {
    /// Consul's longest wait; longer waits are cut to this.
    pub const MAX_WAIT: Duration = Duration::from_secs(600);
    /// Consul's wait when none is given.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

    /// A blocking read that waits past `index` for at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index,
            wait: Some(wait),
            consistency: Consistency::Default,
        }
    }

    /// The wait Consul will apply, if this read blocks at all.
    pub(crate) fn effective_wait(&self) -> Option<Duration> {
        (self.index > 0).then(|| self.wait.unwrap_or(Self::DEFAULT_WAIT).min(Self::MAX_WAIT))
    }
}

/// What Consul says about an answer besides its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: pass it as [`QueryOptions::index`] to wait for the next
    /// change. 0 when the endpoint does not report one.
    pub index: u64,
    /// `X-Consul-KnownLeader`: false when the answering server knows of no
    /// leader, so the data may be stale.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: how long since the answering server heard from
    /// the leader (0 when it is the leader).
    pub last_contact: Duration,
}

impl QueryMeta {
    /// Reads the metadata headers of an answer; missing or garbled headers
    /// count as 0 / false, since no endpoint must have them.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let known_leader = headers
            .get("X-Consul-KnownLeader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Self {
            index: number("X-Consul-Index"),
            known_leader,
            last_contact: Duration::from_millis(number("X-Consul-LastContact")),
        }
    }
}

/// An answer with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The answer.
    pub value: T,
    /// Its metadata, with the index to block on next.
    pub meta: QueryMeta,
}

impl<T> Indexed<T> {
    /// Converts the answer, keeping its metadata.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Indexed<U> {
        Indexed {
            value: f(self.value),
            meta: self.meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_headers_and_tolerates_missing_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Consul-Index", HeaderValue::from_static("42"));
        headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
        let meta = QueryMeta::from_headers(&headers);
        assert_eq!(meta.index, 42);
        assert!(meta.known_leader);
        assert_eq!(meta.last_contact, Duration::ZERO);
        assert_eq!(
            QueryMeta::from_headers(&HeaderMap::new()),
            QueryMeta::default()
        );
    }

    #[test]
    fn only_an_index_above_zero_blocks() {
        assert_eq!(QueryOptions::default().effective_wait(), None);
        let o = QueryOptions::blocking(5, Duration::from_secs(3600));
        assert_eq!(o.effective_wait(), Some(QueryOptions::MAX_WAIT));
        let o = QueryOptions {
            index: 5,
            ..Default::default()
        };
        assert_eq!(o.effective_wait(), Some(QueryOptions::DEFAULT_WAIT));
    }
}
