//! Command-line arguments.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::Failure;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sidecarless service-mesh data plane for Linux")]
pub(crate) struct Cli {
    /// Log filter (tracing EnvFilter syntax); SLUICE_LOG overrides it.
    /// Release builds log down to `debug` (trace-level events are compiled out).
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the node agent: kernel redirection plus the proxy.
    Node(NodeArgs),
    /// Work with mesh config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Tell whether this host can run Sluice (exit 3 if not).
    Check,
    /// Show the kernel counters and service addresses of a node.
    Status(StatusArgs),
    /// Manage Sluice's eBPF state.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
    /// Workload certificates: a development CA, and certificates for
    /// workloads outside the mesh (or for testing a node's mesh port).
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// The demo: two nodes (network namespaces), three services in their
    /// own cgroups, traffic, a live view, one trace; all removed at the end.
    Demo(DemoArgs),
    /// A guided walk-through of the basics: one connection redirected, its
    /// original destination recovered, a reload.
    Tour(TourArgs),
    /// (used by the demo) One of its services or its load generator.
    #[command(hide = true)]
    DemoApp(crate::demo::AppArgs),
    /// (used by the tour) Join a cgroup, connect, send a line, print the reply.
    #[command(hide = true)]
    DemoClient(DemoClientArgs),
    /// (used by the node's zero-hop self-test) Join a cgroup and exchange
    /// data with a zero-hop service address.
    #[command(hide = true)]
    ProbeZeroHop(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    #[arg(long)]
    pub cgroup: PathBuf,
    pub addr: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a config file; prints file:line:column and the fix on error.
    Validate { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Create a CA (ca.pem, ca-key.pem) in a folder, as `identity.ca_dir` would.
    Ca {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a certificate for a SPIFFE ID with the CA in a folder.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// e.g. spiffe://cluster.local/ns/default/sa/frontend
        #[arg(long)]
        id: String,
        /// Certificate chain (PEM) to write.
        #[arg(long)]
        cert: PathBuf,
        /// Private key (PEM) to write, mode 0600.
        #[arg(long)]
        key: PathBuf,
        /// Lifetime, e.g. 1h or 30m.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BpfCommand {
    /// Remove every pin and attachment Sluice owns (safe to run twice).
    Cleanup {
        /// Only this node instance's.
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Mesh config (YAML); watched for changes.
    #[arg(long)]
    pub config: PathBuf,
    /// The cgroup (v2) whose processes are in the mesh, absolute or relative to the cgroup2 mount.
    #[arg(long, required_unless_present = "explicit")]
    pub cgroup: Option<PathBuf>,
    /// No kernel programs, no root: the proxy listens on the service
    /// addresses itself (127.x, ports of 1024 and up without root) and
    /// applications dial them as usual. No redirection, zero-hop, splicing,
    /// identities or node-to-node mTLS.
    #[arg(long)]
    pub explicit: bool,
    /// This node's name in the config's `nodes:` (default: the host name).
    /// Endpoints of other nodes are reached over mutual TLS through theirs.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Names this node's pins and lock; one live node per instance.
    #[arg(long, default_value = "node")]
    pub instance: String,
    /// The proxy's port on 127.0.0.1 and ::1 (0: any free port).
    #[arg(long, default_value_t = 15001)]
    pub proxy_port: u16,
    /// How often the config file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub watch_interval_ms: u64,
    /// How long shutdown waits for open connections, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub drain_ms: u64,
    /// Proxy worker threads, each with its own listeners (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How the kernel picks a worker for a new connection.
    #[arg(long, value_enum, default_value_t = WorkerBalance::Hash)]
    pub worker_balance: WorkerBalance,
    /// When the proxy is dead: `open` sends connections straight to their
    /// original destination, `closed` refuses them.
    #[arg(long, value_enum, default_value_t = FailModeArg::Open)]
    pub fail_mode: FailModeArg,
    /// The proxy counts as dead when its heartbeat (every 100 ms) is older than this.
    #[arg(long, default_value_t = 500)]
    pub liveness_timeout_ms: u64,
    /// Replace the running node of this instance without refusing a connection:
    /// adopt its kernel programs, start workers beside its own, then tell it to
    /// drain and exit.
    #[arg(long)]
    pub takeover: bool,
    /// Allow the L3/L4 policy on the interface of the default route (refused
    /// otherwise: a wrong rule there cuts the host off).
    #[arg(long)]
    pub policy_allow_uplink: bool,
    /// Admin listener on 127.0.0.1 (/ready, /live, /metrics); 0: any free port.
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// How long protocol detection waits for a client's first bytes on `auto`
    /// ports before forwarding the connection as opaque TCP (server-first protocols).
    #[arg(long, default_value_t = 100)]
    pub detect_timeout_ms: u64,
    /// An HTTP/1 request head must arrive within this (slow-header attacks).
    #[arg(long, default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// Largest HTTP/1 request head and HTTP/2 header list, in bytes.
    #[arg(long, default_value_t = 32 * 1024)]
    pub http_max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request (more: 431).
    #[arg(long, default_value_t = 100)]
    pub http_max_headers: usize,
    /// Concurrent streams per HTTP/2 client connection.
    #[arg(long, default_value_t = 1024)]
    pub h2_max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may reset before the proxy accepted them
    /// (rapid-reset protection); more close the connection.
    #[arg(long, default_value_t = 100)]
    pub h2_max_pending_resets: usize,
    /// In-kernel splicing (sk_skb) of opaque TCP connections: `auto` turns it
    /// on if the start-up self-test passes on this kernel, `off` (the
    /// default) never. Off by default: on this machine it lowers bulk
    /// throughput and, under heavy concurrency, the kernel has stopped some
    /// data short (Sluice then resets the connection rather than truncate it).
    #[arg(long, value_enum, default_value_t = FastPath::Off)]
    pub splice: FastPath,
    /// sk_msg acceleration of local app <-> proxy pairs (sends go straight
    /// into the peer socket, skipping loopback TCP/IP): `auto` turns it on if
    /// the start-up self-test passes, `off` (the default) never. Not with
    /// `--splice auto` (a socket cannot be on both paths).
    #[arg(long, value_enum, default_value_t = FastPath::Off)]
    pub sk_msg: FastPath,
    /// Zero-hop L4 for the service ports that ask for it (`zero_hop: true`):
    /// `auto` (the default) turns it on if the start-up self-test passes;
    /// `off` sends those connections through the proxy.
    #[arg(long, value_enum, default_value_t = FastPath::Auto)]
    pub zero_hop: FastPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FastPath {
    /// On when the start-up self-test passes.
    Auto,
    Off,
    /// For tests: the self-test fails on purpose (proves the fallback).
    #[value(hide = true)]
    FailSelfTest,
    /// For benchmarks only: on without the self-test (sk_msg).
    #[value(hide = true, name = "unsafe-no-self-test")]
    UnsafeNoSelfTest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WorkerBalance {
    /// Flow hash over the active workers.
    Hash,
    /// The worker with the fewest open connections.
    LeastLoaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FailModeArg {
    Open,
    Closed,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[arg(long, default_value = "node")]
    pub instance: String,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long traffic runs before the summary.
    #[arg(long, default_value = "30s")]
    pub duration: humantime::Duration,
    /// Run until Ctrl-C instead (and print how to try the mesh yourself).
    #[arg(long)]
    pub keep_running: bool,
    /// Shopper requests per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Where spans go when OTEL_EXPORTER_OTLP_ENDPOINT is not set (OTLP/JSON
    /// lines; kept) [default: /tmp/sluice-demo-traces.jsonl, with the user id
    /// in the name when not root].
    #[arg(long)]
    pub traces: Option<PathBuf>,
}

impl DemoArgs {
    pub fn traces_file(&self) -> PathBuf {
        self.traces.clone().unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            let name = if uid.is_root() {
                "sluice-demo-traces.jsonl".into()
            } else {
                format!("sluice-demo-traces-{uid}.jsonl")
            };
            std::env::temp_dir().join(name)
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct TourArgs {
    /// After the walk-through, keep the mesh running until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoClientArgs {
    #[arg(long)]
    pub cgroup: PathBuf,
    pub addr: String,
    pub message: String,
}

pub(crate) fn validate(file: &Path) -> Result<(), Failure> {
    let config = sluice_mesh_config::load(file)?;
    let addrs = config.service_addrs().len();
    let endpoints: usize = config.services.iter().map(|s| s.endpoints.len()).sum();
    println!(
        "{}: valid ({} services, {} service addresses, {} endpoints, {} routes)",
        file.display(),
        config.services.len(),
        addrs,
        endpoints,
        config.routes.len()
    );
    let t = &config.telemetry;
    if let Some(tr) = &t.tracing {
        println!(
            "  tracing: {} over {}, sampling {}",
            tr.endpoint.as_deref().unwrap_or("endpoint from OTEL_EXPORTER_OTLP_ENDPOINT"),
            tr.protocol.map_or("the OTEL_EXPORTER_OTLP_PROTOCOL protocol", |p| p.name()),
            tr.sampling().map_or("from OTEL_TRACES_SAMPLER_ARG".to_string(), |r| r.to_string()),
        );
    }
    if let Some(a) = &t.access_log {
        let to = a.path.as_ref().map_or("stdout".to_string(), |p| p.display().to_string());
        println!("  access log: {} to {to}", format!("{:?}", a.format).to_lowercase());
    }
    Ok(())
}

/// `sluice cert ...`.
pub(crate) fn cert(command: CertCommand) -> Result<(), Failure> {
    use crate::exit;
    match command {
        CertCommand::Ca { dir, trust_domain } => match sluice_proxy::tls::create_ca(&dir, &trust_domain) {
            Ok(true) => {
                println!("CA for trust domain {trust_domain} in {}", dir.display());
                Ok(())
            }
            Ok(false) => Err(Failure::new(
                exit::BAD_INPUT,
                format!("{} already holds a CA; remove it first or use another folder", dir.display()),
            )),
            Err(e) => Err(Failure::new(exit::FAILED, e)),
        },
        CertCommand::Issue { ca_dir, id, cert, key, ttl } => {
            sluice_proxy::tls::issue_with_ca_dir(&ca_dir, &id, *ttl, &cert, &key)
                .map_err(|e| Failure::new(exit::BAD_INPUT, e))?;
            println!("{id}: {} and {}", cert.display(), key.display());
            Ok(())
        }
    }
}
