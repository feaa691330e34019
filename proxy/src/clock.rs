//! Coarse clocks, for what needs no better than a few milliseconds (idle
//! timeouts, the `date` header): the kernel's last tick, read without the
//! time-stamp counter. A precise clock read costs about as much as the
//! rest of a pooled-connection checkout, and a request made several.

use nix::time::{ClockId, clock_gettime};

/// Milliseconds of a monotonic clock that advances in ticks (a few ms).
pub fn coarse_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map_or(0, |t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
}

/// Seconds since the Unix epoch, as of the kernel's last tick.
pub fn coarse_unix_secs() -> u64 {
    clock_gettime(ClockId::CLOCK_REALTIME_COARSE).map_or(0, |t| t.tv_sec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clocks_follow_the_precise_ones() {
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert!(coarse_unix_secs().abs_diff(precise) <= 1);
        let a = coarse_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = coarse_ms();
        assert!((40..1000).contains(&(b - a)), "{a} → {b}");
    }
}
