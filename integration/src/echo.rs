//! In-process echo servers that count their connections.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Echoes every connection; counts them, so a test can tell which endpoint the
/// proxy chose. The listener thread lives until the test process exits.
#[derive(Debug, Clone)]
pub struct EchoServer {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

impl EchoServer {
    pub fn start(bind: &str) -> Self {
        Self::start_mode(bind, false)
    }

    /// Replies only after the client's FIN (tests half-close).
    pub fn start_after_eof(bind: &str) -> Self {
        Self::start_mode(bind, true)
    }

    fn start_mode(bind: &str, after_eof: bool) -> Self {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = l.local_addr().expect("local_addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&conns);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                c2.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(s, after_eof));
            }
        });
        Self { addr, conns }
    }

    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

fn serve(mut c: TcpStream, after_eof: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut held = Vec::new();
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if after_eof => held.extend_from_slice(&buf[..n]),
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = c.write_all(&held);
    let _ = c.shutdown(Shutdown::Write);
}
