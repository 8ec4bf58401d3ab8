//! What a hammer run does: target, workers, keys, pace, operation mix.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::HammerError;

/// The configuration of one hammer run.
///
/// Every worker owns the keys `{key_prefix}{worker}-{n:06}` for `n` in
/// `0..keys_per_worker`: it is their only writer, which is what lets the hammer
/// know the expected value of every key at every moment.
#[derive(Debug, Clone)]
pub struct HammerConfig {
    /// The `kv.KV` server: a proxy or a node, `host:port` or a URL.
    pub target: String,
    /// Concurrent workers; each runs one request at a time.
    pub workers: usize,
    /// Prefix of every key; worker `i` uses `{key_prefix}{i}-{n:06}`.
    pub key_prefix: String,
    /// Keys owned by each worker.
    pub keys_per_worker: usize,
    /// How long to generate load; zero means until the shutdown future resolves.
    pub duration: Duration,
    /// Target rate in operations per second over all workers; 0 means as fast as
    /// the server answers.
    pub rate: u64,
    /// The share of each operation.
    pub mix: OpMix,
    /// Size of every written value in bytes (at least the size of its
    /// self-describing prefix, see [`super::value`]).
    pub value_size: usize,
    /// Deadline of one request; past it the outcome of a write is unknown.
    pub request_timeout: Duration,
    /// Seed of the operation choices, so that a run can be replayed.
    pub seed: u64,
    /// How long clearing the keys (before the load) and verifying them (after)
    /// keep retrying failed requests.
    pub settle_timeout: Duration,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

impl HammerConfig {
    /// A configuration with defaults suited to a local cluster.
    pub fn new(target: impl Into<String>) -> HammerConfig {
        HammerConfig {
            target: target.into(),
            workers: 8,
            key_prefix: "h".to_owned(),
            keys_per_worker: 1000,
            duration: Duration::from_secs(10),
            rate: 0,
            mix: OpMix::default(),
            value_size: 64,
            request_timeout: Duration::from_secs(5),
            seed: 0,
            settle_timeout: Duration::from_secs(30),
            progress: false,
        }
    }

    /// Refuses configurations that cannot run (no workers, no keys...).
    pub fn validate(&self) -> Result<(), HammerError> {
        let bad = |why: &str| Err(HammerError::InvalidConfig(why.to_owned()));
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        if self.keys_per_worker == 0 {
            return bad("keys per worker must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return bad("the request timeout must be positive");
        }
        if self.target.is_empty() {
            return bad("the target address is empty");
        }
        Ok(())
    }

    /// The key `n` of worker `worker`, e.g. `h3-000017`.
    pub fn key(&self, worker: usize, n: usize) -> String {
        format!("{}{worker}-{n:06}", self.key_prefix)
    }
}

/// The kinds of operation the hammer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// A put of a key believed absent.
    Create,
    /// A get.
    Read,
    /// A put of a key believed present.
    Update,
    /// A delete of a key believed present.
    Delete,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 4] = [OpKind::Create, OpKind::Read, OpKind::Update, OpKind::Delete];

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        }
    }

    /// Whether the operation changes the store.
    pub fn is_write(self) -> bool {
        self != OpKind::Read
    }
}

/// Percentages of create, read, update and delete; they sum to 100.
///
/// The mix is what workers aim for: a create finds no absent key when all of a
/// worker's keys exist (it becomes an update), and likewise for update and delete
/// of an empty key set (they become creates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpMix {
    /// Percent of creates.
    pub create: u8,
    /// Percent of reads.
    pub read: u8,
    /// Percent of updates.
    pub update: u8,
    /// Percent of deletes.
    pub delete: u8,
}

impl OpMix {
    /// Checks that the percentages sum to 100.
    pub fn new(create: u8, read: u8, update: u8, delete: u8) -> Result<OpMix, HammerError> {
        let sum = u32::from(create) + u32::from(read) + u32::from(update) + u32::from(delete);
        if sum != 100 {
            return Err(HammerError::InvalidConfig(format!(
                "the operation mix must sum to 100, not {sum}"
            )));
        }
        Ok(OpMix {
            create,
            read,
            update,
            delete,
        })
    }

    /// The operation for a roll in `0..100`.
    pub fn pick(&self, roll: u8) -> OpKind {
        let mut bound = self.create;
        if roll < bound {
            return OpKind::Create;
        }
        bound += self.read;
        if roll < bound {
            return OpKind::Read;
        }
        bound += self.update;
        if roll < bound {
            return OpKind::Update;
        }
        OpKind::Delete
    }
}

impl Default for OpMix {
    /// Read-mostly with every kind of write: 10% create, 60% read, 20% update,
    /// 10% delete.
    fn default() -> OpMix {
        OpMix {
            create: 10,
            read: 60,
            update: 20,
            delete: 10,
        }
    }
}

/// Parses `create,read,update,delete`, e.g. `10,60,20,10`.
impl FromStr for OpMix {
    type Err = HammerError;

    fn from_str(text: &str) -> Result<OpMix, HammerError> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let bad = || {
            HammerError::InvalidConfig(format!(
                "bad operation mix {text:?}: want four percentages create,read,update,delete"
            ))
        };
        let [c, r, u, d] = parts.as_slice() else {
            return Err(bad());
        };
        let num = |s: &str| s.parse::<u8>().map_err(|_| bad());
        OpMix::new(num(c)?, num(r)?, num(u)?, num(d)?)
    }
}

impl fmt::Display for OpMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.create, self.read, self.update, self.delete
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks() {
        let mix: OpMix = "10,60,20,10".parse().unwrap();
        assert_eq!(mix, OpMix::default());
        assert_eq!(mix.pick(0), OpKind::Create);
        assert_eq!(mix.pick(10), OpKind::Read);
        assert_eq!(mix.pick(70), OpKind::Update);
        assert_eq!(mix.pick(99), OpKind::Delete);
        assert!("10,60,20".parse::<OpMix>().is_err());
        assert!("10,60,20,11".parse::<OpMix>().is_err());
    }

    #[test]
    fn keys_are_numbered_per_worker() {
        assert_eq!(HammerConfig::new("x").key(3, 17), "h3-000017");
    }
}
