//! The node's log output, and changing its level while it runs (the admin
//! API's `POST /logging`).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt};

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the subscriber: `filter` (SLUICE_LOG's syntax) to stderr, JSON or text.
pub(crate) fn init(filter: &str, json: bool) {
    let env = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(env);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(layer);
    let ok = if json {
        registry.with(fmt.json()).try_init().is_ok()
    } else {
        registry.with(fmt).try_init().is_ok()
    };
    if ok {
        let _ = CONTROL.set(Control { handle, current: Mutex::new(filter.to_string()) });
    }
}

/// The filter in force.
pub(crate) fn current() -> String {
    CONTROL.get().map(|c| c.current.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
}

/// Replaces the filter: a level (`debug`) or directives (`info,sluice_proxy=debug`).
pub(crate) fn set(filter: &str) -> Result<(), String> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err("empty filter: give a level (error, warn, info, debug, trace) or directives such as info,sluice_proxy=debug".into());
    }
    let env = EnvFilter::try_new(filter).map_err(|e| {
        format!("'{filter}' is not a log filter ({e}); give a level (error, warn, info, debug, trace) or directives such as info,sluice_proxy=debug")
    })?;
    let c = CONTROL.get().ok_or("logging is not initialised")?;
    c.handle.reload(env).map_err(|e| e.to_string())?;
    *c.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
    Ok(())
}
