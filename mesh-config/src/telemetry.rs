//! Validation of the `telemetry:` section (trace export and access logs).

use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::{
    ConfigError,
    model::{AccessLog, AccessLogFormat, OtlpProtocol, Telemetry, Tracing},
    raw::{RawAccessLog, RawTelemetry, RawTracing, loc},
};

pub(crate) fn validate(file: &Path, raw: &Spanned<RawTelemetry>) -> Result<Telemetry, ConfigError> {
    let t = &raw.value;
    Ok(Telemetry {
        tracing: t.tracing.as_ref().map(|x| tracing(file, &x.value)).transpose()?,
        access_log: t.access_log.as_ref().map(|x| access_log(file, &x.value)).transpose()?,
    })
}

fn tracing(file: &Path, t: &RawTracing) -> Result<Tracing, ConfigError> {
    let mut out = Tracing::default();
    if let Some(e) = &t.endpoint {
        let v = e.value.trim();
        let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/') || r.contains(char::is_whitespace)) {
            return Err(ConfigError::at(
                file,
                loc(e),
                "telemetry.tracing.endpoint",
                format!("'{v}' is not an OTLP endpoint URL"),
            )
            .hint("write the collector's URL, e.g. http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http/protobuf)"));
        }
        out.endpoint = Some(v.to_string());
    }
    if let Some(f) = &t.file {
        let v = f.value.trim();
        if !v.starts_with('/') {
            return Err(ConfigError::at(
                file,
                loc(f),
                "telemetry.tracing.file",
                format!("'{v}' is not an absolute path"),
            )
            .hint("write an absolute path such as /var/log/sluice/traces.jsonl"));
        }
        if let Some(e) = &t.endpoint {
            return Err(ConfigError::at(
                file,
                loc(e),
                "telemetry.tracing.endpoint",
                "both an OTLP endpoint and a trace file are set",
            )
            .hint("keep one: `endpoint` sends spans to a collector, `file` writes them to disk"));
        }
        out.file = Some(PathBuf::from(v));
    }
    if let Some(p) = &t.protocol {
        out.protocol = Some(OtlpProtocol::parse(p.value.trim()).ok_or_else(|| {
            ConfigError::at(
                file,
                loc(p),
                "telemetry.tracing.protocol",
                format!("unknown OTLP protocol '{}'", p.value.trim()),
            )
            .hint(format!("use one of: {}", OtlpProtocol::NAMES.join(", ")))
        })?);
    }
    if let Some(s) = &t.sampling {
        if !(0.0..=1.0).contains(&s.value) {
            return Err(ConfigError::at(
                file,
                loc(s),
                "telemetry.tracing.sampling",
                format!("sampling {} is not a ratio", s.value),
            )
            .hint("use a number from 0 (no new traces) to 1 (every request), e.g. 0.1 for 10%"));
        }
        out.sampling_ppm = Some((s.value * 1e6).round() as u32);
    }
    out.propagation = vec!["tracecontext".into(), "b3".into()];
    if let Some(list) = &t.propagation {
        out.propagation.clear();
        for (i, p) in list.iter().enumerate() {
            let v = p.value.trim().to_ascii_lowercase();
            if v != "tracecontext" && v != "b3" {
                return Err(ConfigError::at(
                    file,
                    loc(p),
                    format!("telemetry.tracing.propagation[{i}]"),
                    format!("unknown propagation format '{v}'"),
                )
                .hint("use tracecontext (W3C traceparent) and/or b3"));
            }
            if !out.propagation.contains(&v) {
                out.propagation.push(v);
            }
        }
    }
    if let Some(n) = &t.service_name {
        let v = n.value.trim();
        if v.is_empty() {
            return Err(ConfigError::at(
                file,
                loc(n),
                "telemetry.tracing.service_name",
                "the service name is empty",
            )
            .hint("name the node in traces, e.g. sluice, or remove the field"));
        }
        out.service_name = Some(v.to_string());
    }
    if let Some(h) = &t.headers {
        for (k, v) in &h.value {
            let bad_name =
                k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if bad_name || v.bytes().any(|b| b < 0x20 && b != b'\t') {
                return Err(ConfigError::at(
                    file,
                    loc(h),
                    "telemetry.tracing.headers",
                    format!("'{k}' is not a valid header (name: letters, digits, '-', '_', '.'; value: no control characters)"),
                )
                .hint("e.g. headers: {authorization: \"Bearer ...\"}"));
            }
        }
        out.headers = h.value.clone();
    }
    Ok(out)
}

fn access_log(file: &Path, a: &RawAccessLog) -> Result<AccessLog, ConfigError> {
    let format = match &a.format {
        None => AccessLogFormat::Json,
        Some(f) => match f.value.trim() {
            "json" => AccessLogFormat::Json,
            "text" => AccessLogFormat::Text,
            other => {
                return Err(ConfigError::at(
                    file,
                    loc(f),
                    "telemetry.access_log.format",
                    format!("unknown access log format '{other}'"),
                )
                .hint("use json or text"));
            }
        },
    };
    let path = match &a.path {
        None => None,
        Some(p) => match p.value.trim() {
            "" | "-" | "stdout" | "/dev/stdout" => None,
            v if !v.starts_with('/') => {
                return Err(ConfigError::at(
                    file,
                    loc(p),
                    "telemetry.access_log.path",
                    format!("'{v}' is not an absolute path"),
                )
                .hint("write an absolute path such as /var/log/sluice/access.log, or stdout"));
            }
            v => Some(PathBuf::from(v)),
        },
    };
    Ok(AccessLog { format, path })
}
