//! The last few records of something, newest last: what a node keeps of its
//! transfers and handoff callbacks for operators and benchmarks, bounded so
//! that a long-lived node does not grow.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::lock;

#[derive(Debug)]
pub(super) struct Recent<T> {
    items: Mutex<VecDeque<T>>,
    keep: usize,
}

impl<T: Clone> Recent<T> {
    pub(super) fn new(keep: usize) -> Self {
        Recent {
            items: Mutex::new(VecDeque::with_capacity(keep)),
            keep,
        }
    }

    /// Adds `item`, dropping the oldest once `keep` are held.
    pub(super) fn record(&self, item: T) {
        let mut items = lock(&self.items);
        if items.len() == self.keep {
            items.pop_front();
        }
        items.push_back(item);
    }

    /// Every record held, oldest first.
    pub(super) fn all(&self) -> Vec<T> {
        lock(&self.items).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_records_in_order() {
        let recent = Recent::new(3);
        for i in 0..5 {
            recent.record(i);
        }
        assert_eq!(recent.all(), vec![2, 3, 4]);
    }
}
