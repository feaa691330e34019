//! HTTP/1.1 as bytes on the wire, written the same way at both ends the
//! proxy speaks it: the fast-path server (responses to clients) and the
//! upstream client (requests to endpoints).

use std::io::{self, Write as _};

use http::HeaderMap;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Body bytes gathered into one write with the head (or between flushes);
/// a frame that would pass it is sent from its own buffer, not copied.
pub(crate) const COALESCE: usize = 16 * 1024;

/// `name: value` lines, for a message head or a chunked body's trailers.
pub(crate) fn put_fields(w: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
}

pub(crate) fn put_content_length(w: &mut Vec<u8>, n: u64) {
    // Writing into a Vec cannot fail.
    let _ = write!(w, "content-length: {n}\r\n");
}

/// Appends one body frame to `w` (chunk-framed if `chunked`); when that
/// would pass [`COALESCE`], sends `w` and then the frame itself.
pub(crate) async fn put_data(
    io: &mut TcpStream,
    w: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
) -> io::Result<()> {
    if chunked {
        let _ = write!(w, "{:x}\r\n", data.len());
    }
    if w.len() + data.len() > COALESCE {
        io.write_all(w).await?;
        w.clear();
        io.write_all(data).await?;
    } else {
        w.extend_from_slice(data);
    }
    if chunked {
        w.extend_from_slice(b"\r\n");
    }
    Ok(())
}

thread_local! {
    /// The `date` value of the current second (formatted once per second).
    static DATE: std::cell::RefCell<(u64, http::HeaderValue)> =
        const { std::cell::RefCell::new((u64::MAX, http::HeaderValue::from_static(""))) };
}

/// Calls `f` with the `date` field's value for now.
pub(crate) fn with_date<R>(f: impl FnOnce(&http::HeaderValue) -> R) -> R {
    let secs = crate::clock::coarse_unix_secs();
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs {
            let text = httpdate::fmt_http_date(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            );
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                *at = secs;
                *value = v;
            }
        }
        f(value)
    })
}
