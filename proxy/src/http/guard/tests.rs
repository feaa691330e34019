use proptest::prelude::*;

use super::*;

/// Runs `input` through a guard in pieces of `step` bytes.
fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<&'static str>) {
    let verdict = Verdict::default();
    let mut g = Guard::new((), 8192, 100, Arc::clone(&verdict));
    for piece in input.chunks(step.max(1)) {
        g.process(piece);
    }
    let v = *verdict.lock().unwrap();
    (g.out.to_vec(), v)
}

fn refused(input: &str) -> &'static str {
    for step in [1, 3, input.len()] {
        let (out, v) = run(input.as_bytes(), step);
        assert!(out.ends_with(POISON), "{input:?} step {step}: not poisoned");
        assert!(v.is_some(), "{input:?}");
    }
    run(input.as_bytes(), input.len()).1.unwrap_or_default()
}

fn passes(input: &str) {
    for step in [1, 2, 7, input.len()] {
        let (out, v) = run(input.as_bytes(), step);
        assert_eq!(v, None, "{input:?} step {step}");
        assert_eq!(out, input.as_bytes(), "{input:?} step {step}");
    }
}

#[test]
fn well_formed_requests_pass_unchanged() {
    passes("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    passes("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    passes("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe\nloGET / HTTP/1.1\r\n\r\n");
    passes(
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhe\nlo\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n",
    );
    passes("POST /x HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc");
    passes("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\n\x00anything\r goes");
}

#[test]
fn smuggling_shapes_are_refused() {
    assert_eq!(
        refused("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "Content-Length together with Transfer-Encoding"
    );
    assert_eq!(
        refused("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"),
        "conflicting Content-Length values"
    );
    assert_eq!(refused("POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd"), "invalid Content-Length");
    assert_eq!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        "Transfer-Encoding must end with chunked (once)"
    );
    assert_eq!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"),
        "invalid chunk size"
    );
    assert_eq!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
        "chunk data does not end where its size says"
    );
    assert_eq!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n"),
        "invalid chunk size"
    );
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
        "obs-fold (a header line starting with whitespace)"
    );
    assert_eq!(refused("GET / HTTP/1.1\nHost: a\r\n\r\n"), "bare LF line ending");
    assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), "bare CR in the request head");
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        "whitespace between a header name and its colon"
    );
    // A second, bad request after a good one: the good one passes, then poison.
    let (out, v) = run(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\nX: y\r\n\r\n", 4);
    assert!(out.starts_with(b"GET / HTTP/1.1\r\n\r\n") && out.ends_with(POISON));
    assert_eq!(v, Some("bare LF line ending"));
}

proptest! {
    /// Never panics, whatever the bytes and however they are split; output
    /// is the input, or a prefix of it followed by the poison.
    #[test]
    fn any_bytes(input in proptest::collection::vec(any::<u8>(), 0..300), step in 1usize..50) {
        let (out, v) = run(&input, step);
        if v.is_some() {
            let body = &out[..out.len() - POISON.len()];
            prop_assert!(out.ends_with(POISON));
            prop_assert!(input.starts_with(body));
        } else {
            prop_assert!(input.starts_with(&out));
        }
    }

    #[test]
    fn chunked_bodies_of_any_split(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6), step in 1usize..30) {
        let mut req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in &chunks {
            req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            req.extend_from_slice(c);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let (out, v) = run(&req, step);
        prop_assert_eq!(v, None);
        prop_assert_eq!(out, req);
    }
}
