use std::{io, net::SocketAddr};

/// Why a connection was not (fully) served. Messages name the connection's
/// service and addresses so a log line is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "no original destination recorded for {peer} -> {local}: only connections redirected by Sluice's kernel programs are served on the proxy port"
    )]
    NoOriginalDst { peer: SocketAddr, local: SocketAddr },
    #[error("{orig} is not a mesh service address in the current config (was it removed by a reload?)")]
    UnknownService { orig: SocketAddr },
    #[error("service {service} ({orig}) has no endpoints; add some under `endpoints:`")]
    NoEndpoints { service: String, orig: SocketAddr },
    #[error("every endpoint of service {service} failed to connect: {detail}")]
    UpstreamUnavailable { service: String, detail: String },
    #[error("the node of the endpoint refused the connection by authorization: {detail}")]
    Denied { detail: String },
    #[error("cannot bind the proxy listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}
