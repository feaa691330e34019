//! Tests of `sluice-bench l7`'s rows, comparisons and statistics.

use super::*;

#[test]
fn rows_follow_the_protocol_the_pick_and_the_extra_builds() {
    assert_eq!(rows(None, None, false, false), TARGET_KEYS.map(|(_, row)| row).to_vec());
    assert_eq!(
        rows(Some(Only::H1), None, true, true),
        [
            "direct",
            "sluice",
            BASELINE_ROW,
            PGO_ROW,
            "sluice (h2→http1 upstream)",
            "sluice + sk_msg (forced)",
            "nginx",
            "haproxy"
        ]
    );
    let picked = parse_targets("haproxy,sluice,nginx").unwrap();
    assert_eq!(rows(Some(Only::H2), Some(&picked), false, false), ["sluice", "nginx", "haproxy"]);
    // Sluice alone (the bare forwarder is h2c only) still takes the extra builds.
    let picked = parse_targets("sluice,bare-h2").unwrap();
    assert_eq!(rows(Some(Only::H1), Some(&picked), true, true), ["sluice", BASELINE_ROW, PGO_ROW]);
}

#[test]
fn comparisons_put_sluice_and_its_pgo_build_against_the_others() {
    let targets = rows(Some(Only::H1), Some(&parse_targets("haproxy,sluice,nginx").unwrap()), true, false);
    assert_eq!(targets, ["sluice", PGO_ROW, "nginx", "haproxy"]);
    assert_eq!(comparisons(&targets), [(0, 2), (0, 3), (0, 1), (1, 2), (1, 3)]);
    // Without the PGO build, or without the other proxies.
    assert_eq!(comparisons(&["nginx", "sluice", "haproxy"]), [(1, 0), (1, 2)]);
    assert_eq!(comparisons(&["sluice", BASELINE_ROW]), [(0, 1)]);
    assert!(comparisons(&["sluice"]).is_empty());
}

/// A load run's result with only what the comparisons read.
fn r(rps: f64, p99: f64) -> WrkResult {
    WrkResult { requests_per_sec: rps, p50_ms: 0.0, p90_ms: 0.0, p99_ms: p99, errors: 0 }
}

#[test]
fn paired_says_when_a_gap_is_beyond_the_noise() {
    // Faster in every one of 6 rounds, p99 up and down around the other's.
    let a: Vec<_> = (0..6).map(|i| r(110.0 + f64::from(i), 2.0 + f64::from(i % 2) * 0.2)).collect();
    let b: Vec<_> = (0..6).map(|_| r(100.0, 2.1)).collect();
    let s = paired(&a, &b);
    assert!(s.contains("req/s ratio 1.125 [1.100, 1.150]: sluice faster"), "{s}");
    assert!(s.contains("p99 difference +0.000 ms [-0.100, +0.100]: no difference shown"), "{s}");
    // Slower and with a higher tail in every round.
    let s = paired(&b, &a);
    assert!(s.contains("sluice slower"), "{s}");
    let worse: Vec<_> = (0..6).map(|_| r(100.0, 3.0)).collect();
    assert!(paired(&worse, &b).contains("+0.900 ms [+0.900, +0.900]: sluice higher"));
    // Five rounds give no interval, and say so.
    assert!(paired(&a[..5], &b[..5]).contains("too few rounds"));
}

#[test]
fn head_to_head_counts_rounds_won_on_rate_and_tail() {
    let a = [r(100.0, 2.0), r(100.0, 2.0), r(90.0, 1.0), r(80.0, 3.0)];
    let b = [r(90.0, 3.0), r(100.0, 1.0), r(95.0, 1.0), r(90.0, 2.0), r(1.0, 9.0)];
    // The fifth round of `b` has no counterpart: not counted.
    assert_eq!(head_to_head(&a, &b), HeadToHead { rounds: 4, faster: 2, tail: 2, both: 1 });
}

/// A busy "proxy" is charged its CPU time per request; an idle
/// "backend" next to nothing; no proxy is no figure.
#[test]
fn cpu_per_request_is_the_processes_cpu_over_the_requests() {
    let mut busy = Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
    let mut idle = Command::new("sleep").arg("30").spawn().unwrap();
    let load = || {
        std::thread::sleep(std::time::Duration::from_millis(600));
        Ok(WrkResult { requests_per_sec: 1000.0, p50_ms: 0.0, p90_ms: 0.0, p99_ms: 0.0, errors: 0 })
    };
    let measured = with_cpu(Some(busy.id()), idle.id(), load);
    let none = with_cpu(None, idle.id(), load);
    let _ = (busy.kill(), idle.kill(), busy.wait(), idle.wait());
    let (r, cpu) = measured.unwrap();
    assert_eq!(r.requests_per_sec, 1000.0);
    // A spinning process over 0.6 s of 600 requests: up to 1 ms of CPU
    // each (less when other tests share the cores; never more).
    assert!(cpu.proxy_us > 100.0 && cpu.proxy_us < 1100.0, "{cpu:?}");
    // A shell loop of builtins runs in user space.
    assert!(cpu.proxy_user_us > cpu.proxy_system_us, "{cpu:?}");
    assert!((cpu.proxy_user_us + cpu.proxy_system_us - cpu.proxy_us).abs() < 1e-9, "{cpu:?}");
    assert!(cpu.backend_us < 50.0, "{cpu:?}");
    // A loop of shell builtins makes no system call, so it never sleeps
    // (fewer than 3 switches over 600 requests, to allow for a stray one).
    assert!(cpu.proxy_sleeps_per_k < 5.0 && cpu.proxy_preempted_per_k >= 0.0, "{cpu:?}");
    let none = none.unwrap().1;
    assert!(none.proxy_us.is_nan() && none.proxy_user_us.is_nan() && none.proxy_system_us.is_nan());
    assert!(none.proxy_sleeps_per_k.is_nan() && none.proxy_preempted_per_k.is_nan());
}
