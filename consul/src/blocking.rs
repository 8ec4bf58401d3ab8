//! The client side of Consul's blocking queries, as Consul's documentation
//! asks clients to implement it: track the index, reset it when it goes
//! backwards (the data was restored or a different server answered), never
//! block on an index of 0 (that would answer at once, in a busy loop), and back
//! off after errors. The controller and the proxy use it to watch keys and
//! services.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;
use crate::query::{Consistency, Indexed, QueryMeta, QueryOptions};

/// The first pause after an error.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest pause after errors.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The state of one watched query: the index to block on, and the backoff
/// after errors.
///
/// ```no_run
/// # async fn run(client: ranger_consul::Client) -> ranger_consul::Result<()> {
/// use std::time::Duration;
/// let mut watch = ranger_consul::BlockingQuery::new(Duration::from_secs(60));
/// loop {
///     // Answers at once the first time, then each time the list changes.
///     let nodes = watch.next(|opts| client.health_service("node", true, opts)).await;
///     println!("{} healthy nodes", nodes.value.len());
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct BlockingQuery {
    index: u64,
    wait: Duration,
    consistency: Consistency,
    failures: u32,
}

impl BlockingQuery {
    /// A watch that starts with a plain read and then blocks for at most
    /// `wait` per request.
    pub fn new(wait: Duration) -> Self {
        Self {
            index: 0,
            wait,
            consistency: Consistency::Default,
            failures: 0,
        }
    }

    /// Sets the freshness of the reads.
    pub fn with_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The index the next request blocks on (0: it will not block).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Options for the next request.
    pub fn options(&self) -> QueryOptions {
        QueryOptions {
            index: self.index,
            wait: Some(self.wait),
            consistency: self.consistency,
        }
    }

    /// Takes in an answer's metadata and returns true when the data may have
    /// changed: always for the first answer, else when the index moved. An
    /// answer with the same index is a wait that ran out.
    pub fn observe(&mut self, meta: &QueryMeta) -> bool {
        self.failures = 0;
        let previous = self.index;
        let next = if meta.index < previous {
            // Backwards: the state was reset (a snapshot restore, a restarted
            // dev agent). Start over with a plain read.
            0
        } else if meta.index == 0 {
            // Consul should never answer 0 here; blocking on 0 would not block,
            // so block on 1 instead, which waits for any real index.
            1
        } else {
            meta.index
        };
        self.index = next;
        previous == 0 || next != previous
    }

    /// Records a failed request and returns how long to pause before the next:
    /// doubling from 100 ms up to 10 s, with jitter so that many watchers do
    /// not retry in step.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let base = BACKOFF_START.saturating_mul(1 << exp).min(BACKOFF_MAX);
        // Between half and all of the base pause.
        let half = base / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Runs `fetch` with this watch's options until it returns an answer that
    /// may differ from the last one, and returns it. Errors are logged and
    /// retried after a backoff; to give up (on shutdown, say) drop the future,
    /// e.g. in a `select!`: it holds no state between requests.
    pub async fn next<T, F, Fut>(&mut self, mut fetch: F) -> Indexed<T>
    where
        F: FnMut(QueryOptions) -> Fut,
        Fut: Future<Output = Result<Indexed<T>>>,
    {
        loop {
            match fetch(self.options()).await {
                Ok(answer) => {
                    if self.observe(&answer.meta) {
                        return answer;
                    }
                }
                Err(error) => {
                    let pause = self.failed();
                    tracing::warn!(%error, ?pause, "Consul blocking query failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Like [`BlockingQuery::next`], but returns the first error instead of
    /// retrying it (the backoff pause is still taken first, so a caller that
    /// loops does not hammer Consul).
    pub async fn try_next<T, F, Fut>(&mut self, mut fetch: F) -> Result<Indexed<T>>
    where
        F: FnMut(QueryOptions) -> Fut,
        Fut: Future<Output = Result<Indexed<T>>>,
    {
        loop {
            match fetch(self.options()).await {
                Ok(answer) => {
                    if self.observe(&answer.meta) {
                        return Ok(answer);
                    }
                }
                Err(error) => {
                    tokio::time::sleep(self.failed()).await;
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> QueryMeta {
        QueryMeta {
            index,
            ..QueryMeta::default()
        }
    }

    #[test]
    fn follows_consuls_index_rules() {
        let mut q = BlockingQuery::new(Duration::from_secs(1));
        assert_eq!(
            q.options().effective_wait(),
            None,
            "the first read does not block"
        );
        assert!(q.observe(&meta(10)), "the first answer is news");
        assert_eq!(q.index(), 10);
        assert!(!q.observe(&meta(10)), "same index: the wait ran out");
        assert!(q.observe(&meta(12)));
        assert!(q.observe(&meta(5)), "backwards: reset");
        assert_eq!(q.index(), 0);
        assert!(q.observe(&meta(5)), "after a reset the next answer is news");
        assert_eq!(q.index(), 5);
        assert!(q.observe(&meta(0)), "0 after 5 goes backwards");
        assert_eq!(q.index(), 0, "so the next read is a plain one");
        assert!(q.observe(&meta(0)));
        assert_eq!(q.index(), 1, "never block on 0");
        assert!(q.options().effective_wait().is_some());
    }

    #[test]
    fn backs_off_up_to_a_limit_and_resets_on_success() {
        let mut q = BlockingQuery::new(Duration::from_secs(1));
        let first = q.failed();
        assert!(first >= Duration::from_millis(50) && first <= BACKOFF_START);
        for _ in 0..40 {
            assert!(q.failed() <= BACKOFF_MAX);
        }
        assert!(q.failed() >= BACKOFF_MAX / 2);
        q.observe(&meta(3));
        assert!(q.failed() <= BACKOFF_START);
    }

    #[tokio::test(start_paused = true)]
    async fn next_skips_answers_that_did_not_change() {
        let mut q = BlockingQuery::new(Duration::from_secs(1));
        let mut answers = vec![
            Ok(Indexed {
                value: "c",
                meta: meta(8),
            }),
            Ok(Indexed {
                value: "b",
                meta: meta(7),
            }),
            Err(crate::Error::NoLeader(Duration::ZERO)),
            Ok(Indexed {
                value: "a",
                meta: meta(7),
            }),
        ];
        let mut seen = Vec::new();
        let got = q
            .next(|o| {
                seen.push(o.index);
                let answer = answers.pop().unwrap();
                async move { answer }
            })
            .await;
        assert_eq!(got.value, "a");
        let got = q
            .next(|o| {
                seen.push(o.index);
                let answer = answers.pop().unwrap();
                async move { answer }
            })
            .await;
        assert_eq!(got.value, "c");
        assert_eq!(seen, vec![0, 7, 7, 7]);
    }
}
