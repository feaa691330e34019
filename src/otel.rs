//! Trace export: the OTLP exporter (gRPC or HTTP/protobuf) and the batch
//! processor behind the proxy's tracer, configured by mesh-config's
//! `telemetry.tracing` and, for whatever it leaves out, the standard OTEL_*
//! environment variables. The proxy makes the sampling decision itself
//! (so unsampled requests create no span objects); the SDK records all it is
//! given.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use sluice_mesh_config::{OtlpProtocol, Telemetry};
use sluice_proxy::telemetry::trace::{SpanCounters, TraceSettings, Tracing};

use crate::{Failure, exit};

/// A running trace export.
pub(crate) struct TraceExport {
    pub provider: SdkTracerProvider,
    pub tracing: Arc<Tracing>,
    /// What it sends where, for the log and /config_dump.
    pub endpoint: String,
    /// `grpc`, `http/protobuf` or `file` (OTLP/JSON lines).
    pub protocol: &'static str,
}

impl std::fmt::Debug for TraceExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceExport")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .finish()
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Whether traces are wanted: configured in the mesh config, or an OTLP
/// endpoint in the environment; never with OTEL_SDK_DISABLED=true or
/// OTEL_TRACES_EXPORTER=none.
fn wanted(t: &Telemetry) -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    t.tracing.is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// Sampling from the config, else OTEL_TRACES_SAMPLER(_ARG), else every
/// new trace with the parent's decision respected.
fn settings(t: &Telemetry) -> Result<TraceSettings, Failure> {
    let mut s = TraceSettings::default();
    let cfg = t.tracing.as_ref();
    match cfg.and_then(|c| c.sampling()) {
        Some(r) => s.ratio = r,
        None => {
            if let Some(sampler) = env("OTEL_TRACES_SAMPLER") {
                let arg = || -> Result<f64, Failure> {
                    let a = env("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1".into());
                    a.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                        Failure::new(
                            exit::BAD_INPUT,
                            format!("OTEL_TRACES_SAMPLER_ARG='{a}' is not a ratio: use a number from 0 to 1"),
                        )
                    })
                };
                (s.ratio, s.parent_based) = match sampler.as_str() {
                    "always_on" => (1.0, false),
                    "always_off" => (0.0, false),
                    "traceidratio" => (arg()?, false),
                    "parentbased_always_on" => (1.0, true),
                    "parentbased_always_off" => (0.0, true),
                    "parentbased_traceidratio" => (arg()?, true),
                    other => {
                        return Err(Failure::new(
                            exit::BAD_INPUT,
                            format!(
                                "OTEL_TRACES_SAMPLER='{other}' is not supported: use always_on, always_off, traceidratio or their parentbased_ forms"
                            ),
                        ));
                    }
                };
            }
        }
    }
    let propagation: Vec<String> = match cfg {
        Some(c) => c.propagation.clone(),
        None => env("OTEL_PROPAGATORS")
            .map(|p| p.split(',').map(|x| x.trim().to_ascii_lowercase()).collect())
            .unwrap_or_else(|| vec!["tracecontext".into(), "b3".into()]),
    };
    s.tracecontext = propagation.iter().any(|p| p == "tracecontext");
    s.b3 = propagation.iter().any(|p| p == "b3" || p == "b3multi");
    Ok(s)
}

fn protocol(t: &Telemetry, endpoint: Option<&str>) -> Result<OtlpProtocol, Failure> {
    if let Some(p) = t.tracing.as_ref().and_then(|c| c.protocol) {
        return Ok(p);
    }
    match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")) {
        Some(p) => OtlpProtocol::parse(&p).ok_or_else(|| {
            Failure::new(
                exit::BAD_INPUT,
                format!("OTEL_EXPORTER_OTLP_PROTOCOL='{p}' is not supported: use grpc or http/protobuf"),
            )
        }),
        // The specification's default is http/protobuf; an endpoint on the
        // well-known gRPC port says otherwise.
        None if endpoint.is_some_and(|e| e.trim_end_matches('/').ends_with(":4317")) => {
            Ok(OtlpProtocol::Grpc)
        }
        None => Ok(OtlpProtocol::HttpProtobuf),
    }
}

/// Builds the export when traces are wanted. Must run inside the node's
/// tokio runtime (the gRPC client lives there).
/// `host` names the machine (`host.name`), `node` the mesh node (`sluice.node`).
pub(crate) fn start(t: &Telemetry, host: &str, node: Option<&str>) -> Result<Option<TraceExport>, Failure> {
    if !wanted(t) {
        return Ok(None);
    }
    let cfg = t.tracing.clone().unwrap_or_default();
    let settings = settings(t)?;
    if let Some(path) = &cfg.file {
        let exporter = FileExporter::create(path)?;
        return Ok(Some(provider(
            Exporter::File(exporter),
            &cfg,
            settings,
            (host, node),
            path.display().to_string(),
            "file",
        )));
    }
    let env_endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let protocol = protocol(t, cfg.endpoint.as_deref().or(env_endpoint.as_deref()))?;
    let bad = |e: opentelemetry_otlp::ExporterBuildError| {
        Failure::new(exit::BAD_INPUT, format!("cannot set up the OTLP trace exporter: {e}"))
    };
    let (exporter, endpoint) = match protocol {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if !cfg.headers.is_empty() {
                let mut h = http::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    if let (Ok(k), Ok(v)) =
                        (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
                    {
                        h.insert(k, v);
                    }
                }
                b = b.with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(h));
            }
            let shown =
                cfg.endpoint.clone().or(env_endpoint).unwrap_or_else(|| "http://localhost:4317".into());
            (b.build().map_err(bad)?, shown)
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_http();
            let mut shown = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| {
                    env("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
                })
                .unwrap_or_else(|| "http://localhost:4318/v1/traces".into());
            if let Some(e) = &cfg.endpoint {
                // As OTEL_EXPORTER_OTLP_ENDPOINT: a base URL gets the signal's path.
                let after_scheme = e.split_once("://").map_or(e.as_str(), |x| x.1);
                let url = if after_scheme.trim_end_matches('/').contains('/') {
                    e.clone()
                } else {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                };
                shown = url.clone();
                b = b.with_endpoint(url);
            }
            if !cfg.headers.is_empty() {
                b = b.with_headers(
                    cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>(),
                );
            }
            (b.build().map_err(bad)?, shown)
        }
    };
    Ok(Some(provider(
        Exporter::Otlp(Box::new(exporter)),
        &cfg,
        settings,
        (host, node),
        endpoint,
        protocol.name(),
    )))
}

fn provider(
    exporter: Exporter,
    cfg: &sluice_mesh_config::Tracing,
    settings: TraceSettings,
    (host, node): (&str, Option<&str>),
    endpoint: String,
    protocol: &'static str,
) -> TraceExport {
    let mut batch = BatchConfigBuilder::default();
    // Defaults sized for a proxy (the SDK's 2048/512 drop spans at a few
    // thousand requests per second); the OTEL_BSP_* variables still win.
    if env("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batch = batch.with_max_queue_size(65_536);
    }
    if env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batch = batch.with_max_export_batch_size(4_096);
    }
    if env("OTEL_BSP_SCHEDULE_DELAY").is_none() {
        batch = batch.with_scheduled_delay(Duration::from_millis(1_000));
    }
    let counters = Arc::new(SpanCounters::default());
    let exporter = Counting { inner: exporter, counters: Arc::clone(&counters) };
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch.build()).build();
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("host.name", host.to_string()));
    if let Some(n) = node {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("sluice.node", n.to_string()));
    }
    resource = match &cfg.service_name {
        Some(n) => resource.with_service_name(n.clone()),
        None if env("OTEL_SERVICE_NAME").is_none() => resource.with_service_name("sluice"),
        None => resource,
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("sluice");
    TraceExport { tracing: Arc::new(Tracing::new(tracer, settings, counters)), provider, endpoint, protocol }
}

/// Where spans go: a collector over OTLP, or a file.
#[derive(Debug)]
enum Exporter {
    Otlp(Box<opentelemetry_otlp::SpanExporter>),
    File(FileExporter),
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Exporter::Otlp(e) => e.export(batch).await,
            Exporter::File(e) => e.write(&batch),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Exporter::Otlp(e) => e.shutdown_with_timeout(timeout),
            // Every batch is written when it is exported.
            Exporter::File(_) => Ok(()),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        match self {
            Exporter::Otlp(e) => e.force_flush(),
            Exporter::File(_) => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Exporter::Otlp(e) => e.set_resource(resource),
            Exporter::File(e) => e.resource = otlp_attributes(resource.iter()),
        }
    }
}

/// Writes each batch as one line of OTLP/JSON (an ExportTraceServiceRequest,
/// as the OpenTelemetry Collector's file exporter writes them), appending.
/// A line goes out in one write on an O_APPEND file, so nodes that share the
/// file never interleave their lines.
#[derive(Debug)]
struct FileExporter {
    out: std::fs::File,
    resource: Vec<serde_json::Value>,
}

impl FileExporter {
    fn create(path: &std::path::Path) -> Result<Self, Failure> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!(
                    "cannot open the trace file {}: {e} (fix: telemetry.tracing.file must be a writable path)",
                    path.display()
                ),
            )
        })?;
        Ok(Self { out, resource: Vec::new() })
    }

    fn write(&self, batch: &[SpanData]) -> OTelSdkResult {
        use std::io::Write as _;
        if batch.is_empty() {
            return Ok(());
        }
        let doc = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": self.resource},
            "scopeSpans": [{"scope": {"name": "sluice"}, "spans": batch.iter().map(otlp_span).collect::<Vec<_>>()}],
        }]});
        let mut line = serde_json::to_vec(&doc).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
        line.push(b'\n');
        (&self.out)
            .write_all(&line)
            .map_err(|e| OTelSdkError::InternalFailure(format!("writing the trace file: {e}")))
    }
}

fn unix_nanos(t: std::time::SystemTime) -> String {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

fn otlp_value(v: &opentelemetry::Value) -> serde_json::Value {
    use opentelemetry::Value as V;
    match v {
        V::Bool(b) => serde_json::json!({"boolValue": b}),
        // OTLP/JSON carries 64-bit integers as strings.
        V::I64(i) => serde_json::json!({"intValue": i.to_string()}),
        V::F64(f) => serde_json::json!({"doubleValue": f}),
        other => serde_json::json!({"stringValue": other.to_string()}),
    }
}

fn otlp_attributes<'a>(
    kv: impl Iterator<Item = (&'a opentelemetry::Key, &'a opentelemetry::Value)>,
) -> Vec<serde_json::Value> {
    kv.map(|(k, v)| serde_json::json!({"key": k.as_str(), "value": otlp_value(v)})).collect()
}

fn otlp_span(s: &SpanData) -> serde_json::Value {
    use opentelemetry::trace::{SpanId, SpanKind, Status};
    let kind = match s.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    let status = match &s.status {
        Status::Unset => serde_json::json!({}),
        Status::Ok => serde_json::json!({"code": 1}),
        Status::Error { description } => serde_json::json!({"code": 2, "message": description}),
    };
    let mut span = serde_json::json!({
        "traceId": s.span_context.trace_id().to_string(),
        "spanId": s.span_context.span_id().to_string(),
        "name": s.name,
        "kind": kind,
        "startTimeUnixNano": unix_nanos(s.start_time),
        "endTimeUnixNano": unix_nanos(s.end_time),
        "attributes": otlp_attributes(s.attributes.iter().map(|kv| (&kv.key, &kv.value))),
        "status": status,
    });
    if s.parent_span_id != SpanId::INVALID {
        span["parentSpanId"] = s.parent_span_id.to_string().into();
    }
    span
}

/// Counts what reaches the exporter and what it could not send.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    counters: Arc<SpanCounters>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.counters.exported.fetch_add(n, Relaxed),
            Err(_) => self.counters.export_failed.fetch_add(n, Relaxed),
        };
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl TraceExport {
    /// Sends what is still queued and stops. The exporter's gRPC client runs
    /// on the caller's runtime, so this waits off it.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let r =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5))).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
    }
}
