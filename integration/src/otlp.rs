//! A real OTLP receiver for the tests: rotel (from PyPI), listening for
//! gRPC and HTTP/protobuf on loopback, printing every span it receives to its
//! debug log, which [`Rotel::spans`] parses.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::process::ChildGuard;

/// Where scripts/install-deps.sh puts rotel (`pip install --target`).
pub const DEFAULT_ROTEL: &str = "/opt/sluice-tools/rotel/rotel/rotel-agent";

/// The rotel binary: `SLUICE_ROTEL`, else the install script's place.
pub fn rotel_bin() -> PathBuf {
    std::env::var("SLUICE_ROTEL").map(PathBuf::from).unwrap_or_else(|_| DEFAULT_ROTEL.into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running rotel; killed on drop.
#[derive(Debug)]
pub struct Rotel {
    _child: ChildGuard,
    pub grpc: String,
    pub http: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A span as rotel printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub name: String,
    pub kind: String,
    pub service: String,
    /// `key: value` attribute lines, as printed.
    pub attributes: Vec<(String, String)>,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Rotel {
    /// Starts rotel printing every span; panics (with the reason) when it is
    /// not installed or does not come up.
    pub fn start() -> Self {
        Self::spawn(true)
    }

    /// Starts rotel receiving and discarding (for benchmarks).
    pub fn start_quiet() -> Self {
        Self::spawn(false)
    }

    fn spawn(print: bool) -> Self {
        let bin = rotel_bin();
        assert!(
            bin.is_file(),
            "rotel is not installed at {} (scripts/install-deps.sh installs it; or set SLUICE_ROTEL)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("rotel.log");
        let (g, h) = (free_port(), free_port());
        let (grpc, http) = (format!("127.0.0.1:{g}"), format!("127.0.0.1:{h}"));
        let child = Command::new(&bin)
            .args(["start", "--otlp-grpc-endpoint", &grpc, "--otlp-http-endpoint", &http])
            .args(["--exporter", "blackhole"])
            .args(if print {
                &["--debug-log", "traces", "--debug-log-verbosity", "detailed"][..]
            } else {
                &[]
            })
            .arg("--log-file")
            .arg(dir.path().join("agent.log"))
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let child = ChildGuard(child);
        for addr in [&grpc, &http] {
            crate::wait_for(&format!("rotel listening on {addr}"), Duration::from_secs(15), || {
                std::net::TcpStream::connect(addr.as_str()).ok()
            });
        }
        Self { _child: child, grpc, http, log, _dir: dir }
    }

    /// Everything rotel has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        parse_spans(&self.output())
    }

    /// Waits until `f` holds for the spans received.
    pub fn wait_spans(&self, what: &str, f: impl Fn(&[SpanRecord]) -> bool) -> Vec<SpanRecord> {
        crate::wait_for(what, Duration::from_secs(20), || {
            let s = self.spans();
            f(&s).then_some(s)
        })
    }
}

/// Parses the OpenTelemetry-collector-style "detailed" debug output:
/// `Span #n` blocks with `Trace ID`, `Parent ID`, `ID`, `Name`, `Kind` and
/// `Attributes:` lines (`-> key: Type(value)`).
pub fn parse_spans(out: &str) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut cur: Option<SpanRecord> = None;
    let mut in_attrs = false;
    for raw in out.lines() {
        let line = raw.trim();
        let field =
            |name: &str| line.strip_prefix(name).map(|r| r.trim_start_matches([' ', ':']).trim().to_string());
        if let Some(v) = line.strip_prefix("-> service.name:") {
            service = unwrap_value(v.trim());
            continue;
        }
        if line.starts_with("Span #") {
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            cur = Some(SpanRecord { service: service.clone(), ..Default::default() });
            in_attrs = false;
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        if let Some(v) = field("Trace ID") {
            s.trace_id = v;
        } else if let Some(v) = field("Parent ID") {
            s.parent_id = v;
        } else if let Some(v) = field("ID") {
            s.span_id = v;
        } else if let Some(v) = field("Name") {
            s.name = v;
        } else if let Some(v) = field("Kind") {
            s.kind = v;
        } else if line.starts_with("Attributes:") {
            in_attrs = true;
        } else if in_attrs && let Some(rest) = line.strip_prefix("-> ") {
            if let Some((k, v)) = rest.split_once(": ") {
                s.attributes.push((k.to_string(), unwrap_value(v)));
            }
        } else if line.starts_with("Events:")
            || line.starts_with("Links:")
            || line.starts_with("ScopeSpans")
            || line.starts_with("ResourceSpans")
        {
            in_attrs = false;
        }
    }
    if let Some(s) = cur {
        spans.push(s);
    }
    spans
}

/// `Str(GET)` → `GET`, `Int(200)` → `200`.
fn unwrap_value(v: &str) -> String {
    match v.split_once('(') {
        Some((_, rest)) if rest.ends_with(')') => rest[..rest.len() - 1].to_string(),
        _ => v.to_string(),
    }
}
