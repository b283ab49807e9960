//! The hybrid post-quantum key exchange group X25519MLKEM768 (TLS code point 0x11ec,
//! draft-ietf-tls-ecdhe-mlkem), which ztunnel's aws-lc build offers and, under its
//! `COMPLIANCE_POLICY=pqc`, offers alone. rustls' ring provider has no ML-KEM, so the
//! group is assembled here from RustCrypto's `ml-kem` (FIPS 203) and ring's X25519.
//!
//! Wire format (both halves fixed-size, ML-KEM first):
//! - client share: the ML-KEM-768 encapsulation key (1,184 bytes) ‖ an X25519 public
//!   key (32);
//! - server share: the ML-KEM-768 ciphertext (1,088) ‖ an X25519 public key (32);
//! - shared secret: the ML-KEM shared key (32) ‖ the X25519 shared secret (32).
//!
//! The secret stays as strong as X25519 whatever ML-KEM's strength: both are needed
//! to derive the handshake keys.

use kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use ring::agreement;
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

type EncapsulationKey = <MlKem768 as KemCore>::EncapsulationKey;
type DecapsulationKey = <MlKem768 as KemCore>::DecapsulationKey;

const EK_LEN: usize = 1184;
const CT_LEN: usize = 1088;
const X25519_LEN: usize = 32;

/// X25519MLKEM768, for [`super::provider`]'s key exchange groups.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

#[derive(Debug)]
struct X25519MlKem768;

impl SupportedKxGroup for X25519MlKem768 {
    /// The client's half: a fresh ML-KEM key pair and X25519 key.
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let (dk, ek) = MlKem768::generate(&mut rand_core::OsRng);
        let x25519 = X25519::generate()?;
        let mut share = ek.as_bytes().to_vec();
        share.extend_from_slice(x25519.public.as_ref());
        Ok(Box::new(ClientExchange { dk, x25519, share }))
    }

    /// The server's half: encapsulates to the client's key, agrees with its X25519 key.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        if client_share.len() != EK_LEN + X25519_LEN {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let (ek_bytes, peer_x25519) = client_share.split_at(EK_LEN);
        let encoded = ml_kem::Encoded::<EncapsulationKey>::try_from(ek_bytes).map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let ek = EncapsulationKey::from_bytes(&encoded);
        // FIPS 203's input check: every coefficient below q, i.e. the key re-encodes
        // to the bytes it came from.
        if ek.as_bytes().as_slice() != ek_bytes {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let (ct, kem_secret) = ek.encapsulate(&mut rand_core::OsRng).map_err(|()| Error::General("ML-KEM-768 encapsulation failed".into()))?;
        let x25519 = X25519::generate()?;
        let mut pub_key = ct.as_slice().to_vec();
        pub_key.extend_from_slice(x25519.public.as_ref());
        let x25519_secret = x25519.agree(peer_x25519)?;
        Ok(CompletedKeyExchange { group: NamedGroup::X25519MLKEM768, pub_key, secret: joined(kem_secret.as_slice(), &x25519_secret) })
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

struct ClientExchange {
    dk: DecapsulationKey,
    x25519: X25519,
    share: Vec<u8>,
}

impl ActiveKeyExchange for ClientExchange {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        if server_share.len() != CT_LEN + X25519_LEN {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let (ct, peer_x25519) = server_share.split_at(CT_LEN);
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ct).map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        // ML-KEM decapsulation never fails on a well-sized ciphertext (implicit rejection).
        let kem_secret = self.dk.decapsulate(&ct).map_err(|()| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let x25519_secret = self.x25519.agree(peer_x25519)?;
        Ok(joined(kem_secret.as_slice(), &x25519_secret))
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

/// An ephemeral X25519 key (ring).
struct X25519 {
    private: agreement::EphemeralPrivateKey,
    public: agreement::PublicKey,
}

impl X25519 {
    fn generate() -> Result<Self, Error> {
        let rng = ring::rand::SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).map_err(|_| Error::FailedToGetRandomBytes)?;
        let public = private.compute_public_key().map_err(|_| Error::FailedToGetRandomBytes)?;
        Ok(X25519 { private, public })
    }

    fn agree(self, peer: &[u8]) -> Result<Vec<u8>, Error> {
        agreement::agree_ephemeral(self.private, &agreement::UnparsedPublicKey::new(&agreement::X25519, peer), |secret| secret.to_vec())
            .map_err(|_| PeerMisbehaved::InvalidKeyShare.into())
    }
}

fn joined(kem_secret: &[u8], x25519_secret: &[u8]) -> SharedSecret {
    let mut secret = Vec::with_capacity(kem_secret.len() + x25519_secret.len());
    secret.extend_from_slice(kem_secret);
    secret.extend_from_slice(x25519_secret);
    SharedSecret::from(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_derive_the_same_secret_and_bad_shares_are_refused() {
        let client = X25519MLKEM768.start().unwrap();
        assert_eq!(client.pub_key().len(), EK_LEN + X25519_LEN);
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        assert_eq!(server.pub_key.len(), CT_LEN + X25519_LEN);
        let server_secret = server.secret.secret_bytes().to_vec();
        assert_eq!(server_secret.len(), 64);
        assert_eq!(client.complete(&server.pub_key).unwrap().secret_bytes(), server_secret.as_slice());

        // Wrong lengths, and an encapsulation key with a coefficient ≥ q (all ones).
        assert!(X25519MLKEM768.start_and_complete(&[0; 32]).is_err());
        let mut bad = vec![0xff; EK_LEN];
        bad.extend_from_slice(&[9; X25519_LEN]);
        assert!(X25519MLKEM768.start_and_complete(&bad).is_err());
        assert!(X25519MLKEM768.start().unwrap().complete(&server.pub_key[..100]).is_err());
    }
}
