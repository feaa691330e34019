//! Reads the spans a node wrote as OTLP/JSON lines and draws one trace as a
//! tree: the request, the node's attempts, the calls the application made
//! while answering, and their retries.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde_json::Value;

#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub trace: String,
    pub id: String,
    pub parent: Option<String>,
    pub name: String,
    pub kind: i64,
    pub start: u128,
    pub end: u128,
    pub attrs: BTreeMap<String, String>,
    pub host: String,
}

impl Span {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }

    fn line(&self) -> String {
        let kind = match self.kind {
            2 => "SERVER",
            3 => "CLIENT",
            _ => "SPAN",
        };
        let target = match self.kind {
            3 => self.attr("url.full").unwrap_or_default().to_string(),
            _ => format!(
                "{}{}",
                self.attr("server.address").unwrap_or_default(),
                self.attr("url.path").unwrap_or_default()
            ),
        };
        let mut s = format!("{kind} {} {target}", self.name);
        if let Some(code) = self.attr("http.response.status_code") {
            let _ = write!(s, " -> {code}");
        }
        if let Some(e) = self.attr("error.type") {
            let _ = write!(s, " ({e})");
        }
        if let Some(n) = self.attr("http.request.resend_count") {
            let _ = write!(s, " [retry {n}]");
        }
        let ms = self.end.saturating_sub(self.start) as f64 / 1e6;
        let _ = write!(s, "  {ms:.2} ms  @{}", self.host);
        s
    }
}

fn value(v: &Value) -> String {
    let inner = v
        .get("stringValue")
        .or_else(|| v.get("intValue"))
        .or_else(|| v.get("boolValue"))
        .or_else(|| v.get("doubleValue"));
    match inner {
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
        None => v.to_string(),
    }
}

fn attributes(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|kv| Some((kv.get("key")?.as_str()?.to_string(), value(kv.get("value")?))))
                .collect()
        })
        .unwrap_or_default()
}

/// Every span in the file (lines that do not parse are skipped).
pub(crate) fn read(path: &Path) -> std::io::Result<Vec<Span>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        for rs in doc.get("resourceSpans").and_then(Value::as_array).into_iter().flatten() {
            let res = attributes(rs.pointer("/resource/attributes"));
            let host = res.get("sluice.node").or_else(|| res.get("host.name")).cloned().unwrap_or_default();
            for ss in rs.get("scopeSpans").and_then(Value::as_array).into_iter().flatten() {
                for sp in ss.get("spans").and_then(Value::as_array).into_iter().flatten() {
                    let text = |k: &str| sp.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                    let nanos =
                        |k: &str| sp.get(k).and_then(Value::as_str).and_then(|v| v.parse().ok()).unwrap_or(0);
                    out.push(Span {
                        trace: text("traceId"),
                        id: text("spanId"),
                        parent: sp.get("parentSpanId").and_then(Value::as_str).map(str::to_string),
                        name: text("name"),
                        kind: sp.get("kind").and_then(Value::as_i64).unwrap_or(0),
                        start: nanos("startTimeUnixNano"),
                        end: nanos("endTimeUnixNano"),
                        attrs: attributes(sp.get("attributes")),
                        host: host.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The most telling trace: one with a retry if there is one, then one that
/// still ended well (the retry saved it), then the most spans.
pub(crate) fn pick(spans: &[Span]) -> Option<Vec<Span>> {
    let mut by_trace: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(&s.trace).or_default().push(s);
    }
    by_trace
        .into_values()
        .max_by_key(|t| {
            let retried = t.iter().any(|s| s.attrs.contains_key("http.request.resend_count"));
            let codes: Vec<u16> = t
                .iter()
                .filter(|s| s.parent.is_none())
                .filter_map(|s| s.attr("http.response.status_code")?.parse().ok())
                .collect();
            let answered = !codes.is_empty() && codes.iter().all(|c| *c < 400);
            (retried, answered, t.len())
        })
        .map(|t| t.into_iter().cloned().collect())
}

/// The trace as an indented tree, children in start order.
pub(crate) fn tree(trace: &[Span]) -> String {
    let ids: std::collections::HashSet<&str> = trace.iter().map(|s| s.id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
    for s in trace {
        // A parent that is not in the file (another process's span) makes a root.
        let parent = s.parent.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    for v in children.values_mut() {
        v.sort_by_key(|s| s.start);
    }
    let mut out = String::new();
    if let Some(first) = trace.first() {
        let _ = writeln!(out, "trace {}", first.trace);
    }
    fn walk(
        out: &mut String,
        children: &BTreeMap<Option<&str>, Vec<&Span>>,
        parent: Option<&str>,
        prefix: &str,
    ) {
        let Some(kids) = children.get(&parent) else { return };
        for (i, s) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            let _ = writeln!(out, "{prefix}{}{}", if last { "`-- " } else { "|-- " }, s.line());
            let deeper = format!("{prefix}{}", if last { "    " } else { "|   " });
            walk(out, children, Some(&s.id), &deeper);
        }
    }
    walk(&mut out, &children, None, "");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_retried_trace_as_a_tree() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.jsonl");
        let span = |id: &str, parent: Option<&str>, kind: i64, start: u64, extra: &str| {
            format!(
                r#"{{"traceId":"t1","spanId":"{id}",{}"name":"GET","kind":{kind},"startTimeUnixNano":"{start}","endTimeUnixNano":"{}","attributes":[{{"key":"url.path","value":{{"stringValue":"/x"}}}}{extra}]}}"#,
                parent.map(|p| format!(r#""parentSpanId":"{p}","#)).unwrap_or_default(),
                start + 1_000_000
            )
        };
        let retry = r#",{"key":"http.request.resend_count","value":{"intValue":"1"}}"#;
        let ok = r#",{"key":"http.response.status_code","value":{"intValue":"200"}}"#;
        let line = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"host.name","value":{{"stringValue":"node-a"}}}}]}},"scopeSpans":[{{"spans":[{},{},{},{}]}}]}}]}}"#,
            span("a", None, 2, 10, ok),
            span("c", Some("a"), 3, 30, retry),
            span("b", Some("a"), 3, 20, ""),
            span("z", None, 2, 5, ""),
        );
        // A bigger trace with a retry that did not save the request.
        let failed = r#",{"key":"http.response.status_code","value":{"intValue":"502"}}"#;
        let other = (0..6)
            .map(|i| {
                let id = format!("f{i}");
                let s = span(&id, (i > 0).then_some("f0"), 2, 40, if i == 0 { failed } else { retry });
                s.replace("\"t1\"", "\"t2\"")
            })
            .collect::<Vec<_>>()
            .join(",");
        let line2 = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{other}]}}]}}]}}"#);
        std::fs::write(&path, format!("{line}\nnot json\n{line2}\n")).unwrap_or_else(|e| panic!("{e}"));
        let spans = read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spans.len(), 10);
        let picked = pick(&spans).unwrap_or_default();
        assert!(picked.iter().all(|s| s.trace == "t1"), "the retry that saved its request: {picked:?}");
        let t = tree(&picked);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "trace t1");
        assert!(lines[1].starts_with("|-- SERVER GET /x") && lines[1].ends_with("@node-a"), "{t}");
        assert!(lines[2].starts_with("`-- SERVER GET /x"), "{t}");
        assert!(lines[3].starts_with("    |-- CLIENT GET"), "{t}");
        assert!(lines[4].starts_with("    `-- CLIENT GET") && lines[4].contains("[retry 1]"), "{t}");
        assert_eq!(picked.len(), 4);
    }
}
