//! Checks of the PEM a TLS client is given: a CA to verify the scheduler against
//! ([`ClientBuilder::ca_certificate_pem`](crate::ClientBuilder::ca_certificate_pem)) and a client
//! certificate with its key ([`ClientBuilder::client_identity`](crate::ClientBuilder::client_identity)).
//!
//! A bad input is refused with its reason before any connection is made, instead of failing
//! every handshake (or, for a CA, being silently ignored). Programs that read these from files
//! (the CLI, the agent) call the checks themselves to name the flag and the file.

use std::fmt;

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    sign::CertifiedKey,
};

/// Which PEM input of the TLS settings a [`PemError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemInput {
    /// The CA the scheduler's certificate must chain to.
    Ca,
    /// The client certificate chain (leaf first).
    ClientCert,
    /// The client certificate's private key.
    ClientKey,
}

impl fmt::Display for PemInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemInput::Ca => "CA certificate",
            PemInput::ClientCert => "client certificate",
            PemInput::ClientKey => "client key",
        })
    }
}

/// A PEM input that cannot be used: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input}: {message}")]
pub struct PemError {
    /// The input at fault.
    pub input: PemInput,
    /// Why (never the key itself).
    pub message: String,
}

fn error(input: PemInput, message: impl Into<String>) -> PemError {
    PemError {
        input,
        message: message.into(),
    }
}

/// Every certificate of a PEM text; at least one.
fn certificates(input: PemInput, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(input, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(input, "no certificate found in the PEM"));
    }
    Ok(certs)
}

/// Checks a PEM CA bundle: at least one certificate, each usable as a trust anchor.
pub fn check_ca(pem: &[u8]) -> Result<(), PemError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(PemInput::Ca, pem)? {
        roots
            .add(cert)
            .map_err(|e| error(PemInput::Ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

/// Checks a client certificate chain and its private key (both PEM): at least one certificate,
/// a private key (PKCS#8, PKCS#1 or SEC1), and the key the leaf certificate's.
pub fn check_client_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), PemError> {
    let chain = certificates(PemInput::ClientCert, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            error(PemInput::ClientKey, "no private key found in the PEM")
        }
        e => error(PemInput::ClientKey, format!("bad PEM: {e}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        error(
            PemInput::ClientKey,
            format!("not the private key of the client certificate ({e})"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/tls")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn a_ca_needs_a_certificate() {
        check_ca(&data("ca.pem")).unwrap();
        for bad in [&b""[..], b"not PEM at all", &data("client.key")] {
            let e = check_ca(bad).unwrap_err();
            assert_eq!(e.input, PemInput::Ca);
            assert_eq!(
                e.to_string(),
                "CA certificate: no certificate found in the PEM"
            );
        }
    }

    #[test]
    fn a_client_identity_needs_a_certificate_and_its_own_key() {
        check_client_identity(&data("client.pem"), &data("client.key")).unwrap();
        check_client_identity(&data("client2.pem"), &data("client2.key")).unwrap();

        let e = check_client_identity(b"", &data("client.key")).unwrap_err();
        assert_eq!(e.input, PemInput::ClientCert);
        assert_eq!(
            e.to_string(),
            "client certificate: no certificate found in the PEM"
        );
        let e = check_client_identity(&data("client.pem"), &data("client.pem")).unwrap_err();
        assert_eq!(e.input, PemInput::ClientKey);
        assert_eq!(e.to_string(), "client key: no private key found in the PEM");
        let e = check_client_identity(&data("client.pem"), &data("client2.key")).unwrap_err();
        assert_eq!(e.input, PemInput::ClientKey);
        assert!(
            e.to_string()
                .starts_with("client key: not the private key of the client certificate"),
            "{e}"
        );
        // The key's bytes never appear in a message.
        let key = String::from_utf8(data("client2.key")).unwrap();
        let body = key.lines().nth(1).unwrap();
        assert!(!e.to_string().contains(body));
    }
}
