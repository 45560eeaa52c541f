//! Ed25519 trust root and signatures, in the plain formats `openssl` produces.
//!
//! - Public key file `<label>.pub`: base64 of the raw 32-byte key
//!   (`openssl pkey -in k.pem -pubout -outform DER | tail -c 32 | base64`).
//! - Signature file: base64 of the raw 64-byte signature
//!   (`openssl pkeyutl -sign -inkey k.pem -rawin -in MESSAGE | base64 -w0`).
//! - Private key (CLI only): base64 of the raw 32-byte seed, or an `openssl genpkey -algorithm
//!   Ed25519` PKCS#8 PEM.
//!
//! The signature that decides is over the wasm bytes; an artefact may carry an additional one
//! over its manifest ([`crate::artefact::signed_message`]).

use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use std::path::{Path, PathBuf};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a plugin's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A trust root is configured and the plugin carries no signature.
    #[error("no signature (a trust root is configured, so plugins must be signed)")]
    Missing,
    /// The signature file is not base64 of 64 bytes.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// No key of the trust root verifies the signature.
    #[error("signature does not verify against any key of trust root {0} (untrusted signer or tampered content)")]
    Untrusted(PathBuf),
    /// The trust root holds no usable key.
    #[error("trust root {0} has no valid *.pub key")]
    NoKeys(PathBuf),
    /// The trust root cannot be read.
    #[error("trust root {0}: {1}")]
    Unreadable(PathBuf, String),
}

/// The trusted keys: every valid `*.pub` file of one directory, labelled by file stem.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    dir: PathBuf,
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustRoot {
    /// Reads `dir`. Malformed key files are skipped and reported in the second value (a plugin
    /// signed by such a key is then refused as untrusted), so one bad file does not disable the
    /// others.
    pub fn load(dir: &Path) -> Result<(TrustRoot, Vec<String>), SignatureError> {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| SignatureError::Unreadable(dir.to_path_buf(), e.to_string()))?;
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        paths.sort();
        let mut keys = Vec::new();
        let mut warnings = Vec::new();
        for p in paths {
            let label = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_public_key(&t))
            {
                Ok(k) => keys.push((label, k)),
                Err(e) => warnings.push(format!("trust root key {} ignored: {e}", p.display())),
            }
        }
        Ok((
            TrustRoot {
                dir: dir.to_path_buf(),
                keys,
            },
            warnings,
        ))
    }

    /// A trust root from keys in memory (tests, CLI).
    pub fn from_keys(dir: PathBuf, keys: Vec<(String, VerifyingKey)>) -> TrustRoot {
        TrustRoot { dir, keys }
    }

    /// The key labels, in file-name order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(l, _)| l.as_str())
    }

    /// Verifies `signature_text` (base64, as in a `.sig` file) over `message`; returns the
    /// signer's label.
    pub fn verify(
        &self,
        message: &[u8],
        signature_text: Option<&[u8]>,
    ) -> Result<String, SignatureError> {
        let Some(text) = signature_text else {
            return Err(SignatureError::Missing);
        };
        let sig = parse_signature(text).map_err(SignatureError::Malformed)?;
        if self.keys.is_empty() {
            return Err(SignatureError::NoKeys(self.dir.clone()));
        }
        for (label, key) in &self.keys {
            if key.verify_strict(message, &sig).is_ok() {
                return Ok(label.clone());
            }
        }
        Err(SignatureError::Untrusted(self.dir.clone()))
    }
}

/// Parses a `.pub` file: base64 of exactly 32 bytes that form a valid Ed25519 point.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let raw = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let raw: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        format!(
            "expected 32 bytes of raw Ed25519 public key, got {}",
            raw.len()
        )
    })?;
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// Parses a `.sig` file: base64 of exactly 64 bytes.
pub fn parse_signature(text: &[u8]) -> Result<Signature, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let raw = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let raw: [u8; 64] = raw.as_slice().try_into().map_err(|_| {
        format!(
            "expected 64 bytes of raw Ed25519 signature, got {}",
            raw.len()
        )
    })?;
    Ok(Signature::from_bytes(&raw))
}

/// Parses a private key: base64 of the 32-byte seed, or PKCS#8 PEM (`openssl genpkey`).
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(t)
            .map_err(|e| format!("not an Ed25519 PKCS#8 PEM key: {e}"));
    }
    let raw = B64.decode(t).map_err(|e| format!("not base64: {e}"))?;
    let seed: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| format!("expected a 32-byte seed, got {} bytes", raw.len()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Base64 text of a public key (the `.pub` format).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Base64 text of a private key seed (the CLI's `.key` format).
pub fn encode_signing_key(key: &SigningKey) -> String {
    B64.encode(key.to_bytes())
}

/// Signs `message`; returns the `.sig` text (base64, no newline).
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    use ed25519_dalek::Signer;
    B64.encode(key.sign(message).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn verifies_and_names_the_signer() {
        let tr = TrustRoot::from_keys(
            "keys".into(),
            vec![
                ("a".into(), key(1).verifying_key()),
                ("b".into(), key(2).verifying_key()),
            ],
        );
        let sig = sign(&key(2), b"msg");
        assert_eq!(tr.verify(b"msg", Some(sig.as_bytes())).unwrap(), "b");
        assert!(matches!(
            tr.verify(b"msG", Some(sig.as_bytes())),
            Err(SignatureError::Untrusted(_))
        ));
        let other = sign(&key(3), b"msg");
        assert!(matches!(
            tr.verify(b"msg", Some(other.as_bytes())),
            Err(SignatureError::Untrusted(_))
        ));
        assert_eq!(tr.verify(b"msg", None), Err(SignatureError::Missing));
        assert!(matches!(
            tr.verify(b"msg", Some(b"%%%")),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            tr.verify(b"msg", Some(b"AAAA")),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn key_formats_round_trip() {
        let k = key(9);
        assert_eq!(
            parse_public_key(&encode_public_key(&k.verifying_key())).unwrap(),
            k.verifying_key()
        );
        assert_eq!(
            parse_signing_key(&encode_signing_key(&k))
                .unwrap()
                .to_bytes(),
            k.to_bytes()
        );
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key("not base64!").is_err());
    }
}
