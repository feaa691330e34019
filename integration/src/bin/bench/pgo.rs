//! `sluice-bench pgo-train [--secs N]`: the load a profile-guided build of
//! Sluice learns from (`scripts/build-pgo.sh`). It is the traffic of
//! `sluice-bench l7`, through Sluice only: HTTP/1.1 keep-alive (wrk) and h2c
//! (h2load), with HTTP/2 and then HTTP/1.1 to the backend. Each node is
//! stopped with SIGTERM, so that an instrumented `sluice` (set with
//! `SLUICE_SLUICE_BIN`) exits cleanly and writes its profile. A run with
//! failed requests is an error: a profile of error paths would be the wrong one.

use anyhow::bail;
use nix::sys::signal::Signal;
use sluice_integration::{CgroupGuard, bench::wrk, process::hello_process};

pub fn run(secs: u32, stopped: fn() -> bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("training attaches Sluice's eBPF programs to a test cgroup: run it as root");
    }
    let cg = CgroupGuard::new("pgo");
    let (dir, _cleanup) = crate::bench_l7::scratch_dir("pgo")?;
    let (_backend, backend) = hello_process("127.0.0.1:0");
    println!("training {} with {secs} s of each load", sluice_integration::target_bin("sluice").display());
    for (protocol, vip) in [("http", "127.100.0.97"), ("http1", "127.100.0.98")] {
        if stopped() {
            bail!("interrupted; cleaned up");
        }
        let mut node = crate::bench_l7::start_node(&cg, backend, protocol, vip, &[], None);
        let url = format!("http://{vip}/");
        let h1 = wrk(cg.path(), &url, 1, 32, secs, false).map_err(anyhow::Error::msg)?;
        let h2 = crate::bench_l7::h2load(cg.path(), &url, secs, &dir.join("h2load.log"))?;
        println!(
            "service protocol {protocol}: HTTP/1.1 {:.0} req/s, h2c {:.0} req/s",
            h1.requests_per_sec, h2.requests_per_sec
        );
        if h1.errors + h2.errors > 0 || h1.requests_per_sec < 1.0 || h2.requests_per_sec < 1.0 {
            bail!(
                "requests failed during training ({} HTTP/1.1, {} h2c errors): fix that before building with this profile",
                h1.errors,
                h2.errors
            );
        }
        let status = node.stop_with(Signal::SIGTERM);
        if !status.success() {
            bail!("the node exited with {status} on SIGTERM: its profile may be missing\n{}", node.log());
        }
    }
    Ok(())
}
