//! Workload identities and mutual TLS between nodes.
//!
//! A workload's identity is a SPIFFE ID in its certificate's URI SAN
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`). The node
//! holds a certificate for each local workload it speaks for: it presents the
//! source workload's certificate when it connects to another node, and the
//! destination workload's (chosen by SNI) when it accepts. Certificates come
//! from a CA (Sluice's own, created on first use, or an external one) and are
//! renewed at half their life, when a handshake asks for one; or from files
//! issued elsewhere, read again when they change. Connections already
//! established are never touched by a renewal.
//!
//! Only TLS 1.3, with the ring provider's AEAD suites; the peer's chain must
//! end at the mesh's trust anchors, and its SPIFFE ID must be in the mesh's
//! trust domain (and, for a server, be the identity the client expected).

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use sluice_mesh_config::{CertSource, Identity, MeshConfig};

/// ALPN of the node-to-node port: HTTP/2 only.
pub const ALPN: &[u8] = b"h2";

/// The identity of a process in the mesh cgroup that is no endpoint of any
/// service, as Kubernetes gives pods without a service account.
pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {}: {reason}", path.display())]
    Bad { what: &'static str, path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io { what, path: path.to_path_buf(), source }
}

/// ring, TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| s.version() == &rustls::version::TLS13);
    Arc::new(p)
}

/// The SPIFFE ID in a certificate's URI SAN, if it has exactly one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok().flatten()?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

/// The trust domain of a SPIFFE ID.
pub fn trust_domain(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")?.split('/').next()
}

// ---------------------------------------------------------------- the CA

/// A CA that signs workload certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

impl Ca {
    /// Sluice's own CA in `dir`: loaded, or created (once, under a lock, so
    /// nodes starting together agree on one).
    fn builtin(dir: &Path, trust_domain: &str) -> Result<(Self, CertificateDer<'static>), TlsError> {
        if create_ca(dir, trust_domain)? {
            tracing::info!(dir = %dir.display(), "created the mesh CA (development use: keep ca-key.pem private)");
        }
        Self::external(&dir.join(CA_CERT), &dir.join(CA_KEY))
    }

    /// A CA given as certificate and key files.
    fn external(cert: &Path, key: &Path) -> Result<(Self, CertificateDer<'static>), TlsError> {
        let cert_pem = fs::read_to_string(cert).map_err(io("reading the CA certificate", cert))?;
        let key_pem = fs::read_to_string(key).map_err(io("reading the CA key", key))?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Bad {
            what: "the CA key",
            path: key.to_path_buf(),
            reason: format!("{e} (a PEM private key is expected)"),
        })?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Bad {
            what: "the CA certificate",
            path: cert.to_path_buf(),
            reason: format!("{e} (a PEM certificate is expected)"),
        })?;
        let issuer = Issuer::from_ca_cert_der(&der, key_pair).map_err(|e| TlsError::Bad {
            what: "the CA certificate",
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok((Self { issuer }, der))
    }

    fn issue(&self, id: &str, ttl: Duration) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("generating a key: {e}")))?;
        let mut p = CertificateParams::default();
        let uri = id.to_string().try_into().map_err(|e| TlsError::Other(format!("{id}: {e}")))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "sluice");
        p.distinguished_name = dn;
        let now = SystemTime::now();
        // A minute of slack for clocks that differ between nodes.
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + ttl).into();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(fastrand::u64(..).to_be_bytes().to_vec().into());
        let cert =
            p.signed_by(&key, &self.issuer).map_err(|e| TlsError::Other(format!("signing {id}: {e}")))?;
        Ok((cert, key))
    }
}

/// Creates Sluice's own CA (`ca.pem`, `ca-key.pem`) in `dir` unless it
/// holds one: once, under a lock, so nodes starting together agree on one.
/// Returns whether it created it.
pub fn create_ca(dir: &Path, trust_domain: &str) -> Result<bool, TlsError> {
    fs::create_dir_all(dir).map_err(io("creating the CA folder", dir))?;
    let lock_path = dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io("locking the CA folder", &lock_path))?;
    lock.lock().map_err(io("locking the CA folder", &lock_path))?;
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert.exists() || key.exists() {
        return Ok(false);
    }
    let (pem, key_pem) = new_ca(trust_domain)?;
    write_private(&key, key_pem.as_bytes())?;
    write_private(&cert, pem.as_bytes())?;
    Ok(true)
}

/// A new self-signed CA for `trust_domain`: (certificate PEM, key PEM).
fn new_ca(trust_domain: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("generating the CA key: {e}")))?;
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice");
    dn.push(DnType::CommonName, format!("Sluice mesh CA ({trust_domain})"));
    p.distinguished_name = dn;
    let uri = format!("spiffe://{trust_domain}").try_into().map_err(|e| TlsError::Other(format!("{e}")))?;
    p.subject_alt_names = vec![SanType::URI(uri)];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = p.self_signed(&key).map_err(|e| TlsError::Other(format!("signing the CA: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("writing", path))
}

/// Issues a certificate for `id` with the CA in `ca_dir` (as `identity.ca_dir`
/// has it) and writes the chain (leaf, CA) and the key (mode 0600). For
/// `sluice cert issue`.
pub fn issue_with_ca_dir(
    ca_dir: &Path,
    id: &str,
    ttl: Duration,
    cert_out: &Path,
    key_out: &Path,
) -> Result<(), TlsError> {
    if files_paths(Path::new("/"), id).is_none() {
        return Err(TlsError::Other(format!(
            "'{id}' is not a workload SPIFFE ID; write spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
        )));
    }
    let ca_path = ca_dir.join(CA_CERT);
    let (ca, _) = Ca::external(&ca_path, &ca_dir.join(CA_KEY))?;
    let (cert, key) = ca.issue(id, ttl)?;
    let ca_pem = fs::read_to_string(&ca_path).map_err(io("reading the CA certificate", &ca_path))?;
    fs::write(cert_out, format!("{}{ca_pem}", cert.pem())).map_err(io("writing", cert_out))?;
    write_private(key_out, key.serialize_pem().as_bytes())
}

// ---------------------------------------------------------------- the store

enum Source {
    Ca(Box<Ca>),
    Files(PathBuf),
}

struct Leaf {
    key: Arc<CertifiedKey>,
    /// Renew from here on (half the life).
    renew_at: SystemTime,
    /// Files: the modification times the certificate was read at.
    mtimes: Option<(SystemTime, SystemTime)>,
    checked: Instant,
}

/// Counters of the certificates the node holds.
#[derive(Debug, Default)]
pub struct CertStats {
    pub issued: AtomicU64,
    pub renewed: AtomicU64,
    pub failed: AtomicU64,
}

/// The certificates of the workloads this node speaks for.
pub struct CertStore {
    trust_domain: String,
    ttl: Duration,
    source: Source,
    roots: Arc<RootCertStore>,
    leaves: Mutex<HashMap<Arc<str>, Leaf>>,
    provider: Arc<CryptoProvider>,
    pub stats: CertStats,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("trust_domain", &self.trust_domain).field("ttl", &self.ttl).finish()
    }
}

impl CertStore {
    pub fn open(identity: &Identity) -> Result<Self, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        let source = match &identity.source {
            CertSource::BuiltinCa { dir } => {
                let (ca, der) = Ca::builtin(dir, &identity.trust_domain)?;
                roots.add(der).map_err(|e| TlsError::Other(format!("the CA in {}: {e}", dir.display())))?;
                Source::Ca(Box::new(ca))
            }
            CertSource::ExternalCa { cert, key } => {
                let (ca, der) = Ca::external(cert, key)?;
                roots.add(der).map_err(|e| TlsError::Bad {
                    what: "the CA certificate",
                    path: cert.clone(),
                    reason: e.to_string(),
                })?;
                Source::Ca(Box::new(ca))
            }
            CertSource::Files { trust_bundle, dir } => {
                let pem = fs::read(trust_bundle).map_err(io("reading the trust bundle", trust_bundle))?;
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| TlsError::Bad {
                        what: "the trust bundle",
                        path: trust_bundle.clone(),
                        reason: e.to_string(),
                    })?;
                    roots.add(c).map_err(|e| TlsError::Bad {
                        what: "the trust bundle",
                        path: trust_bundle.clone(),
                        reason: e.to_string(),
                    })?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Bad {
                        what: "the trust bundle",
                        path: trust_bundle.clone(),
                        reason: "holds no certificate".into(),
                    });
                }
                Source::Files(dir.clone())
            }
        };
        Ok(Self {
            trust_domain: identity.trust_domain.clone(),
            ttl: identity.cert_ttl,
            source,
            roots: Arc::new(roots),
            leaves: Mutex::default(),
            provider,
            stats: CertStats::default(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current certificate of `id`: issued on first use, renewed once
    /// past half its life (files: read again when they changed).
    pub fn certified(&self, id: &Arc<str>) -> Option<Arc<CertifiedKey>> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if let Some(l) = leaves.get_mut(id) {
            let fresh = match (&self.source, l.mtimes) {
                (Source::Ca(_), _) => now < l.renew_at,
                (Source::Files(dir), Some(m)) => {
                    if l.checked.elapsed() < Duration::from_secs(1) {
                        true
                    } else {
                        l.checked = Instant::now();
                        files_mtimes(dir, id) == Some(m)
                    }
                }
                (Source::Files(_), None) => false,
            };
            if fresh {
                return Some(Arc::clone(&l.key));
            }
        }
        let renewing = leaves.contains_key(id);
        match self.load(id) {
            Ok(leaf) => {
                let key = Arc::clone(&leaf.key);
                leaves.insert(Arc::clone(id), leaf);
                let c = if renewing { &self.stats.renewed } else { &self.stats.issued };
                c.fetch_add(1, Relaxed);
                tracing::debug!(identity = %id, renewing, "workload certificate ready");
                Some(key)
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Relaxed);
                tracing::warn!(identity = %id, error = %e, "no certificate for this identity");
                // An old certificate still valid beats none.
                leaves.get(id).map(|l| Arc::clone(&l.key))
            }
        }
    }

    fn load(&self, id: &str) -> Result<Leaf, TlsError> {
        match &self.source {
            Source::Ca(ca) => {
                let (cert, key) = ca.issue(id, self.ttl)?;
                let cert = cert.der().clone();
                let key_der = PrivateKeyDer::try_from(key.serialize_der())
                    .map_err(|e| TlsError::Other(format!("{id}: {e}")))?;
                let signer = self
                    .provider
                    .key_provider
                    .load_private_key(key_der)
                    .map_err(|e| TlsError::Other(format!("{id}: {e}")))?;
                Ok(Leaf {
                    key: Arc::new(CertifiedKey::new(vec![cert], signer)),
                    renew_at: SystemTime::now() + self.ttl / 2,
                    mtimes: None,
                    checked: Instant::now(),
                })
            }
            Source::Files(dir) => {
                let (cert_path, key_path) = files_paths(dir, id)
                    .ok_or_else(|| TlsError::Other(format!("{id} is not a workload identity")))?;
                let mtimes = files_mtimes(dir, id);
                let pem = fs::read(&cert_path).map_err(io("reading the certificate", &cert_path))?;
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| TlsError::Bad {
                        what: "the certificate",
                        path: cert_path.clone(),
                        reason: e.to_string(),
                    })?;
                let Some(leaf) = chain.first() else {
                    return Err(TlsError::Bad {
                        what: "the certificate",
                        path: cert_path,
                        reason: "holds no certificate".into(),
                    });
                };
                if spiffe_id(leaf).as_deref() != Some(id) {
                    return Err(TlsError::Bad {
                        what: "the certificate",
                        path: cert_path,
                        reason: format!("its URI SAN is not {id}"),
                    });
                }
                let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Bad {
                    what: "the key",
                    path: key_path.clone(),
                    reason: e.to_string(),
                })?;
                let signer = self.provider.key_provider.load_private_key(key).map_err(|e| TlsError::Bad {
                    what: "the key",
                    path: key_path,
                    reason: e.to_string(),
                })?;
                Ok(Leaf {
                    key: Arc::new(CertifiedKey::new(chain, signer)),
                    renew_at: SystemTime::UNIX_EPOCH,
                    mtimes,
                    checked: Instant::now(),
                })
            }
        }
    }

    /// Renews every certificate past half its life, whether or not a
    /// handshake asks for it (call it every [`CertStore::renew_interval`]).
    pub fn renew_due(&self) {
        let due: Vec<Arc<str>> = {
            let leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            let now = SystemTime::now();
            leaves
                .iter()
                .filter(|(_, l)| l.mtimes.is_none() && now >= l.renew_at)
                .map(|(k, _)| Arc::clone(k))
                .collect()
        };
        for id in due {
            let _ = self.certified(&id);
        }
    }

    /// How often [`CertStore::renew_due`] should run: a quarter of the life, at most a minute.
    pub fn renew_interval(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
    }
}

/// `<dir>/<namespace>/<service account>/{cert,key}.pem` for a SPIFFE ID.
fn files_paths(dir: &Path, id: &str) -> Option<(PathBuf, PathBuf)> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let (_, ns_kw, ns, sa_kw, sa) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if ns_kw != "ns" || sa_kw != "sa" || parts.next().is_some() || ns.contains("..") || sa.contains("..") {
        return None;
    }
    let d = dir.join(ns).join(sa);
    Some((d.join("cert.pem"), d.join("key.pem")))
}

fn files_mtimes(dir: &Path, id: &str) -> Option<(SystemTime, SystemTime)> {
    let (c, k) = files_paths(dir, id)?;
    Some((fs::metadata(c).ok()?.modified().ok()?, fs::metadata(k).ok()?.modified().ok()?))
}

// ---------------------------------------------------------------- identities

/// What the node knows of the mesh's identities: which SPIFFE ID each SNI
/// name stands for, and which cgroup holds which workload.
#[derive(Debug, Default)]
pub struct Identities {
    /// SNI name → SPIFFE ID, for every service's identity.
    by_sni: HashMap<String, Arc<str>>,
    /// Workload cgroups of this node (directories, then their descendants).
    cgroups: Vec<(PathBuf, Arc<str>)>,
    default_id: Arc<str>,
}

impl Identities {
    pub fn new(config: &MeshConfig, local_node: Option<&str>) -> Self {
        let id = &config.identity;
        let mut by_sni = HashMap::new();
        let mut cgroups = Vec::new();
        for s in &config.services {
            let spiffe: Arc<str> = id.spiffe_id(&s.namespace, &s.service_account).into();
            by_sni.insert(sni_name(&s.namespace, &s.service_account, &id.trust_domain), Arc::clone(&spiffe));
            for e in &s.endpoints {
                let local = e.node.is_none() || e.node.as_deref() == local_node;
                if let (true, Some(cg)) = (local, &e.cgroup) {
                    cgroups.push((cg.clone(), Arc::clone(&spiffe)));
                }
            }
        }
        let default_id: Arc<str> = id.spiffe_id(DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT).into();
        by_sni.insert(
            sni_name(DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT, &id.trust_domain),
            Arc::clone(&default_id),
        );
        Self { by_sni, cgroups, default_id }
    }

    pub fn by_sni(&self, sni: &str) -> Option<&Arc<str>> {
        self.by_sni.get(sni)
    }

    pub fn default_id(&self) -> &Arc<str> {
        &self.default_id
    }

    /// Cgroup id → identity for every workload cgroup and its descendants
    /// (the nearest workload cgroup wins).
    pub fn scan_cgroups(&self) -> HashMap<u64, Arc<str>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = HashMap::new();
        let mut sorted: Vec<&(PathBuf, Arc<str>)> = self.cgroups.iter().collect();
        // Shallow first, so a deeper (nearer) workload cgroup overwrites.
        sorted.sort_by_key(|(p, _)| p.components().count());
        for (dir, id) in sorted {
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                let Ok(meta) = fs::metadata(&d) else { continue };
                out.insert(meta.ino(), Arc::clone(id));
                if let Ok(rd) = fs::read_dir(&d) {
                    stack.extend(
                        rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()),
                    );
                }
            }
        }
        out
    }
}

/// The SNI name that asks a node for `ns/sa`'s certificate.
pub fn sni_name(namespace: &str, service_account: &str, trust_domain: &str) -> String {
    format!("{service_account}.{namespace}.{trust_domain}")
}

/// Which workload a local connection comes from, by the cgroup of the
/// process that connected.
#[derive(Debug)]
pub struct Workloads {
    pub identities: ArcSwap<Identities>,
    /// Cgroup id → identity, rescanned on a miss (at most once a second).
    cache: Mutex<(HashMap<u64, Arc<str>>, Instant)>,
}

impl Workloads {
    pub fn new(config: &MeshConfig, local_node: Option<&str>) -> Self {
        let ids = Identities::new(config, local_node);
        Self {
            cache: Mutex::new((ids.scan_cgroups(), Instant::now())),
            identities: ArcSwap::from_pointee(ids),
        }
    }

    /// A config reload: new services, new workload cgroups.
    pub fn apply(&self, config: &MeshConfig, local_node: Option<&str>) {
        let ids = Arc::new(Identities::new(config, local_node));
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = (ids.scan_cgroups(), Instant::now());
        self.identities.store(ids);
    }

    /// Scans the workload cgroups again if the last scan is older than
    /// `every`; returns whether what they map to changed (new cgroups).
    pub fn rescan_if_due(&self, every: Duration) -> bool {
        let mut w = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if w.1.elapsed() < every {
            return false;
        }
        let fresh = self.identities.load().scan_cgroups();
        w.1 = Instant::now();
        let changed = fresh != w.0;
        w.0 = fresh;
        changed
    }

    /// Workload cgroup id → identity, as last scanned.
    pub fn cgroups(&self) -> HashMap<u64, Arc<str>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The identity of the workload in cgroup `cgroup_id` (the default
    /// identity when it is in no workload's cgroup).
    pub fn workload(&self, cgroup_id: u64) -> Arc<str> {
        let mut w = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = w.0.get(&cgroup_id) {
            return Arc::clone(id);
        }
        if cgroup_id != 0 && w.1.elapsed() >= Duration::from_secs(1) {
            // A workload cgroup created after the config was read.
            w.0 = self.identities.load().scan_cgroups();
            w.1 = Instant::now();
            if let Some(id) = w.0.get(&cgroup_id) {
                return Arc::clone(id);
            }
        }
        Arc::clone(self.identities.load().default_id())
    }
}

// ---------------------------------------------------------------- rustls glue

/// Everything a node needs for mutual TLS.
pub struct MeshTls {
    pub store: Arc<CertStore>,
    pub workloads: Arc<Workloads>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<Arc<str>, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").field("store", &self.store).finish()
    }
}

fn rustls_error(what: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Other(format!("{what}: {e}"))
}

impl MeshTls {
    pub fn new(config: &MeshConfig, workloads: Arc<Workloads>) -> Result<Arc<Self>, TlsError> {
        let store = Arc::new(CertStore::open(&config.identity)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&store.roots),
            Arc::clone(&store.provider),
        )
        .build()
        .map_err(|e| TlsError::Other(format!("client verifier: {e}")))?;
        let resolver =
            Arc::new(ServerResolver { store: Arc::clone(&store), workloads: Arc::clone(&workloads) });
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&store.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error("server config"))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(Self { workloads, store, server: Arc::new(server), clients: Mutex::default() }))
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The client config that presents `source`'s certificate.
    pub fn client_config(&self, source: &Arc<str>) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(source) {
            return Ok(Arc::clone(c));
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            store: Arc::clone(&self.store),
            workloads: Arc::clone(&self.workloads),
        });
        let resolver = Arc::new(ClientResolver { store: Arc::clone(&self.store), id: Arc::clone(source) });
        let mut c = ClientConfig::builder_with_provider(Arc::clone(&self.store.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error("client config"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        c.alpn_protocols = vec![ALPN.to_vec()];
        let c = Arc::new(c);
        clients.insert(Arc::clone(source), Arc::clone(&c));
        Ok(c)
    }

    /// The SPIFFE ID a verified peer certificate carries, if it is one of this mesh's.
    pub fn peer_identity(&self, certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
        let id = spiffe_id(certs?.first()?)?;
        (trust_domain(&id) == Some(self.store.trust_domain())).then(|| id.into())
    }
}

/// Presents the destination workload's certificate, named by SNI.
#[derive(Debug)]
struct ServerResolver {
    store: Arc<CertStore>,
    workloads: Arc<Workloads>,
}

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let id = Arc::clone(self.workloads.identities.load().by_sni(hello.server_name()?)?);
        self.store.certified(&id)
    }
}

/// Presents the source workload's certificate.
struct ClientResolver {
    store: Arc<CertStore>,
    id: Arc<str>,
}

impl std::fmt::Debug for ClientResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientResolver").field("id", &self.id).finish()
    }
}

impl ResolvesClientCert for ClientResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.store.certified(&self.id)
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a server's chain against the mesh's trust anchors and its SPIFFE
/// ID against the one the SNI name stands for (no DNS names in SVIDs).
#[derive(Debug)]
struct SpiffeServerVerifier {
    store: Arc<CertStore>,
    workloads: Arc<Workloads>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let algs = &self.store.provider.signature_verification_algorithms;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.store.roots, intermediates, now, algs.all)?;
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::General("the mesh names servers by identity".into()));
        };
        let expected = self.workloads.identities.load().by_sni(name.as_ref()).cloned();
        let got = spiffe_id(end_entity);
        match (expected, got) {
            (Some(e), Some(g)) if *e == *g => Ok(ServerCertVerified::assertion()),
            (e, g) => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(WrongIdentity { expected: e.map(|e| e.to_string()), got: g })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config offers TLS 1.3 only: a TLS 1.2 handshake never gets here.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.store.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("server identity {got:?}, expected {expected:?}")]
struct WrongIdentity {
    expected: Option<String>,
    got: Option<String>,
}

#[cfg(test)]
mod tests;
