//! Protocol detection on an accepted connection: peek at the first bytes the
//! client sends (nothing is consumed) and tell HTTP/1.x, HTTP/2 with prior
//! knowledge, a TLS ClientHello and anything else apart. Server-first
//! protocols send nothing, so detection gives up after a bounded time and the
//! connection is forwarded as opaque TCP.

use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token we wait for before calling a stream not HTTP/1.
const MAX_METHOD: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    /// Bytes that are none of the above.
    Opaque,
    /// The client sent nothing within the detection time (server-first protocol).
    Timeout,
    /// The client closed (or half-closed) before sending enough to tell.
    Eof,
}

impl Detected {
    pub const ALL: [Detected; 6] =
        [Detected::Http1, Detected::Http2, Detected::Tls, Detected::Opaque, Detected::Timeout, Detected::Eof];

    pub fn name(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Timeout => "timeout",
            Detected::Eof => "eof",
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Detected::Http1 | Detected::Http2)
    }
}

/// Classifies the first bytes of a stream; `None`: not enough bytes to tell.
/// Deciding on a prefix never contradicts deciding on more bytes.
pub fn classify(b: &[u8]) -> Option<Detected> {
    if b.is_empty() {
        return None;
    }
    // HTTP/2 prior knowledge.
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // TLS record: handshake (22), version 3.x.
    if b[0] == 0x16 {
        return match b.get(1..3) {
            None if b.get(1).is_none_or(|&v| v == 3) => None,
            Some([3, minor]) if *minor <= 4 => Some(Detected::Tls),
            _ => Some(Detected::Opaque),
        };
    }
    // HTTP/1: METHOD SP request-target, the method an uppercase token.
    let token = b.iter().take_while(|c| c.is_ascii_uppercase() || **c == b'-' || **c == b'_').count();
    if token == b.len() {
        return (token > MAX_METHOD).then_some(Detected::Opaque);
    }
    if token == 0 || token > MAX_METHOD || b[token] != b' ' {
        return Some(Detected::Opaque);
    }
    match b.get(token + 1) {
        None => None,
        // origin-form, asterisk-form, absolute-form (http://), authority-form (CONNECT host:port)
        Some(c) if *c == b'/' || *c == b'*' || c.is_ascii_alphanumeric() || *c == b'[' => {
            Some(Detected::Http1)
        }
        Some(_) => Some(Detected::Opaque),
    }
}

/// Peeks until [`classify`] decides, the client stops, or `timeout` passes.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 32];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Err(_) => return Detected::Timeout,
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Eof,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // A prefix that cannot be told yet (rare: the first segment is short).
        // peek() returns at once while those bytes are queued, so wait a little.
        if tokio::time::Instant::now() + Duration::from_millis(2) >= deadline {
            return Detected::Timeout;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_shapes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"CONNECT example.com:443 HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET http://x/ HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&[0x16, 3, 1, 0, 0xc8, 1]), Some(Detected::Tls));
        assert_eq!(classify(b"hello world"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
        assert_eq!(classify(b"\x00\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"GET  /"), Some(Detected::Opaque));
        // Prefixes wait for more.
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET "), None);
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b""), None);
    }

    proptest! {
        /// A decision on a prefix is the decision on the whole.
        #[test]
        fn prefix_decisions_are_final(bytes in proptest::collection::vec(any::<u8>(), 0..40), cut in 0usize..40) {
            let cut = cut.min(bytes.len());
            if let Some(d) = classify(&bytes[..cut]) {
                prop_assert_eq!(classify(&bytes), Some(d));
            }
        }

        #[test]
        fn http_like_prefixes_agree(method in "[A-Z]{1,8}", path in "/[a-z0-9/]{0,20}", cut in 0usize..40) {
            let line = format!("{method} {path} HTTP/1.1\r\n");
            prop_assert_eq!(classify(line.as_bytes()), Some(Detected::Http1));
            let cut = cut.min(line.len());
            let d = classify(&line.as_bytes()[..cut]);
            prop_assert!(d.is_none() || d == Some(Detected::Http1) || (method == "PRI" && d.is_none()));
        }
    }
}
