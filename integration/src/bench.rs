//! Load generation for benchmarks: wrk inside a cgroup, and its output parsed.

use std::{path::Path, process::Command};

/// A mesh config of one service, `vip:port`, whose one endpoint is
/// 127.0.0.1:`backend_port`; a `protocol` of `None` leaves the config's default.
pub fn one_service(
    name: &str,
    vip: impl std::fmt::Display,
    port: u16,
    protocol: Option<&str>,
    zero_hop: bool,
    backend_port: u16,
) -> String {
    let protocol = protocol.map(|p| format!(", protocol: {p}")).unwrap_or_default();
    format!(
        "services:\n  - {{name: {name}, vips: [{vip}], ports: [{{port: {port}{protocol}, zero_hop: {zero_hop}}}]}}\nendpoints:\n  - {{service: {name}, address: 127.0.0.1, port: {backend_port}}}\n"
    )
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Runs `wrk --latency` from inside `cgroup` (so the mesh sees it) and parses it.
pub fn wrk(
    cgroup: &Path,
    url: &str,
    threads: u32,
    conns: u32,
    secs: u32,
    close: bool,
) -> Result<WrkResult, String> {
    wrk_in(None, cgroup, url, threads, conns, secs, close)
}

/// [`wrk`] inside network namespace `netns` too.
pub fn wrk_in(
    netns: Option<&str>,
    cgroup: &Path,
    url: &str,
    threads: u32,
    conns: u32,
    secs: u32,
    close: bool,
) -> Result<WrkResult, String> {
    let mut cmd = in_cgroup(netns, cgroup, false, "wrk");
    cmd.args([&format!("-t{threads}"), &format!("-c{conns}"), &format!("-d{secs}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_wrk(&text)
        .ok_or_else(|| format!("cannot read wrk's output:\n{text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// Parses wrk's text report (with `--latency`).
pub fn parse_wrk(text: &str) -> Option<WrkResult> {
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let pct = |p: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(p))?;
        duration_ms(l.split_whitespace().nth(1)?)
    };
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| rest.split(',').filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0)
        + text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    Some(WrkResult {
        requests_per_sec: rps,
        p50_ms: pct("50%")?,
        p90_ms: pct("90%")?,
        p99_ms: pct("99%")?,
        errors,
    })
}

fn duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// One table row: medians of req/s, p50 and p99 over `runs`, and all errors.
pub fn row(name: &str, width: usize, runs: &[WrkResult]) -> String {
    let m = |f: fn(&WrkResult) -> f64| median(runs.iter().map(f).collect());
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    format!(
        "{name:<width$} {:>12.0} {:>9.3} {:>9.3} {errors:>7}",
        m(|r| r.requests_per_sec),
        m(|r| r.p50_ms),
        m(|r| r.p99_ms)
    )
}

/// The median of a few runs (the machine is shared and noisy).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The median of paired per-round differences with a distribution-free
/// interval of at least 95% confidence for it (the sign test's: between the
/// k-th smallest and k-th largest difference, k as large as the binomial
/// distribution allows). `None` with fewer than 6 values, too few for one.
/// On a noisy machine this says whether a gap between two targets is more
/// than the noise: an interval holding 0 shows no difference.
pub fn median_interval(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // The interval [v[k-1], v[n-k]] misses the median with probability
    // 2·P(Binomial(n, 1/2) <= k-1): widen k while that stays within 5%.
    let (mut k, mut ways, mut below) = (0, 1.0f64, 0.0f64);
    for j in 0..n / 2 {
        below += ways; // C(n, j): below is 2^n · P(B <= j)
        if 2.0 * below / 2f64.powi(n as i32) > 0.05 {
            break;
        }
        k = j + 1;
        ways = ways * (n - j) as f64 / (j + 1) as f64;
    }
    if k == 0 {
        return None;
    }
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((median, v[k - 1], v[n - k]))
}

/// `program` run from inside `cgroup` (so the mesh sees it), in network
/// namespace `netns` when given, on CPU 0 when `pinned`. Add its arguments.
pub fn in_cgroup(netns: Option<&str>, cgroup: &Path, pinned: bool, program: &str) -> Command {
    let mut cmd = in_netns(netns, "sh");
    cmd.arg("-c").arg("echo $$ > \"$0\" && exec \"$@\"").arg(cgroup.join("cgroup.procs"));
    if pinned {
        cmd.args(["taskset", "-c", "0"]);
    }
    cmd.arg(program);
    cmd
}

/// `pid` and its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// How often the threads of `pid` and its descendants have left their CPU:
/// `(voluntary, involuntary)` context switches, from each thread's
/// `/proc` status. Voluntary ones are sleeps (a wait in `epoll_wait` with
/// nothing ready, a lock); involuntary ones are preemptions, another task
/// taking the CPU. Threads that have ended are no longer counted.
pub fn context_switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for p in process_tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for line in status.lines() {
                let count = |key: &str| line.strip_prefix(key)?.trim().parse::<u64>().ok();
                if let Some(n) = count("voluntary_ctxt_switches:") {
                    total.0 += n;
                } else if let Some(n) = count("nonvoluntary_ctxt_switches:") {
                    total.1 += n;
                }
            }
        }
    }
    total
}

/// Every thread of `pid` and its descendants on CPU 0 (`pinned`), or on all CPUs.
pub fn pin(pid: u32, pinned: bool) -> Result<(), String> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = if pinned { "0".to_string() } else { format!("0-{}", n - 1) };
    for p in process_tree(pid) {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &p.to_string()])
            .output()
            .map_err(|e| format!("taskset: {e}"))?;
        if !out.status.success() {
            return Err(format!("taskset on {p}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(())
}

/// `program`, started inside network namespace `netns` when given (nsenter
/// keeps the mount namespace, so cgroup2 stays visible).
pub fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).args(["--", program]);
            c
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_interval_is_the_sign_tests() {
        // Five values cannot give 95%: even the widest interval misses the
        // median with probability 2/32.
        assert_eq!(median_interval(vec![1.0, 2.0, 3.0, 4.0, 5.0]), None);
        // Six: the extremes (1 - 2/64 = 96.9%).
        assert_eq!(median_interval(vec![6.0, 1.0, 3.0, 2.0, 5.0, 4.0]), Some((3.5, 1.0, 6.0)));
        // Nine: the 2nd smallest and 2nd largest (1 - 2·10/512 = 96.1%);
        // the 3rd would give 1 - 2·46/512 = 82%.
        let nine: Vec<f64> = (1..=9).map(f64::from).collect();
        assert_eq!(median_interval(nine), Some((5.0, 2.0, 8.0)));
        // Twenty-five: the 8th and 18th (P(B <= 7) = 0.0216).
        let many: Vec<f64> = (1..=25).rev().map(f64::from).collect();
        assert_eq!(median_interval(many), Some((13.0, 8.0, 18.0)));
        // Missing values are left out, not counted as differences.
        let with_nan = vec![f64::NAN, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(median_interval(with_nan), Some((3.5, 1.0, 6.0)));
    }

    #[test]
    fn parses_a_wrk_report() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   351.54us  334.01us   8.44ms   94.82%\n  Latency Distribution\n     50%  290.00us\n     75%  400.00us\n     90%  600.00us\n     99%    1.50ms\n  247839 requests in 5.00s, 9.45MB read\n  Socket errors: connect 0, read 1, write 2, timeout 0\n  Non-2xx or 3xx responses: 3\nRequests/sec:  49567.80\nTransfer/sec:      1.89MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests_per_sec, 49567.80);
        assert!((r.p50_ms - 0.29).abs() < 1e-9);
        assert!((r.p90_ms - 0.6).abs() < 1e-9);
        assert!((r.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(r.errors, 6);
    }

    /// A process that sleeps again and again is counted its sleeps, in the
    /// thread that sleeps (a child of the one asked about).
    #[test]
    fn context_switches_count_sleeps_of_the_process_tree() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.02; done; wait"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        let (v0, _) = context_switches(pid);
        std::thread::sleep(std::time::Duration::from_millis(150));
        let (v1, n1) = context_switches(pid);
        let _ = sh.wait();
        // The shell waits for each `sleep` child: at least one sleep each,
        // and the background `sleep 0.3` has slept once too.
        assert!(v1 >= v0 + 3, "{v0} -> {v1}");
        assert!(v1 + n1 > 0);
        // Gone: nothing to count.
        assert_eq!(context_switches(pid), (0, 0));
    }

    #[test]
    fn median_of_three() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
