//! Endpoint choice. Round robin for now: a counter shared by every connection
//! to the same service port.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The order in which to try `n` endpoints: each call starts one further on,
    /// and a failed connect falls through to the next ones.
    pub fn order(&self, n: usize) -> impl Iterator<Item = usize> {
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        (0..n).map(move |i| (start + i) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_covers_all() {
        let rr = RoundRobin::default();
        let firsts: Vec<usize> = (0..6).map(|_| rr.order(3).next().unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let mut all: Vec<usize> = rr.order(3).collect();
        all.sort();
        assert_eq!(all, [0, 1, 2]);
        assert_eq!(rr.order(0).count(), 0);
    }
}
