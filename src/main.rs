//! `sluice`: the one binary. Parses arguments, runs a subcommand, maps errors to
//! exit codes. The work lives in the library crates and the modules below.

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod check;
mod cli;
mod demo;
mod explicit;
mod fastpath;
mod logging;
mod metrics;
mod node;
mod otel;
mod status;
mod tour;

use cli::{BpfCommand, Cli, Command, ConfigCommand};

/// mimalloc: the proxy allocates and frees small objects on every request
/// (headers, futures, body frames); glibc malloc was 4-5% of a node's CPU
/// under load, mostly in its free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 fine, 1 failed while running, 2 bad input (config, arguments),
/// 3 this host cannot run Sluice.
pub(crate) mod exit {
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const UNSUPPORTED: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let result = match cli.command {
        Command::Node(args) => node::run(args),
        Command::Config { command: ConfigCommand::Validate { file } } => cli::validate(&file),
        Command::Check => check::run(),
        Command::Cert { command } => cli::cert(command),
        Command::Status(args) => status::run(args),
        Command::Bpf { command: BpfCommand::Cleanup { instance } } => status::cleanup(instance.as_deref()),
        Command::Demo(args) => demo::run(args),
        Command::Tour(args) => tour::run(args),
        Command::DemoApp(args) => demo::app_main(args),
        Command::DemoClient(args) => tour::client_main(args),
        Command::ProbeZeroHop(args) => fastpath::probe_zero_hop(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A failure for the user: what to print and which exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn new(code: u8, message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), code }
    }
}

impl From<sluice_mesh_config::ConfigError> for Failure {
    fn from(e: sluice_mesh_config::ConfigError) -> Self {
        Failure::new(exit::BAD_INPUT, e)
    }
}

impl From<sluice_redirector::Error> for Failure {
    fn from(e: sluice_redirector::Error) -> Self {
        use sluice_redirector::Error as E;
        let code = match e {
            E::NotRoot | E::NoCgroup2 => exit::UNSUPPORTED,
            E::CgroupMissing { .. } | E::NotCgroup2 { .. } | E::RootCgroup { .. } | E::InstanceName(_) => {
                exit::BAD_INPUT
            }
            _ => exit::FAILED,
        };
        Failure::new(code, error_chain(&e))
    }
}

/// An error and its causes on one line: aya's errors keep the errno in `source()`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

fn init_tracing(cli: &Cli) {
    // The demo talks to a person on stdout: only warnings and errors go to stderr.
    let default = match cli.command {
        Command::Demo(_) | Command::Tour(_) | Command::DemoApp(_) if cli.log == "info" => "warn",
        _ => &cli.log,
    };
    let filter =
        std::env::var("SLUICE_LOG").ok().filter(|f| tracing_subscriber::EnvFilter::try_new(f).is_ok());
    logging::init(filter.as_deref().unwrap_or(default), cli.log_json);
}
