//! TLS for the Kafka tests: a throw-away CA with a server certificate for the broker's test
//! address ([`TestPki`]), and a TLS-terminating proxy ([`TlsProxy`]) in front of the broker,
//! because Tansu 0.6 accepts `--cert`/`--key` but serves plain TCP only (its clap group makes
//! the two flags exclusive, and the TLS acceptor it builds is never used).
//!
//! The proxy runs on a thread that joined the namespace it listens in; dropping it stops it and
//! closes every connection. It counts completed and failed handshakes, so a test can tell a
//! client that was refused at the TLS layer from one that never came.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_openssl::SslStream;

use crate::netns::Netns;
use crate::server_thread::ServerThread;
use crate::services::TempDir;

/// A CA and a server certificate for one IP address, as PEM files in a temp dir (removed on
/// drop).
pub struct TestPki {
    dir: TempDir,
}

fn key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// A certificate valid from a day ago (clock skew) for two days.
fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ip: Option<IpAddr>,
) -> Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let (from, until) = (
        Asn1Time::from_unix(now - 86_400)?,
        Asn1Time::from_unix(now + 2 * 86_400)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&until)?;
    match issuer {
        None => {
            b.set_issuer_name(&name)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
        }
        Some((ca, _)) => {
            b.set_issuer_name(ca.subject_name())?;
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_agreement()
                    .build()?,
            )?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            if let Some(ip) = ip {
                let san = SubjectAlternativeName::new()
                    .ip(&ip.to_string())
                    .build(&b.x509v3_context(Some(ca), None))?;
                b.append_extension(san)?;
            }
        }
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256())?;
    Ok(b.build())
}

impl TestPki {
    /// A fresh CA (never in any system store) and a certificate for `ip` signed by it.
    pub fn new(ip: IpAddr) -> Result<TestPki> {
        let dir = TempDir::new("pki")?;
        let ca_key = key()?;
        let ca = cert("meshprobe test CA", &ca_key, None, None)?;
        let srv_key = key()?;
        let srv = cert(&ip.to_string(), &srv_key, Some((&ca, &ca_key)), Some(ip))?;
        let p = TestPki { dir };
        std::fs::write(p.ca_file(), ca.to_pem()?)?;
        std::fs::write(p.cert_file(), srv.to_pem()?)?;
        std::fs::write(p.key_file(), srv_key.private_key_to_pem_pkcs8()?)?;
        Ok(p)
    }

    /// The CA certificate (KAFKA_SSL_CA_FILE of the clients).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's key.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The directory holding the files (for other test files, e.g. a password).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Handshakes seen by a [`TlsProxy`].
#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// A TLS-terminating proxy; see the module docs.
pub struct TlsProxy {
    listen: SocketAddr,
    counts: Arc<Counts>,
    /// Dropped last: stops and joins the server.
    _server: ServerThread,
}

impl TlsProxy {
    /// Listens on `listen` inside `ns` with `pki`'s server certificate, and forwards what each
    /// TLS connection carries to `upstream` in plain TCP.
    pub fn start(
        ns: &Netns,
        listen: SocketAddr,
        upstream: SocketAddr,
        pki: &TestPki,
    ) -> Result<TlsProxy> {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        acceptor.set_certificate_chain_file(pki.cert_file())?;
        acceptor.set_private_key_file(pki.key_file(), openssl::ssl::SslFiletype::PEM)?;
        acceptor.check_private_key()?;
        let acceptor = Arc::new(acceptor.build());
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let server = ServerThread::start(ns, "the TLS proxy", listen, move |listener, stop| {
            accept_loop(listener, upstream, acceptor, c, stop)
        })?;
        Ok(TlsProxy {
            listen,
            counts,
            _server: server,
        })
    }

    /// `addr:port` (brackets for IPv6), as KAFKA_BOOTSTRAP_SERVERS wants it.
    pub fn bootstrap(&self) -> String {
        self.listen.to_string()
    }

    /// Completed TLS handshakes so far.
    pub fn handshakes(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    /// Connections closed before or during a failed TLS handshake (a client that did not trust
    /// the certificate, or spoke plain Kafka).
    pub fn failed_handshakes(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }
}

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    acceptor: Arc<SslAcceptor>,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((down, _)) = r else { continue };
                tasks.spawn(relay(down, upstream, acceptor.clone(), counts.clone()));
            }
            // Reap finished relays so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Dropping the set aborts every relay: their connections close.
    tasks.abort_all();
}

async fn relay(down: TcpStream, upstream: SocketAddr, acceptor: Arc<SslAcceptor>, c: Arc<Counts>) {
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(mut tls) = SslStream::new(ssl, down) else {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut tls).accept()).await {
        Ok(Ok(())) => c.ok.fetch_add(1, Ordering::Relaxed),
        _ => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
}
