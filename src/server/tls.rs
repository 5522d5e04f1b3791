//! Serving TLS with rustls: certificate chain and key from PEM files, h2 and
//! http/1.1 offered by ALPN, reloaded on SIGHUP or when the files change,
//! without dropping connections (new handshakes get the new certificate).

use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;

pub use crate::config::TlsFiles;

#[derive(Debug)]
struct CurrentCert {
    key: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().ok().map(|k| Arc::clone(&k))
    }
}

/// Why the certificate or key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} does not match {}: {source}", key.display(), cert.display())]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    fn pem(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
        move |source| TlsError::Pem {
            path: path.to_owned(),
            source,
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(pem(&files.cert))?
        .collect::<Result<_, _>>()
        .map_err(pem(&files.cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem(&files.key))?;
    let signing = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
            source,
        })?;
    Ok(certified)
}

/// Builds the acceptor and starts the reloader.
/// `poll`: how often the files are checked for changes.
pub fn acceptor(files: TlsFiles, poll: Duration) -> Result<TlsAcceptor, TlsError> {
    let current = Arc::new(CurrentCert {
        key: RwLock::new(Arc::new(load(&files)?)),
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload_forever(files, current, poll));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

async fn reload_forever(files: TlsFiles, current: Arc<CurrentCert>, poll: Duration) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = (modified(&files.cert), modified(&files.key));
    loop {
        let signalled = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(poll) => false,
        };
        let now = (modified(&files.cert), modified(&files.key));
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match load(&files) {
            Ok(key) => {
                if let Ok(mut slot) = current.key.write() {
                    *slot = Arc::new(key);
                }
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            // Keep serving the old certificate; a half-written pair is
            // retried at the next change or poll.
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one")
            }
        }
    }
}
