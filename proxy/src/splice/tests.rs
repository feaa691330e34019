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

/// Counts that work until the pair is spliced, then fail.
#[derive(Default)]
struct CountsFail(NoKernel, std::sync::atomic::AtomicBool);

impl Splice for CountsFail {
    fn splice(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<SpliceIds> {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.splice(a, b)
    }
    fn redirected(&self, from: u64) -> u64 {
        self.0.redirected(from)
    }
    fn queued(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("the socket went away"));
        }
        self.0.queued(fd)
    }
    fn unread(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        self.0.unread(fd)
    }
    fn received(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        self.0.received(fd)
    }
    fn release(&self, ids: SpliceIds) {
        self.0.release(ids)
    }
}

#[tokio::test]
async fn a_stream_whose_bytes_cannot_be_counted_ends_in_a_reset_not_a_clean_eof() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = CountsFail::default();
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(l1.local_addr().unwrap()).await.unwrap();
    let (pa, _) = l1.accept().await.unwrap();
    let pb = TcpStream::connect(l2.local_addr().unwrap()).await.unwrap();
    let (mut endpoint, _) = l2.accept().await.unwrap();
    let spliced = async move {
        let r = run(&pa, &pb, &s, &mut || {}).await;
        drop((pa, pb));
        r
    };
    let drive = async {
        client.write_all(b"payload").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let at_endpoint = endpoint.read_to_end(&mut got).await;
        // The endpoint answers and ends its side, as an echo does.
        let _ = endpoint.write_all(b"answer").await;
        let _ = endpoint.shutdown().await;
        let mut got = Vec::new();
        (at_endpoint, client.read_to_end(&mut got).await)
    };
    let both = async { tokio::join!(spliced, drive) };
    let (spliced, (endpoint_saw, client_saw)) =
        tokio::time::timeout(Duration::from_secs(10), both).await.expect("no stall");
    let err = spliced.expect_err("the splice cannot vouch for the data");
    assert!(err.to_string().contains("cannot count the spliced bytes"), "{err}");
    // Both ends see the failure: a clean end on either would pass a cut
    // stream off as a whole one.
    let e = endpoint_saw.expect_err("the endpoint must see a reset, not a clean end");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    let e = client_saw.expect_err("the client must see a reset, not a clean end");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
}
