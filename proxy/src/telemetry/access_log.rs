//! Access logs: one line per request or TCP connection, JSON or text, with
//! the trace id. Lines go through a bounded queue to a writer thread, so a
//! slow disk never blocks a worker; when the queue is full a line is dropped
//! and counted (`sluice_access_log_dropped_total`), never waited for.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    io::{self, Write},
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    time::{Duration, SystemTime},
};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

enum Msg {
    Line(String),
    Flush(SyncSender<()>),
    /// Open the file again (after logrotate moved it); the answer says how it went.
    Reopen(SyncSender<io::Result<()>>),
}

/// Lines a worker may queue before new ones are dropped.
const QUEUE: usize = 16 * 1024;

#[derive(Debug)]
pub struct AccessLog {
    format: LogFormat,
    target: LogTarget,
    tx: Mutex<Option<SyncSender<Msg>>>,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
}

/// One HTTP request.
#[derive(Debug, Serialize)]
pub struct RequestEntry<'a> {
    pub start_time: String,
    pub kind: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub protocol: &'static str,
    pub response_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    pub response_flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: f64,
    pub service: &'a str,
    pub route: &'a str,
    pub upstream_host: Option<String>,
    pub downstream_peer: String,
    pub user_agent: &'a str,
    pub request_id: &'a str,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// One opaque TCP connection.
#[derive(Debug, Serialize)]
pub struct TcpEntry<'a> {
    pub start_time: String,
    pub kind: &'static str,
    pub service: &'a str,
    pub path: &'static str,
    pub response_flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: f64,
    pub upstream_host: Option<String>,
    pub downstream_peer: String,
    pub trace_id: Option<String>,
}

pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl AccessLog {
    /// Opens the target (a file is created or appended to) and starts the
    /// writer thread.
    pub fn open(target: LogTarget, format: LogFormat) -> io::Result<Self> {
        let out = open_target(&target)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let t = target.clone();
        std::thread::Builder::new().name("sluice-access-log".into()).spawn(move || writer(out, &t, rx))?;
        Ok(Self {
            format,
            target,
            tx: Mutex::new(Some(tx)),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    pub fn request(&self, e: &RequestEntry<'_>) {
        let line = match self.format {
            LogFormat::Json => serde_json::to_string(e).unwrap_or_default(),
            LogFormat::Text => {
                let mut s = String::with_capacity(200);
                let _ = write!(
                    s,
                    "[{}] \"{} {} {}\" {} {} {} {} {:.3} \"{}\" \"{}\" \"{}\" {} {} \"{}\" \"{}\" trace_id={} span_id={}",
                    e.start_time,
                    e.method,
                    e.path,
                    e.protocol,
                    e.response_code,
                    e.response_flags,
                    e.bytes_received,
                    e.bytes_sent,
                    e.duration_ms,
                    e.authority,
                    e.service,
                    e.route,
                    e.upstream_host.as_deref().unwrap_or("-"),
                    e.downstream_peer,
                    e.user_agent,
                    e.request_id,
                    e.trace_id.as_deref().unwrap_or("-"),
                    e.span_id.as_deref().unwrap_or("-"),
                );
                s
            }
        };
        self.send(line);
    }

    pub fn tcp(&self, e: &TcpEntry<'_>) {
        let line = match self.format {
            LogFormat::Json => serde_json::to_string(e).unwrap_or_default(),
            LogFormat::Text => format!(
                "[{}] TCP {} {} {} {} {:.3} {} {} path={} trace_id={}",
                e.start_time,
                e.service,
                e.response_flags,
                e.bytes_received,
                e.bytes_sent,
                e.duration_ms,
                e.upstream_host.as_deref().unwrap_or("-"),
                e.downstream_peer,
                e.path,
                e.trace_id.as_deref().unwrap_or("-"),
            ),
        };
        self.send(line);
    }

    fn send(&self, line: String) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {
                self.written.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes what is queued, then opens the file again: after logrotate (or
    /// anyone) moved it, new lines go to a new file at the configured path.
    pub fn reopen(&self, within: Duration) -> io::Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return Ok(()) };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        tx.send(Msg::Reopen(ack_tx)).map_err(|_| io::Error::other("the access log writer has stopped"))?;
        ack_rx.recv_timeout(within).map_err(|_| io::Error::other("the access log writer did not answer"))?
    }

    /// Waits (at most `within`) until every line queued so far is written.
    pub fn flush(&self, within: Duration) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(within);
        }
    }
}

fn open_target(target: &LogTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        LogTarget::Stdout => Box::new(io::stdout()),
        LogTarget::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    })
}

fn writer(out: Box<dyn Write + Send>, target: &LogTarget, rx: Receiver<Msg>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    let mut handle = |out: &mut io::BufWriter<Box<dyn Write + Send>>, m: Msg| match m {
        Msg::Line(l) => {
            let r = out.write_all(l.as_bytes()).and_then(|()| out.write_all(b"\n"));
            if let Err(e) = r
                && !failed
            {
                failed = true;
                tracing::error!(error = %e, "cannot write the access log; lines are lost until it works again");
            }
        }
        Msg::Flush(ack) => {
            let _ = out.flush();
            let _ = ack.send(());
        }
        Msg::Reopen(ack) => {
            let _ = out.flush();
            let r = open_target(target).map(|f| {
                *out = io::BufWriter::with_capacity(64 * 1024, f);
                failed = false;
            });
            let _ = ack.send(r);
        }
    };
    // One write per batch, not per line: after a batch the thread rests a
    // moment so lines gather (a sender then never has to wake it), and
    // nothing waits in the buffer longer than that.
    while let Ok(m) = rx.recv() {
        handle(&mut out, m);
        while let Ok(m) = rx.try_recv() {
            handle(&mut out, m);
        }
        let _ = out.flush();
        std::thread::sleep(BATCH_PAUSE);
    }
    let _ = out.flush();
}

/// How long lines gather between writes.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let entry = RequestEntry {
            start_time: timestamp(SystemTime::UNIX_EPOCH),
            kind: "http",
            method: "GET",
            path: "/a\"b",
            authority: "reviews",
            protocol: "HTTP/1.1",
            response_code: 200,
            grpc_status: None,
            response_flags: "-",
            bytes_received: 0,
            bytes_sent: 12,
            duration_ms: 1.5,
            service: "reviews",
            route: "default",
            upstream_host: Some("127.0.0.1:80".into()),
            downstream_peer: "127.0.0.1:5000".into(),
            user_agent: "curl",
            request_id: "",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: None,
        };
        let json = AccessLog::open(LogTarget::File(path.clone()), LogFormat::Json).unwrap();
        json.request(&entry);
        json.flush(Duration::from_secs(5));
        let text = AccessLog::open(LogTarget::File(path.clone()), LogFormat::Text).unwrap();
        text.request(&entry);
        text.flush(Duration::from_secs(5));
        let content = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = content.lines().collect();
        assert_eq!(lines.len(), 2, "{content}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["start_time"], "1970-01-01T00:00:00.000Z");
        assert!(
            lines[1].starts_with("[1970-01-01T00:00:00.000Z] \"GET /a\"b HTTP/1.1\" 200 - 0 12 1.500"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=-"));
        assert_eq!(json.written.load(Relaxed), 1);
        // logrotate: the file is moved away, the log reopened, new lines go to a new file.
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        json.request(&entry);
        json.reopen(Duration::from_secs(5)).unwrap();
        json.request(&entry);
        json.flush(Duration::from_secs(5));
        assert_eq!(
            std::fs::read_to_string(&moved).unwrap().lines().count(),
            3,
            "old lines and the one queued before"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
