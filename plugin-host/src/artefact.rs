//! Plugin artefacts: a bare `.wasm` (optionally with `<stem>.json` manifest, `<stem>.sig`
//! signature and `<stem>.manifest.sig` manifest signature beside it) or a `.tar.gz` holding
//! `manifest.json`, `plugin.wasm` and optionally `plugin.sig` and `manifest.sig`. The proxy loader
//! and the `helios-plugin` CLI share this module, so both read and write the same formats.
//!
//! # What the signatures cover
//!
//! - `plugin.sig` (`<stem>.sig`) is over **the wasm bytes**, always: exactly what
//!   `openssl pkeyutl -sign -rawin -in plugin.wasm | base64 -w 0` writes. With a trust root it is
//!   required; it is the signature that decides whether the code is trusted.
//! - `manifest.sig` (`<stem>.manifest.sig`), optional, is an additional signature over
//!   [`signed_message`]: a short text naming the plugin, its version, its sorted hook list and
//!   the wasm's SHA-256. When present it must verify. Only a signed manifest may *restrict* the
//!   hooks of a module (the loader enables the manifest's hooks); with a trust root and an
//!   unsigned manifest the loader ignores the manifest's hook list and enables the hooks the
//!   signed module exports (or the config entry's `hooks`), so editing an unsigned manifest
//!   cannot switch a signed plugin's hook off.

use crate::trust::{SignatureError, TrustRoot};
use helios_plugin_abi::Hook;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest schema this host writes. It reads every `1.x`.
pub const MANIFEST_SCHEMA_VERSION: &str = "1.0";
/// First line of the signed message of a plugin with a manifest.
pub const SIGNED_MESSAGE_HEADER: &str = "helios-plugin-signature-v1";
/// `signature_scheme` written by `helios-plugin pack` for signed artefacts.
pub const SIGNATURE_SCHEME: &str = "ed25519:helios-plugin-signature-v1";

const MAX_WASM_BYTES: u64 = 64 << 20;
const MAX_SMALL_FILE_BYTES: u64 = 64 << 10;

/// `manifest.json` (artefacts) or `<stem>.json` (sidecar). Unknown fields are ignored so a later
/// `1.x` may add some; an unknown major is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `"1.0"`; any `1.x` is read, another major is refused.
    pub schema_version: String,
    /// Plugin name (the default for the config entry's `name`).
    pub name: String,
    /// Plugin version, free-form (semver recommended).
    pub version: String,
    /// One line of description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SPDX licence expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Hooks the plugin implements (covered by the signature).
    pub hooks: Vec<String>,
    /// Lowercase hex SHA-256 of the wasm; required in artefacts, checked before compiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_sha256: Option<String>,
    /// How `plugin.sig` was made (informational): [`SIGNATURE_SCHEME`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_scheme: Option<String>,
    /// Label of the key the packer signed with (informational; the trust root decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// When the artefact was packed, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_at: Option<String>,
}

/// Why an artefact cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    /// The file (or a sidecar) cannot be read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The archive or manifest is malformed.
    #[error("{0}: {1}")]
    Malformed(PathBuf, String),
    /// The manifest's `schema_version` has a major this host does not know.
    #[error("{path}: manifest schema_version {found:?} is not supported (this proxy reads 1.x)")]
    SchemaVersion {
        /// The artefact.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// The wasm does not hash to the manifest's `wasm_sha256`.
    #[error(
        "{path}: wasm SHA-256 is {actual} but the manifest says {expected} (tampered or corrupt)"
    )]
    HashMismatch {
        /// The artefact.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The signature over the wasm bytes was not accepted.
    #[error("{0}: {1}")]
    Signature(PathBuf, SignatureError),
    /// The manifest signature is present and was not accepted.
    #[error("{0}: manifest signature: {1} (was the manifest edited after signing?)")]
    ManifestSignature(PathBuf, SignatureError),
    /// `plugin.sig` signs the manifest text (the format of earlier helios-plugin versions)
    /// instead of the wasm bytes.
    #[error("{0}: the signature covers the manifest text, not the wasm bytes (made by an earlier helios-plugin); sign the .wasm itself (`cargo helios-plugin sign --key KEY --input plugin.wasm` or `openssl pkeyutl -sign -rawin -in plugin.wasm`) and pack again")]
    ManifestSignedAsPlugin(PathBuf),
}

/// An artefact read into memory, not yet verified.
#[derive(Debug, Clone)]
pub struct Artefact {
    /// Where it came from.
    pub path: PathBuf,
    /// The manifest, if the artefact has one.
    pub manifest: Option<Manifest>,
    /// The module bytes.
    pub wasm: Vec<u8>,
    /// SHA-256 of `wasm`.
    pub wasm_sha256: [u8; 32],
    /// The signature file's text (over the wasm bytes), if any.
    pub signature: Option<Vec<u8>>,
    /// The manifest signature file's text (over [`signed_message`]), if any.
    pub manifest_signature: Option<Vec<u8>>,
}

/// What [`Artefact::verify`] established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Trust-root label of the key that signed the wasm bytes (`None` without a trust root).
    pub signed_by: Option<String>,
    /// Trust-root label of the key that signed the manifest, when it carries a manifest
    /// signature and a trust root is configured.
    pub manifest_signed_by: Option<String>,
}

impl Verification {
    /// Whether the manifest's hook list may be used: always without a trust root (nothing is
    /// verified then), only with a verified manifest signature otherwise.
    pub fn manifest_trusted(&self) -> bool {
        self.signed_by.is_none() || self.manifest_signed_by.is_some()
    }
}

impl Artefact {
    /// Lowercase hex of [`Artefact::wasm_sha256`].
    pub fn sha256_hex(&self) -> String {
        hex(&self.wasm_sha256)
    }

    /// The manifest name, else the file stem (`foo.wasm`, `foo.tar.gz` → `foo`).
    pub fn default_name(&self) -> String {
        if let Some(m) = &self.manifest {
            return m.name.clone();
        }
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.trim_end_matches(".tar.gz")
            .trim_end_matches(".wasm")
            .to_owned()
    }

    /// The message a manifest signature must cover (see the module doc); `None` without a
    /// manifest.
    pub fn manifest_message(&self) -> Option<Vec<u8>> {
        self.manifest
            .as_ref()
            .map(|m| signed_message(&m.name, &m.version, &m.hooks, &self.sha256_hex()))
    }

    /// Checks integrity (manifest SHA-256) and, with a trust root, the signature over the wasm
    /// bytes (required) and the manifest signature (when present). Runs before any plugin code
    /// is compiled.
    pub fn verify(&self, trust: Option<&TrustRoot>) -> Result<Verification, ArtefactError> {
        if let Some(expected) = self.manifest.as_ref().and_then(|m| m.wasm_sha256.as_ref()) {
            let actual = self.sha256_hex();
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(ArtefactError::HashMismatch {
                    path: self.path.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let Some(trust) = trust else {
            return Ok(Verification::default());
        };
        let signed_by = match trust.verify(&self.wasm, self.signature.as_deref()) {
            Ok(label) => label,
            Err(SignatureError::Untrusted(dir)) => {
                // The format of earlier helios-plugin versions signed the manifest text in
                // plugin.sig: say so rather than "untrusted".
                if let Some(msg) = self.manifest_message() {
                    if trust.verify(&msg, self.signature.as_deref()).is_ok() {
                        return Err(ArtefactError::ManifestSignedAsPlugin(self.path.clone()));
                    }
                }
                return Err(ArtefactError::Signature(
                    self.path.clone(),
                    SignatureError::Untrusted(dir),
                ));
            }
            Err(e) => return Err(ArtefactError::Signature(self.path.clone(), e)),
        };
        let manifest_signed_by = match (&self.manifest_signature, self.manifest_message()) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ArtefactError::Malformed(
                    self.path.clone(),
                    "a manifest signature without a manifest".into(),
                ))
            }
            (Some(sig), Some(msg)) => Some(
                trust
                    .verify(&msg, Some(sig.as_slice()))
                    .map_err(|e| ArtefactError::ManifestSignature(self.path.clone(), e))?,
            ),
        };
        Ok(Verification {
            signed_by: Some(signed_by),
            manifest_signed_by,
        })
    }
}

/// The message a manifest signature covers:
///
/// ```text
/// helios-plugin-signature-v1
/// name: <name>
/// version: <version>
/// hooks: <hook names, sorted, de-duplicated, comma-separated>
/// wasm_sha256: <lowercase hex>
/// ```
///
/// each line ending in `\n`. With openssl:
/// `printf 'helios-plugin-signature-v1\nname: %s\nversion: %s\nhooks: %s\nwasm_sha256: %s\n' …`
/// into a file, then `openssl pkeyutl -sign -rawin -inkey k.pem -in FILE | base64 -w0`.
pub fn signed_message(
    name: &str,
    version: &str,
    hooks: &[String],
    wasm_sha256_hex: &str,
) -> Vec<u8> {
    let mut hooks: Vec<&str> = hooks.iter().map(String::as_str).collect();
    hooks.sort_unstable();
    hooks.dedup();
    format!(
        "{SIGNED_MESSAGE_HEADER}\nname: {name}\nversion: {version}\nhooks: {}\nwasm_sha256: {}\n",
        hooks.join(","),
        wasm_sha256_hex.to_ascii_lowercase()
    )
    .into_bytes()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn check_manifest(path: &Path, m: &Manifest) -> Result<(), ArtefactError> {
    let major = m.schema_version.split('.').next().unwrap_or("");
    if major != "1" {
        return Err(ArtefactError::SchemaVersion {
            path: path.to_path_buf(),
            found: m.schema_version.clone(),
        });
    }
    let bad = |what: String| Err(ArtefactError::Malformed(path.to_path_buf(), what));
    let clean = |s: &str| !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_control());
    if !clean(&m.name) || m.name.contains(['/', '\\']) {
        return bad(format!(
            "manifest name {:?} must be 1..=128 printable characters without / or \\",
            m.name
        ));
    }
    if !clean(&m.version) {
        return bad(format!(
            "manifest version {:?} must be 1..=128 printable characters",
            m.version
        ));
    }
    for h in &m.hooks {
        if !clean(h) || h.contains(',') {
            return bad(format!("manifest hook {h:?} is not a hook name"));
        }
    }
    if let Some(s) = &m.wasm_sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("manifest wasm_sha256 {s:?} is not 64 hex digits"));
        }
    }
    Ok(())
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, ArtefactError> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| ArtefactError::Malformed(path.to_path_buf(), format!("manifest: {e}")))?;
    check_manifest(path, &m)?;
    Ok(m)
}

fn read_limited(path: &Path, r: impl Read, limit: u64) -> Result<Vec<u8>, ArtefactError> {
    let mut buf = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ArtefactError::Io(path.to_path_buf(), e))?;
    if buf.len() as u64 > limit {
        return Err(ArtefactError::Malformed(
            path.to_path_buf(),
            format!("a member is larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, ArtefactError> {
    match std::fs::File::open(path) {
        Ok(f) => read_limited(path, f, limit).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArtefactError::Io(path.to_path_buf(), e)),
    }
}

/// True for a path the loader treats as an artefact archive.
pub fn is_tar_gz(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".tar.gz") || path.extension().is_some_and(|e| e == "tgz")
}

/// Reads an artefact (bare `.wasm` with sidecars, or `.tar.gz`) without verifying it.
pub fn read(path: &Path) -> Result<Artefact, ArtefactError> {
    if is_tar_gz(path) {
        read_tar_gz(path)
    } else {
        read_bare(path)
    }
}

fn read_bare(path: &Path) -> Result<Artefact, ArtefactError> {
    let f = std::fs::File::open(path).map_err(|e| ArtefactError::Io(path.to_path_buf(), e))?;
    let wasm = read_limited(path, f, MAX_WASM_BYTES)?;
    let manifest = match read_optional(&path.with_extension("json"), MAX_SMALL_FILE_BYTES)? {
        Some(b) => Some(parse_manifest(&path.with_extension("json"), &b)?),
        None => None,
    };
    let signature = read_optional(&path.with_extension("sig"), MAX_SMALL_FILE_BYTES)?;
    let manifest_signature =
        read_optional(&path.with_extension("manifest.sig"), MAX_SMALL_FILE_BYTES)?;
    Ok(Artefact {
        path: path.to_path_buf(),
        wasm_sha256: sha256(&wasm),
        manifest,
        wasm,
        signature,
        manifest_signature,
    })
}

fn read_tar_gz(path: &Path) -> Result<Artefact, ArtefactError> {
    let f = std::fs::File::open(path).map_err(|e| ArtefactError::Io(path.to_path_buf(), e))?;
    read_tar_gz_from(path, f)
}

/// Reads an artefact archive from any reader (`path` is for messages).
pub fn read_tar_gz_from(path: &Path, r: impl Read) -> Result<Artefact, ArtefactError> {
    let malformed = |m: String| ArtefactError::Malformed(path.to_path_buf(), m);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(r));
    let (mut manifest, mut wasm, mut sig, mut manifest_sig) = (None, None, None, None);
    let entries = archive
        .entries()
        .map_err(|e| malformed(format!("not a tar.gz: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| malformed(format!("not a tar.gz: {e}")))?;
        let kind = entry.header().entry_type();
        let name = entry
            .path()
            .map_err(|e| malformed(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let name = name.trim_start_matches("./").to_owned();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(malformed(format!("member {name:?} is not a regular file")));
        }
        let (slot, limit) = match name.as_str() {
            "manifest.json" => (&mut manifest, MAX_SMALL_FILE_BYTES),
            "plugin.wasm" => (&mut wasm, MAX_WASM_BYTES),
            "plugin.sig" => (&mut sig, MAX_SMALL_FILE_BYTES),
            "manifest.sig" => (&mut manifest_sig, MAX_SMALL_FILE_BYTES),
            other => return Err(malformed(format!("unexpected member {other:?}"))),
        };
        if slot.is_some() {
            return Err(malformed(format!("member {name:?} appears twice")));
        }
        *slot = Some(read_limited(path, entry, limit)?);
    }
    let manifest = manifest.ok_or_else(|| malformed("no manifest.json".into()))?;
    let manifest = parse_manifest(path, &manifest)?;
    if manifest.wasm_sha256.is_none() {
        return Err(malformed(
            "manifest has no wasm_sha256 (required in artefacts)".into(),
        ));
    }
    let wasm = wasm.ok_or_else(|| malformed("no plugin.wasm".into()))?;
    Ok(Artefact {
        path: path.to_path_buf(),
        wasm_sha256: sha256(&wasm),
        manifest: Some(manifest),
        wasm,
        signature: sig,
        manifest_signature: manifest_sig,
    })
}

/// What `pack` needs.
#[derive(Debug, Clone)]
pub struct PackRequest<'a> {
    /// Module bytes.
    pub wasm: &'a [u8],
    /// Plugin name.
    pub name: &'a str,
    /// Plugin version.
    pub version: &'a str,
    /// Hook names.
    pub hooks: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Licence.
    pub license: Option<String>,
    /// `.sig` text over the wasm bytes, if signed.
    pub signature: Option<Vec<u8>>,
    /// `.sig` text over [`PackRequest::signed_message`] (the manifest signature), if any.
    pub manifest_signature: Option<Vec<u8>>,
    /// Label of the signing key (informational).
    pub signed_by: Option<String>,
}

impl PackRequest<'_> {
    /// The manifest `pack` writes (with `packed_at` = now).
    pub fn manifest(&self) -> Manifest {
        Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION.to_owned(),
            name: self.name.to_owned(),
            version: self.version.to_owned(),
            description: self.description.clone(),
            license: self.license.clone(),
            hooks: self.hooks.clone(),
            wasm_sha256: Some(hex(&sha256(self.wasm))),
            signature_scheme: self.signature.as_ref().map(|_| SIGNATURE_SCHEME.to_owned()),
            signed_by: self.signed_by.clone(),
            packed_at: Some(rfc3339_now()),
        }
    }

    /// The message a manifest signature covers for this request.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(
            self.name,
            self.version,
            &self.hooks,
            &hex(&sha256(self.wasm)),
        )
    }
}

/// Writes a `.tar.gz` artefact; validates the manifest it writes the same way the loader will.
pub fn pack(req: &PackRequest<'_>) -> Result<Vec<u8>, ArtefactError> {
    let manifest = req.manifest();
    check_manifest(Path::new("<pack>"), &manifest)?;
    for h in &manifest.hooks {
        if Hook::from_name(h).is_none() {
            return Err(ArtefactError::Malformed(
                "<pack>".into(),
                format!("unknown hook {h:?}"),
            ));
        }
    }
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        builder.append_data(&mut h, name, bytes)
    };
    let io = |e| ArtefactError::Io("<pack>".into(), e);
    add("manifest.json", &manifest_json).map_err(io)?;
    add("plugin.wasm", req.wasm).map_err(io)?;
    if let Some(sig) = &req.signature {
        add("plugin.sig", sig).map_err(io)?;
    }
    if let Some(sig) = &req.manifest_signature {
        add("manifest.sig", sig).map_err(io)?;
    }
    builder.into_inner().and_then(|gz| gz.finish()).map_err(io)
}

/// Now as RFC 3339 UTC (`2026-11-22T03:23:59Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_317_839), "2026-11-22T03:23:59Z");
    }

    #[test]
    fn signed_message_sorts_hooks() {
        let a = signed_message("p", "1", &["route".into(), "pre_query".into()], "AB");
        let b = signed_message(
            "p",
            "1",
            &["pre_query".into(), "route".into(), "route".into()],
            "ab",
        );
        assert_eq!(a, b);
        assert_eq!(
            String::from_utf8(a).unwrap(),
            "helios-plugin-signature-v1\nname: p\nversion: 1\nhooks: pre_query,route\nwasm_sha256: ab\n"
        );
    }

    #[test]
    fn pack_then_read_round_trips() {
        let req = PackRequest {
            wasm: b"\0asm\x01\0\0\0",
            name: "x",
            version: "1.2.3",
            hooks: vec!["pre_query".into()],
            description: Some("d".into()),
            license: Some("MIT".into()),
            signature: None,
            manifest_signature: None,
            signed_by: None,
        };
        let bytes = pack(&req).unwrap();
        let a = read_tar_gz_from(Path::new("x.tar.gz"), &bytes[..]).unwrap();
        let m = a.manifest.clone().unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("x", "1.2.3"));
        assert_eq!(m.wasm_sha256.as_deref(), Some(a.sha256_hex().as_str()));
        assert!(m.packed_at.unwrap().ends_with('Z'));
        a.verify(None).unwrap();
        let mut bad = req.clone();
        bad.hooks = vec!["pre-query".into()];
        assert!(pack(&bad).is_err());
    }
}
