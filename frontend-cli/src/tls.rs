//! TLS for QUIC between nodes, pinned to node ids.
//!
//! Each node presents its ed25519 public key as an RFC 7250 raw public key (no X.509, no CA, no
//! trust on first use). The dialing side names the node it expects in the TLS server name (the
//! node id's text form, which is a valid DNS label) and accepts only that key; the accepting side
//! requires a client key and accepts only ids in its peer list, so an unknown node fails the
//! handshake before it can open a stream or learn anything about the services. The ALPN value
//! carries the protocol version (`docs/protocol.md` §4).

use std::collections::BTreeSet;
use std::sync::Arc;

use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    PeerIncompatible, SignatureScheme,
};
use svcnet_core::identity::{NodeId, NodeKey};

/// ALPN protocol id: svcnet node protocol, version 1.
pub const ALPN: &[u8] = b"svcnet/1";

/// The crypto provider every svcnet TLS config uses: *ring*, which builds with a plain C compiler
/// (aws-lc-rs needs more tooling and time). rustls marks it deprecated because it lacks the
/// post-quantum key exchange; revisit when switching providers is cheap (docs/architecture.md).
///
/// AES-128-GCM is preferred over AES-256-GCM (the provider's first choice): it does 10 AES
/// rounds per block instead of 14, which is a measurable share of a bulk transfer (every QUIC
/// packet is sealed once and opened once), at the security level QUIC's own initial packets and
/// most TLS 1.3 deployments use.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The DER SubjectPublicKeyInfo of a node id: what the node presents as its raw public key.
pub fn node_spki(id: &NodeId) -> Vec<u8> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(id.as_bytes())
        .expect("a NodeId is always a valid ed25519 point");
    key.to_public_key_der()
        .expect("encoding an ed25519 public key cannot fail")
        .into_vec()
}

/// The node id in a raw public key, if it is a valid ed25519 SubjectPublicKeyInfo.
pub fn node_id_from_spki(der: &[u8]) -> Option<NodeId> {
    let key = ed25519_dalek::VerifyingKey::from_public_key_der(der).ok()?;
    NodeId::from_bytes(key.to_bytes()).ok()
}

/// The node id of the remote side of an established QUIC connection.
pub fn peer_node_id(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    node_id_from_spki(certs.first()?.as_ref())
}

fn certified_key(key: &NodeKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing = ed25519_dalek::SigningKey::from_bytes(&key.to_seed_bytes());
    let pkcs8 = signing
        .to_pkcs8_der()
        .map_err(|e| TlsError::General(format!("encoding the node key: {e}")))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()));
    let signer = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(node_spki(&key.node_id()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

/// TLS config for accepting connections: only `allowed` ids get in.
pub fn server_config(
    key: &NodeKey,
    allowed: Arc<BTreeSet<NodeId>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let ck = certified_key(key, &provider)?;
    let verifier = Arc::new(PeerVerifier {
        allowed,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(ck),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS config for dialing: the server must prove the id named in the server name.
pub fn client_config(key: &NodeKey) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let ck = certified_key(key, &provider)?;
    let verifier = Arc::new(ExpectedServerVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(ck),
        ));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS server name that makes the dialer expect `id`.
pub fn server_name_for(id: &NodeId) -> String {
    id.to_text()
}

fn verify_signature(
    message: &[u8],
    key: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, TlsError> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(key.as_ref()),
        dss,
        algorithms,
    )
}

/// The methods both verifiers share (the client- and server-side traits declare the same ones):
/// TLS 1.3 only, ed25519 only, raw public keys only.
macro_rules! raw_key_signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            Err(TlsError::PeerIncompatible(
                PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, TlsError> {
            verify_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }

        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

/// Accepts client keys of authorized peers.
#[derive(Debug)]
struct PeerVerifier {
    allowed: Arc<BTreeSet<NodeId>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let id = node_id_from_spki(end_entity.as_ref())
            .ok_or(TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allowed.contains(&id) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(node = %id, "refused a connection from a node that is not in [[peers]]");
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    raw_key_signature_methods!();
}

/// Accepts exactly the server key named by the server name.
#[derive(Debug)]
struct ExpectedServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let ServerName::DnsName(name) = server_name else {
            return Err(TlsError::General(
                "svcnet dials node ids, not addresses".into(),
            ));
        };
        let expected = NodeId::parse_text(name.as_ref())
            .map_err(|e| TlsError::General(format!("server name is not a node id: {e}")))?;
        let presented = node_id_from_spki(end_entity.as_ref())
            .ok_or(TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    raw_key_signature_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_rejects_garbage() {
        let id = NodeKey::from_seed([7; 32]).node_id();
        let spki = node_spki(&id);
        assert_eq!(spki.len(), 44, "12-byte ed25519 SPKI prefix + 32-byte key");
        assert_eq!(node_id_from_spki(&spki), Some(id));
        assert_eq!(node_id_from_spki(&spki[..43]), None);
        assert_eq!(node_id_from_spki(b"not a key"), None);
    }
}
