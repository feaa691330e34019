//! The demo without root: explicit mode (no kernel programs).

use crate::{Failure, cli::DemoArgs, exit};

use super::Stop;

pub(crate) fn run(_args: &DemoArgs, _stop: &Stop) -> Result<(), Failure> {
    Err(Failure::new(
        exit::UNSUPPORTED,
        "the demo attaches eBPF programs to cgroups and creates network namespaces, which needs root: run `sudo ./demo.sh` (or `sudo sluice demo`)",
    ))
}
