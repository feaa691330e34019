use super::*;

fn identity(dir: &Path, ttl: Duration) -> Identity {
    Identity {
        trust_domain: "test.local".into(),
        cert_ttl: ttl,
        source: CertSource::BuiltinCa { dir: dir.to_path_buf() },
        ..Identity::default()
    }
}

#[test]
fn issued_certificates_carry_the_spiffe_id_and_renew_at_half_life() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CertStore::open(&identity(dir.path(), Duration::from_secs(2))).expect("store");
    assert!(dir.path().join(CA_CERT).exists() && dir.path().join(CA_KEY).exists());
    let id: Arc<str> = "spiffe://test.local/ns/default/sa/web".into();
    let first = store.certified(&id).expect("a certificate");
    assert_eq!(spiffe_id(&first.cert[0]).as_deref(), Some(&*id));
    let again = store.certified(&id).expect("a certificate");
    assert!(Arc::ptr_eq(&first, &again), "fresh certificates are reused");
    std::thread::sleep(Duration::from_millis(1100));
    let renewed = store.certified(&id).expect("a certificate");
    assert!(!Arc::ptr_eq(&first, &renewed), "renewed past half its life");
    assert_ne!(first.cert[0], renewed.cert[0]);
    assert_eq!(store.stats.issued.load(Relaxed), 1);
    assert_eq!(store.stats.renewed.load(Relaxed), 1);
    // A second store on the same folder uses the same CA.
    let other = CertStore::open(&identity(dir.path(), Duration::from_secs(60))).expect("store");
    let c = other.certified(&id).expect("a certificate");
    let parsed = ParsedCertificate::try_from(&c.cert[0]).expect("parse");
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store.roots,
        &[],
        UnixTime::now(),
        store.provider.signature_verification_algorithms.all,
    )
    .expect("signed by the shared CA");
}

#[test]
fn a_bad_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(CA_CERT), "not a certificate").expect("write");
    std::fs::write(dir.path().join(CA_KEY), "not a key").expect("write");
    let e = CertStore::open(&identity(dir.path(), Duration::from_secs(60))).expect_err("refused");
    let msg = e.to_string();
    assert!(msg.contains("ca-key.pem") && msg.contains("PEM"), "{msg}");
}

#[test]
fn files_paths_refuse_traversal() {
    let d = Path::new("/certs");
    assert_eq!(
        files_paths(d, "spiffe://td/ns/prod/sa/web"),
        Some((PathBuf::from("/certs/prod/web/cert.pem"), PathBuf::from("/certs/prod/web/key.pem")))
    );
    assert_eq!(files_paths(d, "spiffe://td/ns/../sa/web"), None);
    assert_eq!(files_paths(d, "spiffe://td/ns/a/sa/b/c"), None);
}
