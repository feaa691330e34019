use proptest::prelude::*;

use super::*;

#[test]
fn scan_head_finds_the_end_or_defers() {
    assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"), Scan::Complete(27));
    assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Partial);
    assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), Scan::Partial);
    assert_eq!(scan_head(b""), Scan::Partial);
    // Bare LF and leading empty lines are the guard's to judge.
    assert_eq!(scan_head(b"GET / HTTP/1.1\nHost: a\n\n"), Scan::Hyper);
    assert_eq!(scan_head(b"GET / HTTP/1.1\r\nHost: a\n"), Scan::Hyper);
    assert_eq!(scan_head(b"\r\nGET / HTTP/1.1\r\n\r\n"), Scan::Hyper);
}

fn parse(head: &[u8]) -> Option<(crate::http::BoxRequest, bool)> {
    request(&Bytes::copy_from_slice(head), 100)
}

#[test]
fn plain_requests_are_parsed_once_with_shared_values() {
    let (req, close) = parse(
        b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Two: 1\r\nX-Two: 2\r\nConnection: keep-alive, Close\r\n\r\n",
    )
    .expect("served here");
    assert!(close);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path_and_query().map(|p| p.as_str()), Some("/a?b=1"));
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "svc");
    assert_eq!(req.headers().get_all("x-two").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(req.body().is_end_stream());
    let (_, close) =
        parse(b"DELETE /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n").expect("served here");
    assert!(!close);
}

#[test]
fn other_requests_go_to_hyper() {
    for head in [
        &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        // What the guard refuses (with 400) never passes here either.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(parse(head).is_none(), "{}", String::from_utf8_lossy(head));
    }
    // More header fields than the configured limit: hyper answers 431.
    let head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert!(request(&Bytes::from_static(head), 2).is_none());
    assert!(request(&Bytes::from_static(head), 3).is_some());
}

#[test]
fn dates_are_written_as_http_wants() {
    let mut out = Vec::new();
    put_date(&mut out);
    let text = String::from_utf8(out).expect("ASCII");
    let when = httpdate::parse_http_date(&text).expect("an HTTP date");
    let skew = std::time::SystemTime::now().duration_since(when).unwrap_or_default();
    assert!(skew.as_secs() <= 2, "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// Whatever head the fast path serves, the guard passes as a request
    /// without a body: the fast path never serves what the guard refuses.
    #[test]
    fn the_fast_path_serves_only_what_the_guard_passes(
        // Mostly well-formed pieces, so that many heads get through httparse.
        method in prop::sample::select(vec!["GET", "GET", "HEAD", "POST", "DELETE", "CONNECT", "G T"]),
        target in prop::sample::select(vec!["/", "/", "/a?b", "*", "http://x/", "/a b", "/\rx"]),
        version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
        fields in prop::collection::vec(
            (
                prop::sample::select(vec!["Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "X-A", "TE", "Expect", "Host ", " X"]),
                prop::sample::select(vec!["0", "00", "1", "0, 0", "", "chunked", "gzip", "close", "upgrade", "a\rb", "a\tb", " v ", "-1", "\u{e9}"]),
                prop::sample::select(vec![": ", ": ", ": ", ":", "", " : "]),
            ),
            0..4,
        ),
    ) {
        let mut head = format!("{method} {target} {version}\r\n");
        for (name, value, sep) in &fields {
            head.push_str(&format!("{name}{sep}{value}\r\n"));
        }
        head.push_str("\r\n");
        let head = head.into_bytes();
        if scan_head(&head) == Scan::Complete(head.len()) && parse(&head).is_some() {
            prop_assert!(crate::http::guard::passes_plain(&head), "{}", String::from_utf8_lossy(&head));
        }
    }
}
