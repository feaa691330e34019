//! The HTTP/1.1 client against scripted endpoints: each test's endpoint
//! reads one request head (and body), records it, and answers with fixed bytes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::endpoint::{Counter, EndpointState};

#[derive(Debug, Clone, Copy)]
enum Answer {
    Send(&'static [u8]),
    /// Sends, then closes the connection.
    SendClose(&'static [u8]),
    /// Closes without answering.
    Close,
}
use Answer::*;

/// An endpoint that answers the n-th request on a connection with
/// `answers[n]`, and records every request's bytes.
async fn endpoint(answers: Vec<Answer>) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        for answer in answers {
            // One whole request: head, then a body by Content-Length or chunked.
            let request = loop {
                if let Some(end) = head_end(&buf) {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let need = if let Some(cl) = head.split("content-length: ").nth(1) {
                        end + cl.split("\r\n").next().unwrap().trim().parse::<usize>().unwrap()
                    } else if head.contains("transfer-encoding: chunked") {
                        match memchr::memmem::find(&buf[end..], b"0\r\n\r\n") {
                            Some(i) => end + i + 5,
                            None => usize::MAX,
                        }
                    } else {
                        end
                    };
                    if buf.len() >= need {
                        break buf.drain(..need).collect::<Vec<u8>>();
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            log.lock().unwrap().push(request);
            match answer {
                Send(a) => s.write_all(a).await.unwrap(),
                SendClose(a) => return s.write_all(a).await.unwrap(),
                Close => return,
            }
        }
        // Keep the connection open until the client is done.
        let _ = s.read(&mut [0u8; 1]).await;
    });
    (addr, seen)
}

async fn conn(addr: SocketAddr) -> Conn {
    let ep = Arc::new(EndpointState::new(addr, None));
    let held = Held::try_take(&ep, Counter::Connection, 10).unwrap();
    Conn::new(TcpStream::connect(addr).await.unwrap(), held)
}

fn get(path: &str) -> crate::http::BoxRequest {
    Box::new(Request::builder().uri(path).header("host", "svc").body(crate::http::error::empty()).unwrap())
}

/// Sends `req`; the response and its collected body, and the connection if
/// it went back to the pool.
async fn exchange(
    c: Conn,
    req: crate::http::BoxRequest,
) -> (http::response::Parts, Bytes, Option<HeaderMap>, Option<Conn>) {
    let back: Arc<Mutex<Option<Conn>>> = Arc::default();
    let slot = Arc::clone(&back);
    let resp = match c.send(req, None, move |c| *slot.lock().unwrap() = Some(c)).await {
        Ok(r) => r,
        Err(e) => panic!("exchange failed: {e:?}"),
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let c = back.lock().unwrap().take();
    (parts, bytes, trailers, c)
}

#[tokio::test]
async fn keep_alive_reuses_the_connection_and_writes_a_plain_head() {
    let (addr, seen) = endpoint(vec![
        Send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"),
        Send(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let (p, body, _, c) = exchange(conn(addr).await, get("/one?x=1")).await;
    assert_eq!((p.status.as_u16(), &body[..]), (200, &b"hello"[..]));
    assert_eq!(p.headers["x-a"], "1");
    let c = c.expect("back in the pool after a whole body");
    assert!(c.reusable());
    let (p, body, _, c) = exchange(c, get("/two")).await;
    assert_eq!((p.status.as_u16(), body.len()), (404, 0));
    assert!(c.is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], b"GET /one?x=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
    assert_eq!(seen[1], b"GET /two HTTP/1.1\r\nhost: svc\r\n\r\n");
}

#[tokio::test]
async fn chunked_response_with_trailers_and_interim_responses() {
    let (addr, _) = endpoint(vec![Send(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    )])
    .await;
    let (p, body, trailers, c) = exchange(conn(addr).await, get("/")).await;
    assert_eq!(p.status.as_u16(), 200);
    assert_eq!(&body[..], b"hello world");
    assert_eq!(trailers.expect("trailers")["x-sum"], "11");
    assert!(c.is_some(), "a whole chunked body leaves the connection reusable");
}

#[tokio::test]
async fn head_204_and_close_delimited_bodies() {
    let (addr, _) = endpoint(vec![
        Send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        Send(b"HTTP/1.1 204 No Content\r\n\r\n"),
        SendClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
    ])
    .await;
    let head = Request::builder().method(Method::HEAD).uri("/").body(crate::http::error::empty()).unwrap();
    let (p, body, _, c) = exchange(conn(addr).await, Box::new(head)).await;
    assert_eq!((p.status.as_u16(), body.len()), (200, 0), "HEAD has no body whatever Content-Length says");
    let (p, body, _, c) = exchange(c.unwrap(), get("/")).await;
    assert_eq!((p.status.as_u16(), body.len()), (204, 0));
    let c = c.unwrap();
    // No length: the body runs to EOF, and the connection is not reused.
    let (p, body, _, c) = exchange(c, get("/")).await;
    assert_eq!((p.status.as_u16(), &body[..]), (200, &b"until the end"[..]));
    assert!(c.is_none());
}

#[tokio::test]
async fn connection_close_and_http10_are_not_reused() {
    let (addr, _) =
        endpoint(vec![Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")]).await;
    let (_, body, _, c) = exchange(conn(addr).await, get("/")).await;
    assert_eq!(&body[..], b"ok");
    assert!(c.is_none());
    let (addr, _) = endpoint(vec![Send(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")]).await;
    let (p, _, _, c) = exchange(conn(addr).await, get("/")).await;
    assert_eq!(p.version, Version::HTTP_10);
    assert!(c.is_none());
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunks() {
    let (addr, seen) = endpoint(vec![
        Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let full = Request::post("/up")
        .body(Full::new(Bytes::from_static(b"abc")).map_err(|n| match n {}).boxed_unsync());
    let (_, _, _, c) = exchange(conn(addr).await, Box::new(full.unwrap())).await;
    let frames = futures_util::stream::iter(
        [&b"ab"[..], b"", b"cde"].map(|d| Ok::<_, BoxError>(Frame::data(Bytes::from_static(d)))),
    );
    let streamed = Request::post("/up").body(StreamBody::new(frames).boxed_unsync()).unwrap();
    let (_, _, _, c) = exchange(c.unwrap(), Box::new(streamed)).await;
    let empty_post = Request::post("/up").body(crate::http::error::empty()).unwrap();
    exchange(c.unwrap(), Box::new(empty_post)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], b"POST /up HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc");
    assert_eq!(
        seen[1],
        b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    );
    assert_eq!(seen[2], b"POST /up HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
}

#[tokio::test]
async fn broken_responses_are_upstream_failures() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ] {
        let (addr, _) = endpoint(vec![Send(bad)]).await;
        match conn(addr).await.send(get("/"), None, |_| {}).await {
            Err(Failure::Upstream(reason)) => assert!(!reason.is_empty()),
            other => panic!("{:?} for {:?}", other.map(|_| ()), String::from_utf8_lossy(bad)),
        }
    }
    // Closed before answering.
    let (addr, _) = endpoint(vec![Close]).await;
    match conn(addr).await.send(get("/"), None, |_| {}).await {
        Err(Failure::Upstream(reason)) => assert!(reason.contains("closed before the response"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A body cut short is an error of the body, and the connection is not reused.
    let (addr, _) = endpoint(vec![SendClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")]).await;
    let back: Arc<Mutex<Option<Conn>>> = Arc::default();
    let slot = Arc::clone(&back);
    let resp = conn(addr).await.send(get("/"), None, move |c| *slot.lock().unwrap() = Some(c)).await.unwrap();
    let Err(err) = resp.into_body().collect().await else { panic!("a body error expected") };
    assert!(err.to_string().contains("5 bytes before the end"), "{err}");
    assert!(back.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_connection_the_endpoint_closed_is_not_reusable() {
    let (addr, _) = endpoint(vec![Send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), Close]).await;
    let (_, _, _, c) = exchange(conn(addr).await, get("/")).await;
    let c = c.unwrap();
    // The endpoint closes after its next read; make it read by sending.
    let mut c = c;
    c.io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.reusable() {
        assert!(std::time::Instant::now() < deadline, "EOF never noticed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[test]
fn head_end_finds_crlf_and_bare_lf() {
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nbody"), Some(17));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n"), None);
    use crate::http::guard::chunk_size;
    assert_eq!(chunk_size(b"1a;name=v"), Some(26));
    assert!(chunk_size(b"").is_none());
    assert!(chunk_size(b"fffffffffffffffff").is_none(), "over 16 hex digits");
}
