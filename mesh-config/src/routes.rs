//! Validation of `routes:` (HTTP routing, splits, header changes, timeouts,
//! retries).

use std::path::Path;

use serde_saphyr::Spanned;

use crate::{
    ConfigError,
    model::{
        Destination, HeaderMatch, HeaderOps, HostMatch, PathMatch, RetryOn, RetryPolicy, Route, RouteMatch,
        Service, ValueMatch,
    },
    raw::{RawDestination, RawHeaderOps, RawMatch, RawRetries, RawRoute, loc},
    validate::{duration, http_header_name},
};

/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: u32 = 10;

pub(crate) fn validate(
    file: &Path,
    raw: &[Spanned<RawRoute>],
    services: &[Service],
) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let route = RouteValidator { file, field: format!("routes[{i}]"), services }.route(i, &r.value)?;
        if let Some(other) = routes.iter().find(|o| o.name == route.name) {
            let at = r.value.name.as_ref().map_or_else(|| loc(r), loc);
            return Err(ConfigError::at(
                file,
                at,
                format!("routes[{i}].name"),
                format!("duplicate route name '{}'", other.name),
            )
            .hint("give each route its own name"));
        }
        routes.push(route);
    }
    Ok(routes)
}

/// A `match:` block outside routes (authorization policies); `field` names it.
pub(crate) fn request_match(
    file: &Path,
    field: String,
    services: &[Service],
    m: &RawMatch,
) -> Result<RouteMatch, ConfigError> {
    RouteValidator { file, field, services }.matches(m)
}

struct RouteValidator<'a> {
    file: &'a Path,
    field: String,
    services: &'a [Service],
}

impl RouteValidator<'_> {
    fn err<T>(&self, at: &Spanned<T>, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, loc(at), format!("{}.{field}", self.field), message)
    }

    fn service(&self, name: &Spanned<String>, field: &str) -> Result<usize, ConfigError> {
        self.services.iter().position(|s| s.name == name.value.trim()).ok_or_else(|| {
            let known: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            self.err(name, field, format!("unknown service '{}'", name.value))
                .hint(format!("name a service declared under `services:` (known: {})", known.join(", ")))
        })
    }

    fn route(&self, i: usize, r: &RawRoute) -> Result<Route, ConfigError> {
        let service = self.service(&r.service, "service")?;
        let svc = &self.services[service];
        if !svc.ports.iter().any(|p| p.protocol.may_be_http()) {
            return Err(self
                .err(
                    &r.service,
                    "service",
                    format!("service '{}' has only tcp ports; routes apply to HTTP", svc.name),
                )
                .hint("set `protocol: http` (or auto, the default) on the service's port"));
        }
        let name = match &r.name {
            None => format!("{}-{i}", svc.name),
            Some(n) if crate::validate::is_valid_name(n.value.trim()) => n.value.trim().to_string(),
            Some(n) => {
                return Err(self
                    .err(n, "name", format!("invalid route name '{}'", n.value))
                    .hint("use 1 to 63 lowercase letters, digits, '-' or '.'"));
            }
        };
        let matches = match &r.matches {
            None => RouteMatch::default(),
            Some(m) => self.matches(&m.value)?,
        };
        let to = match &r.to {
            None => vec![Destination { service, port: None, version: None, weight: 1 }],
            Some(list) => {
                if list.value.is_empty() {
                    return Err(self
                        .err(list, "to", "a route needs at least one destination")
                        .hint("remove `to` to send to the route's own service, or list destinations"));
                }
                let mut to = Vec::new();
                for (j, d) in list.value.iter().enumerate() {
                    to.push(self.destination(j, service, &d.value, d)?);
                }
                if to.iter().all(|d| d.weight == 0) {
                    return Err(self
                        .err(list, "to", "every destination has weight 0")
                        .hint("give at least one destination a positive weight"));
                }
                to
            }
        };
        let request_headers = self.header_ops(r.request_headers.as_ref(), "request_headers")?;
        let response_headers = self.header_ops(r.response_headers.as_ref(), "response_headers")?;
        let timeout = r
            .timeout
            .as_ref()
            .map(|t| duration(self.file, t, &format!("{}.timeout", self.field)))
            .transpose()?;
        let retries = r.retries.as_ref().map(|x| self.retries(&x.value)).transpose()?;
        Ok(Route { name, service, matches, to, request_headers, response_headers, timeout, retries })
    }

    fn matches(&self, m: &RawMatch) -> Result<RouteMatch, ConfigError> {
        let host = match &m.host {
            None => None,
            Some(h) => {
                let v = h.value.trim().to_ascii_lowercase();
                let (wild, name) = match v.strip_prefix("*.") {
                    Some(rest) => (true, rest),
                    None => (false, v.as_str()),
                };
                let ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
                if !ok {
                    return Err(self
                        .err(h, "match.host", format!("'{}' is not a host name", h.value))
                        .hint("write a name like reviews.local or *.example.com (no scheme, no path)"));
                }
                Some(if wild {
                    HostMatch::Suffix(format!(".{name}"))
                } else {
                    HostMatch::Exact(name.to_string())
                })
            }
        };
        let path = match &m.path {
            None => None,
            Some(p) => {
                let given: Vec<(&str, &Spanned<String>)> =
                    [("exact", &p.value.exact), ("prefix", &p.value.prefix), ("regex", &p.value.regex)]
                        .into_iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                        .collect();
                let [(kind, v)] = given.as_slice() else {
                    return Err(self
                        .err(p, "match.path", "give exactly one of exact, prefix or regex")
                        .hint("e.g. path: {prefix: /api}"));
                };
                let field = format!("match.path.{kind}");
                Some(match *kind {
                    "regex" => {
                        check_regex(&v.value).map_err(|e| {
                            self.err(v, &field, format!("invalid regex: {e}"))
                                .hint("Rust regex syntax; it must match the whole path")
                        })?;
                        PathMatch::Regex(v.value.clone())
                    }
                    _ if !v.value.starts_with('/') => {
                        return Err(self
                            .err(v, &field, format!("'{}' does not start with /", v.value))
                            .hint("paths are matched as sent, starting with /"));
                    }
                    "exact" => PathMatch::Exact(v.value.clone()),
                    _ => PathMatch::Prefix(v.value.clone()),
                })
            }
        };
        let mut methods = Vec::new();
        for (j, meth) in m.methods.iter().flatten().enumerate() {
            let v = meth.value.trim().to_ascii_uppercase();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                return Err(self
                    .err(
                        meth,
                        &format!("match.methods[{j}]"),
                        format!("'{}' is not an HTTP method", meth.value),
                    )
                    .hint("e.g. GET, POST, PUT, DELETE"));
            }
            methods.push(v);
        }
        let mut headers = Vec::new();
        for (j, h) in m.headers.iter().flatten().enumerate() {
            let field = format!("match.headers[{j}]");
            let h = &h.value;
            let name = http_header_name(h.name.value.trim()).ok_or_else(|| {
                self.err(
                    &h.name,
                    &format!("{field}.name"),
                    format!("'{}' is not a header name", h.name.value),
                )
                .hint("use letters, digits and '-', e.g. x-canary")
            })?;
            let value = match (&h.exact, &h.regex, &h.present) {
                (Some(e), None, None) => ValueMatch::Exact(e.value.clone()),
                (None, Some(r), None) => {
                    check_regex(&r.value).map_err(|e| {
                        self.err(r, &format!("{field}.regex"), format!("invalid regex: {e}"))
                            .hint("Rust regex syntax; it must match the whole value")
                    })?;
                    ValueMatch::Regex(r.value.clone())
                }
                (None, None, Some(p)) => {
                    if p.value {
                        ValueMatch::Present
                    } else {
                        ValueMatch::Absent
                    }
                }
                _ => {
                    return Err(self
                        .err(&h.name, &field, "give exactly one of exact, regex or present")
                        .hint("e.g. {name: x-canary, exact: \"1\"}"));
                }
            };
            headers.push(HeaderMatch { name, value });
        }
        Ok(RouteMatch { host, path, methods, headers })
    }

    fn destination(
        &self,
        j: usize,
        own: usize,
        d: &RawDestination,
        at: &Spanned<RawDestination>,
    ) -> Result<Destination, ConfigError> {
        let field = format!("to[{j}]");
        let service = match &d.service {
            None => own,
            Some(s) => self.service(s, &format!("{field}.service"))?,
        };
        let svc = &self.services[service];
        let port = match &d.port {
            Some(p) => Some(svc.ports.iter().position(|x| x.port == p.value).ok_or_else(|| {
                let ports: Vec<String> = svc.ports.iter().map(|x| x.port.to_string()).collect();
                self.err(
                    p,
                    &format!("{field}.port"),
                    format!("service '{}' has no port {}", svc.name, p.value),
                )
                .hint(format!("its ports: {}", ports.join(", ")))
            })?),
            None if service == own => None,
            None if svc.ports.len() == 1 => Some(0),
            None => {
                return Err(self
                    .err(at, &field, format!("service '{}' has several ports; which one?", svc.name))
                    .hint("add `port:` to the destination"));
            }
        };
        if let Some(pi) = port
            && !svc.ports[pi].protocol.may_be_http()
        {
            return Err(self
                .err(
                    at,
                    &field,
                    format!(
                        "port {} of service '{}' is tcp; HTTP cannot be routed to it",
                        svc.ports[pi].port, svc.name
                    ),
                )
                .hint("route to an HTTP port, or set its protocol to http"));
        }
        let version = match &d.version {
            None => None,
            Some(v) => {
                let v_ = v.value.trim();
                if !svc.endpoints.iter().any(|e| e.version.as_deref() == Some(v_)) {
                    let mut known: Vec<&str> =
                        svc.endpoints.iter().filter_map(|e| e.version.as_deref()).collect();
                    known.sort_unstable();
                    known.dedup();
                    return Err(self
                        .err(
                            v,
                            &format!("{field}.version"),
                            format!("no endpoint of service '{}' has version '{v_}'", svc.name),
                        )
                        .hint(if known.is_empty() {
                            "label endpoints with `version:` under `endpoints:`".to_string()
                        } else {
                            format!("known versions: {}", known.join(", "))
                        }));
                }
                Some(v_.to_string())
            }
        };
        let weight = d.weight.as_ref().map_or(1, |w| w.value);
        if let Some(w) = &d.weight
            && w.value > 1_000_000
        {
            return Err(self
                .err(w, &format!("{field}.weight"), "weights go up to 1000000")
                .hint("weights are relative: 90 and 10 split 90% / 10%"));
        }
        Ok(Destination { service, port, version, weight })
    }

    fn header_ops(&self, raw: Option<&Spanned<RawHeaderOps>>, field: &str) -> Result<HeaderOps, ConfigError> {
        let Some(raw) = raw else { return Ok(HeaderOps::default()) };
        let mut ops = HeaderOps::default();
        for (name, value) in raw.value.set.iter().flat_map(|m| m.value.iter()) {
            let n = self.editable_header(name, value, &format!("{field}.set"))?;
            if value.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(self
                    .err(value, &format!("{field}.set.{name}"), "a header value cannot hold CR, LF or NUL")
                    .hint("put the value on one line"));
            }
            ops.set.push((n, value.value.clone()));
        }
        for (j, name) in raw.value.remove.iter().flatten().enumerate() {
            ops.remove.push(self.editable_header(&name.value, name, &format!("{field}.remove[{j}]"))?);
        }
        Ok(ops)
    }

    fn editable_header<T>(&self, name: &str, at: &Spanned<T>, field: &str) -> Result<String, ConfigError> {
        let n = http_header_name(name.trim()).ok_or_else(|| {
            self.err(at, field, format!("'{name}' is not a header name")).hint("use letters, digits and '-'")
        })?;
        const FRAMING: &[&str] =
            &["connection", "content-length", "transfer-encoding", "upgrade", "te", "keep-alive", "host"];
        if FRAMING.contains(&n.as_str()) {
            return Err(self
                .err(at, field, format!("'{n}' is managed by the proxy (framing and connection handling)"))
                .hint("routes may change other headers"));
        }
        Ok(n)
    }

    fn retries(&self, r: &RawRetries) -> Result<RetryPolicy, ConfigError> {
        let attempts = r.attempts.value;
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            return Err(self
                .err(&r.attempts, "retries.attempts", format!("{attempts} attempts"))
                .hint(format!("use 1 to {MAX_ATTEMPTS}; attempts count the first try")));
        }
        let per_try_timeout = r
            .per_try_timeout
            .as_ref()
            .map(|t| duration(self.file, t, &format!("{}.retries.per_try_timeout", self.field)))
            .transpose()?;
        let on = match &r.on {
            None => RetryOn {
                connect_failure: true,
                gateway_error: true,
                grpc_unavailable: true,
                reset: true,
                ..RetryOn::default()
            },
            Some(list) => {
                let mut on = RetryOn::default();
                for (j, c) in list.iter().enumerate() {
                    match c.value.trim() {
                        "connect-failure" => on.connect_failure = true,
                        "5xx" => on.server_error = true,
                        "gateway-error" => on.gateway_error = true,
                        "unavailable" => on.grpc_unavailable = true,
                        "reset" => on.reset = true,
                        other => {
                            return Err(self
                                .err(
                                    c,
                                    &format!("retries.on[{j}]"),
                                    format!("unknown retry condition '{other}'"),
                                )
                                .hint(format!("supported: {}", RetryOn::NAMES.join(", "))));
                        }
                    }
                }
                on
            }
        };
        let budget_percent = r.budget_percent.as_ref().map_or(20, |b| b.value);
        if let Some(b) = &r.budget_percent
            && b.value > 1000
        {
            return Err(self
                .err(b, "retries.budget_percent", "more than 1000%")
                .hint("e.g. 20: retries add at most 20% to the route's load"));
        }
        let min_retries_per_second = r.min_retries_per_second.as_ref().map_or(10, |b| b.value);
        Ok(RetryPolicy { attempts, per_try_timeout, on, budget_percent, min_retries_per_second })
    }
}

/// Compiles as the proxy will: anchored, so the whole value must match.
pub(crate) fn check_regex(r: &str) -> Result<(), String> {
    regex::Regex::new(&format!("^(?:{r})$")).map(|_| ()).map_err(|e| {
        e.to_string().lines().last().unwrap_or("invalid").trim().trim_start_matches("error: ").to_string()
    })
}
