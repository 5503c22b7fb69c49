//! Encryption at rest for credentials: AES-256-GCM (ring) with a random nonce per
//! value, bound to the object it belongs to through the associated data.
//!
//! The key comes from `GNS_SECRET_KEY` (base64 of 32 bytes) or from
//! `<data-dir>/secret-key`, created with mode 0600 on first start.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a key could not be loaded or a value not decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key text is not base64 of 32 bytes.
    #[error("secret key must be base64 of 32 bytes (generate one with `openssl rand -base64 32`)")]
    BadKey,
    /// The key file could not be read or written.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Ciphertext did not authenticate: wrong key or tampered data.
    #[error("a stored secret could not be decrypted: wrong secret key, or the data was altered")]
    Decrypt,
    /// The system random source failed.
    #[error("system random number generator failed")]
    Random,
}

/// An AEAD key that seals and opens stored secrets.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// A box from 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A box from base64 key text (as in `GNS_SECRET_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = B64.decode(text.trim()).map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Self::from_bytes(&bytes)
    }

    /// A fresh random key, base64-encoded.
    pub fn generate_key_text() -> Result<String, CryptoError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Random)?;
        Ok(B64.encode(bytes))
    }

    /// Loads `<dir>/secret-key`, creating it (mode 0600) if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, CryptoError> {
        let path = dir.join("secret-key");
        let file_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = Self::generate_key_text()?;
                gns_files::write_private(&path, format!("{text}\n").as_bytes())
                    .map_err(file_err)?;
                Self::from_base64(&text)
            }
            Err(e) => Err(file_err(e)),
        }
    }

    /// Encrypts `plaintext`, binding it to `context` (e.g. the object key).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts what [`SecretBox::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = SecretBox::generate_key_text().expect("rng");
        let b = SecretBox::from_base64(&key).expect("key");
        let sealed = b.seal("cluster//east", b"token").expect("seal");
        assert!(!sealed.windows(5).any(|w| w == b"token"));
        assert_eq!(b.open("cluster//east", &sealed).expect("open"), b"token");
        assert!(
            b.open("cluster//west", &sealed).is_err(),
            "bound to its object"
        );
        let other =
            SecretBox::from_base64(&SecretBox::generate_key_text().expect("rng")).expect("key");
        assert!(
            other.open("cluster//east", &sealed).is_err(),
            "wrong key fails"
        );
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
    }
}
