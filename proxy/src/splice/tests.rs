use std::{collections::HashSet, os::fd::AsRawFd, sync::Mutex};

use super::*;

/// A stand-in that splices nothing: every byte reaches userspace, so the
/// forwarding loop's fallback copy, EOF and reset handling run without the
/// kernel programs.
#[derive(Default)]
struct NoKernel(Mutex<u64>, Mutex<HashSet<i32>>);

impl Splice for NoKernel {
    fn splice(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<SpliceIds> {
        self.1.lock().unwrap().extend([a.as_raw_fd(), b.as_raw_fd()]);
        let mut n = self.0.lock().unwrap();
        *n += 2;
        Ok(SpliceIds { a: *n - 1, b: *n })
    }
    fn redirected(&self, _: u64) -> u64 {
        0
    }
    /// Nothing moves in the kernel: what was queued is what the loop wrote,
    /// which this stand-in takes to be everything received.
    fn queued(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        let _ = fd;
        Ok(0)
    }
    fn unread(&self, _: BorrowedFd<'_>) -> io::Result<u64> {
        Ok(0)
    }
    /// 0: with queued() also 0, the drain condition holds at once.
    fn received(&self, _: BorrowedFd<'_>) -> io::Result<u64> {
        Ok(0)
    }
    fn release(&self, _: SpliceIds) {
        self.1.lock().unwrap().clear();
    }
}

#[tokio::test]
async fn the_loop_copies_what_reaches_it_and_propagates_eof_and_reset() {
    let s = NoKernel::default();
    for case in [Case::Bulk, Case::Small, Case::Reset] {
        let r = one_case(&s, case).await.unwrap_or_else(|e| panic!("{case:?}: {e}"));
        if let Case::Bulk = case {
            assert_eq!((r.user_up, r.user_down), (1 << 20, 1 << 20));
        }
    }
    // Without a kernel, the self-test refuses: the payload went through userspace.
    let e = self_test(&s).await.unwrap_err();
    assert!(e.contains("did not stay in the kernel"), "{e}");
}
