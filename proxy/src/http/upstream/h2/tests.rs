//! The HTTP/2 client against endpoints served by the h2 crate's server, each
//! test's endpoint scripted by what it does with a stream.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::endpoint::{Counter, EndpointState};

/// What the endpoint does with each stream.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Answers 200 with the request body and its trailers, and
    /// `x-request-length`.
    Echo,
    /// Answers the first stream, then sends GOAWAY (a graceful shutdown).
    AnswerThenGoAway,
    /// Resets every stream with REFUSED_STREAM.
    Refuse,
    /// Reads the body until it fails; records the reset it saw.
    Drain,
}

/// Serves one connection; what the endpoint saw goes into the log.
async fn endpoint(script: Script) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        // The protocol's default 64 KiB windows: large bodies need WINDOW_UPDATEs.
        let mut conn = h2::server::handshake(s).await.unwrap();
        while let Some(r) = conn.accept().await {
            let Ok((req, mut respond)) = r else { break };
            let (parts, mut body) = req.into_parts();
            seen.lock().unwrap().push(format!("{} {} {:?}", parts.method, parts.uri, parts.headers));
            match script {
                Script::Echo => {
                    let log = Arc::clone(&seen);
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk.unwrap();
                            body.flow_control().release_capacity(chunk.len()).unwrap();
                            data.extend_from_slice(&chunk);
                        }
                        let trailers = body.trailers().await.unwrap();
                        log.lock().unwrap().push(format!("trailers {trailers:?}"));
                        let resp =
                            Response::builder().header("x-request-length", data.len()).body(()).unwrap();
                        let mut tx = respond.send_response(resp, false).unwrap();
                        tx.send_data(Bytes::from(data), trailers.is_none()).unwrap();
                        if let Some(t) = trailers {
                            tx.send_trailers(t).unwrap();
                        }
                    });
                }
                Script::AnswerThenGoAway => {
                    let resp = Response::builder().header("content-length", "2").body(()).unwrap();
                    respond
                        .send_response(resp, false)
                        .unwrap()
                        .send_data(Bytes::from_static(b"ok"), true)
                        .unwrap();
                    conn.graceful_shutdown();
                }
                Script::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                Script::Drain => {
                    let log = Arc::clone(&seen);
                    tokio::spawn(async move {
                        let _keep = respond;
                        loop {
                            match body.data().await {
                                Some(Ok(c)) => {
                                    let _ = body.flow_control().release_capacity(c.len());
                                }
                                Some(Err(e)) => {
                                    log.lock().unwrap().push(format!("reset {:?}", e.reason()));
                                    break;
                                }
                                None => {
                                    log.lock().unwrap().push("end".into());
                                    break;
                                }
                            }
                        }
                    });
                }
            }
        }
    });
    (addr, log)
}

async fn conn(addr: SocketAddr) -> (Conn, Arc<EndpointState>) {
    let ep = Arc::new(EndpointState::new(addr, None));
    let held = Held::try_take(&ep, Counter::Connection, 10).unwrap();
    (Conn::handshake(TcpStream::connect(addr).await.unwrap(), held).await.unwrap(), ep)
}

fn in_flight(ep: &Arc<EndpointState>) -> Option<Held> {
    Some(Held::try_take(ep, Counter::InFlight, 1000).unwrap())
}

fn request(method: &str, body: Body) -> crate::http::BoxRequest {
    Box::new(Request::builder().method(method).uri("http://svc:80/p?q=1").body(body).unwrap())
}

/// A body of `n` bytes in 16 KiB chunks, each after a yield (so it is not
/// complete when the stream opens), ending with trailers.
fn slow_body(n: usize) -> Body {
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..n)
        .step_by(16384)
        .map(|i| {
            Ok(Frame::data(Bytes::from((i..(i + 16384).min(n)).map(|b| (b % 251) as u8).collect::<Vec<_>>())))
        })
        .chain(std::iter::once(Ok(Frame::trailers({
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "42".parse().unwrap());
            t
        }))))
        .collect();
    let s = stream::iter(chunks).then(|c| async move {
        tokio::task::yield_now().await;
        c
    });
    StreamBody::new(s).boxed_unsync()
}

use futures_util::StreamExt;

#[tokio::test]
async fn bodies_and_trailers_cross_in_both_directions_within_flow_control() {
    let (addr, log) = endpoint(Script::Echo).await;
    let (c, ep) = conn(addr).await;
    // Larger than the endpoint's 64 KiB windows: sent as WINDOW_UPDATEs allow.
    let n = 3 * 1024 * 1024 + 7;
    let resp = c.clone().send(request("POST", slow_body(n)), in_flight(&ep)).await.unwrap();
    assert_eq!(resp.headers()["x-request-length"], n.to_string().as_str());
    assert_eq!(ep.in_flight.load(Relaxed), 1, "in flight until the body ends");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    let bytes = collected.to_bytes();
    assert_eq!(bytes.len(), n);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "bytes intact");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(ep.in_flight.load(Relaxed), 0);
    assert!(log.lock().unwrap().iter().any(|l| l.contains("x-checksum")), "{:?}", log.lock().unwrap());

    // A whole body is sent with the headers' content-length; GET has none.
    let resp = c
        .clone()
        .send(
            request("PUT", Full::new(Bytes::from_static(b"abc")).map_err(|e| match e {}).boxed_unsync()),
            in_flight(&ep),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-length"], "3");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"abc");
    let resp = c.clone().send(request("GET", crate::http::error::empty()), in_flight(&ep)).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 0);
    let log = log.lock().unwrap();
    let put = log.iter().find(|l| l.starts_with("PUT")).unwrap();
    assert!(put.contains("\"content-length\": \"3\""), "{put}");
    let get = log.iter().find(|l| l.starts_with("GET")).unwrap();
    assert!(get.starts_with("GET http://svc:80/p?q=1") && !get.contains("content-length"), "{get}");
}

#[tokio::test]
async fn a_connection_closing_with_goaway_gives_the_request_back() {
    let (addr, _) = endpoint(Script::AnswerThenGoAway).await;
    let (c, ep) = conn(addr).await;
    let resp = c.clone().send(request("GET", crate::http::error::empty()), in_flight(&ep)).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "2");
    assert_eq!(resp.body().size_hint().exact(), Some(2));
    assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
    // The GOAWAY arrives; the next request is refused before it is sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let unsent = loop {
        match c.clone().send(request("GET", crate::http::error::empty()), in_flight(&ep)).await {
            Err(Failure::Unsent(u)) => break u,
            Ok(_) | Err(Failure::Upstream(_)) => {}
            Err(f) => panic!("{f:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "GOAWAY never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(unsent.req.uri(), "http://svc:80/p?q=1", "the request comes back whole");
    assert!(c.is_closed());
    assert_eq!(ep.in_flight.load(Relaxed), 1, "the count comes back with it");
    drop(unsent);
    assert_eq!(ep.in_flight.load(Relaxed), 0);
}

#[tokio::test]
async fn an_endpoint_reset_is_an_upstream_failure() {
    let (addr, _) = endpoint(Script::Refuse).await;
    let (c, ep) = conn(addr).await;
    match c.clone().send(request("GET", crate::http::error::empty()), in_flight(&ep)).await {
        Err(Failure::Upstream(reason)) => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(ep.in_flight.load(Relaxed), 0);
    assert!(!c.is_closed(), "a stream's reset leaves the connection usable");
}

#[tokio::test]
async fn a_failing_request_body_resets_the_stream_and_blames_the_client() {
    let (addr, log) = endpoint(Script::Drain).await;
    let (c, ep) = conn(addr).await;
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        vec![Ok(Frame::data(Bytes::from_static(b"part"))), Err("client went away".into())];
    let s = stream::iter(frames).then(|f| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        f
    });
    match c.clone().send(request("POST", StreamBody::new(s).boxed_unsync()), in_flight(&ep)).await {
        Err(Failure::Downstream(reason)) => assert!(reason.contains("client went away"), "{reason}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !log.lock().unwrap().iter().any(|l| l.starts_with("reset")) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(log.lock().unwrap().iter().any(|l| l == "reset Some(CANCEL)"), "{:?}", log.lock().unwrap());
}

#[tokio::test]
async fn streams_beyond_the_endpoints_limit_wait_instead_of_being_refused() {
    // An endpoint allowing 100 concurrent streams, each answered after a
    // while; 150 requests at once on a fresh connection, before the
    // endpoint's SETTINGS arrive.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        // SETTINGS come late: the client opens streams before it knows the limit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn =
            h2::server::Builder::new().max_concurrent_streams(100).handshake::<_, Bytes>(s).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = respond.send_response(Response::new(()), true);
            });
        }
    });
    let (c, ep) = conn(addr).await;
    let sends = (0..150).map(|_| {
        let (c, held) = (c.clone(), in_flight(&ep));
        tokio::spawn(async move {
            c.send(request("GET", crate::http::error::empty()), held).await.map(|r| r.status())
        })
    });
    for r in futures_util::future::join_all(sends).await {
        match r.unwrap() {
            Ok(status) => assert_eq!(status, 200),
            Err(f) => panic!("{f:?}"),
        }
    }
}
