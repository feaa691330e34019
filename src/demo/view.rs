//! The demo's live terminal view: what the applications saw per route (from
//! their statistics files) beside what the nodes counted (their /metrics).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::apps::RouteSnapshot;

/// A parsed Prometheus text exposition.
#[derive(Debug, Default)]
pub(crate) struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => continue,
            };
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => match parse_labels(r) {
                    Some(x) => x,
                    None => continue,
                },
                None => (BTreeMap::new(), rest),
            };
            if let Some(v) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
                out.push((name.to_string(), labels, v));
            }
        }
        Self(out)
    }

    /// The sum of the series of `name` whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.series(name, want).map(|(_, v)| v).sum()
    }

    pub fn series<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, l, v)| (l, *v))
    }
}

/// `k="v",...}` and what follows; None when malformed.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[eq + 1 + 1 + end + 1..];
    }
}

/// Everything one frame shows.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub elapsed: Duration,
    /// None: until Ctrl-C.
    pub duration: Option<Duration>,
    /// Without root: one explicit-mode node, no kernel paths.
    pub explicit: bool,
    pub load: BTreeMap<String, RouteSnapshot>,
    pub frontend: BTreeMap<String, RouteSnapshot>,
    pub node_a: Scrape,
    pub node_b: Scrape,
}

impl Snapshot {
    fn route<'a>(&'a self, side: &'a BTreeMap<String, RouteSnapshot>, name: &str) -> RouteSnapshot {
        side.get(name).cloned().unwrap_or_default()
    }

    pub fn retries(&self) -> f64 {
        self.node_a.sum("sluice_http_retries_total", &[])
    }

    pub fn ejections(&self) -> f64 {
        self.node_a.sum("sluice_http_outlier_ejections_total", &[])
    }

    pub fn ejected_now(&self) -> Vec<String> {
        self.node_a
            .series("sluice_endpoint_ejected", &[])
            .filter(|(_, v)| *v > 0.0)
            .map(|(l, _)| {
                format!(
                    "{} {}",
                    l.get("service").map_or("", String::as_str),
                    l.get("endpoint").map_or("", String::as_str)
                )
            })
            .collect()
    }

    pub fn denied(&self) -> f64 {
        self.node_a.sum("sluice_authz_denied_total", &[]) + self.node_b.sum("sluice_authz_denied_total", &[])
    }

    /// Zero-hop bytes the kernel counted for the pricing service (up, down).
    pub fn zero_hop_bytes(&self) -> (f64, f64) {
        let b = |dir| {
            self.node_a.sum(
                "sluice_tcp_bytes_total",
                &[("destination_service", "pricing"), ("path", "zero_hop"), ("direction", dir)],
            )
        };
        (b("up"), b("down"))
    }

    pub fn zero_hop_connections(&self) -> f64 {
        self.node_a
            .sum("sluice_tcp_connections_total", &[("destination_service", "pricing"), ("path", "zero_hop")])
    }

    pub fn handshakes(&self) -> (f64, f64) {
        let ok = self.node_a.sum("sluice_mtls_handshakes_total", &[("side", "client"), ("result", "ok")]);
        let ok_b = self.node_b.sum("sluice_mtls_handshakes_total", &[("side", "server"), ("result", "ok")]);
        (ok, ok_b)
    }

    pub fn render(&self, color: bool) -> String {
        let bold = |s: &str| if color { format!("\x1b[1m{s}\x1b[0m") } else { s.to_string() };
        let mut o = String::new();
        let secs = self.elapsed.as_secs();
        let progress = match self.duration {
            Some(d) => {
                let total = d.as_secs().max(1);
                let filled = (secs.min(total) * 24 / total) as usize;
                format!(
                    "{:>3} s of {total} s [{}{}]",
                    secs.min(total),
                    "#".repeat(filled),
                    ".".repeat(24 - filled)
                )
            }
            None => format!("{secs:>3} s (Ctrl-C stops and cleans up)"),
        };
        let title = if self.explicit { "1 node (explicit mode, no root)" } else { "2 nodes" };
        let _ = writeln!(o, "{}", bold(&format!("Sluice demo: {title}, 3 services    {progress}")));
        let _ = writeln!(
            o,
            "{}",
            bold("route     who calls whom              proto      req/s  p50 ms  p99 ms    total  errors")
        );
        let row = |o: &mut String, name: &str, who: &str, proto: &str, r: &RouteSnapshot, note: String| {
            let _ = writeln!(
                o,
                "{name:<9} {who:<27} {proto:<8} {:>7.1} {:>7.2} {:>7.2} {:>8} {:>7}  {note}",
                r.rps, r.p50_ms, r.p99_ms, r.total, r.errors
            );
        };
        let by =
            |r: &RouteSnapshot| r.by.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let web = self.route(&self.load, "web");
        row(&mut o, "web", "load -> frontend", "HTTP/1.1", &web, String::new());
        let pricing = self.route(&self.frontend, "pricing");
        row(&mut o, "pricing", "frontend -> pricing", "gRPC", &pricing, by(&pricing));
        let stock = self.route(&self.frontend, "stock");
        row(&mut o, "stock", "frontend -> stock", "HTTP/1.1", &stock, by(&stock));
        let export = self.route(&self.load, "export");
        let direct = self.route(&self.load, "pricing-direct");
        if !self.explicit {
            row(
                &mut o,
                "export",
                "load -> pricing:7000",
                "TCP",
                &export,
                format!("{} sent", mib(export.bytes as f64)),
            );
        }
        let admin = self.route(&self.load, "web-admin");
        row(
            &mut o,
            "denied",
            "load -> frontend /admin",
            "HTTP/1.1",
            &admin,
            "errors: answers that were not 403".into(),
        );
        if !self.explicit {
            row(&mut o, "denied", "load -> pricing", "gRPC", &direct, "errors: not PERMISSION_DENIED".into());
        }
        let _ = writeln!(o);
        let ejected = self.ejected_now();
        let _ = writeln!(
            o,
            "retries    {} retried attempts; outlier ejections {}; ejected now: {}",
            self.retries(),
            self.ejections(),
            if ejected.is_empty() { "none".to_string() } else { ejected.join(", ") }
        );
        if self.explicit {
            let _ = writeln!(o, "policy     {} calls refused by authorization", self.denied());
            let _ = writeln!(
                o,
                "needs root transparent redirection, a second node over mTLS, identities, zero-hop"
            );
            return o;
        }
        let _ = writeln!(
            o,
            "policy     {} calls refused by authorization (node-a {}, node-b {})",
            self.denied(),
            self.node_a.sum("sluice_authz_denied_total", &[]),
            self.node_b.sum("sluice_authz_denied_total", &[])
        );
        let (up, down) = self.zero_hop_bytes();
        let _ = writeln!(
            o,
            "fast path  zero-hop (kernel, no proxy): {} connections, {} up, {} down; proxy-copied TCP: {}",
            self.zero_hop_connections(),
            mib(up),
            mib(down),
            mib(self.node_a.sum("sluice_path_bytes_total", &[("path", "proxy")]))
        );
        let (hs_a, hs_b) = self.handshakes();
        let _ = writeln!(
            o,
            "mTLS       node-a -> node-b: {hs_a} client handshakes, {hs_b} accepted by node-b; {} requests and {} tunnels reached node-b",
            self.node_b.sum("sluice_mesh_streams_total", &[("kind", "http")]),
            self.node_b.sum("sluice_mesh_streams_total", &[("kind", "tcp")]),
        );
        o
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let s = Scrape::parse(
            "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"uote\"} 3\nx{a=\"2\"} 4.5\ny 7\nbroken{a=\"1 9\n",
        );
        assert_eq!(s.sum("x", &[]), 7.5);
        assert_eq!(s.sum("x", &[("a", "1")]), 3.0);
        assert_eq!(s.sum("x", &[("b", "q\"uote")]), 3.0);
        assert_eq!(s.sum("y", &[]), 7.0);
        assert_eq!(s.sum("broken", &[]), 0.0);
    }
}
