//! Artefacts, manifests, signatures (ours and openssl's), and the helios-plugin CLI.

use crate::common::*;
use ed25519_dalek::SigningKey;
use helios_plugin_host::artefact::{self, ArtefactError, PackRequest};
use helios_plugin_host::trust::{self, SignatureError};
use helios_plugin_host::{LoadError, LoadReport, PluginRuntime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn key(label: &str) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..label.len().min(32)].copy_from_slice(&label.as_bytes()[..label.len().min(32)]);
    SigningKey::from_bytes(&seed)
}

/// A trust root directory holding `<label>.pub` for each label.
fn trust_root(labels: &[&str]) -> TempDir {
    let dir = TempDir::new("trust");
    for l in labels {
        std::fs::write(
            dir.join(format!("{l}.pub")),
            trust::encode_public_key(&key(l).verifying_key()) + "\n",
        )
        .unwrap();
    }
    dir
}

fn load(source: &Path, trust: Option<&Path>) -> (PluginRuntime, LoadReport) {
    let mut text = format!(
        "enabled = true\n[[plugin]]\nsource = {:?}\n",
        source.display().to_string()
    );
    if let Some(t) = trust {
        text = format!("trust_root = {:?}\n{text}", t.display().to_string());
    }
    runtime(&config(&text))
}

fn refusal(report: &LoadReport) -> &LoadError {
    assert!(
        report.loaded.is_empty(),
        "loaded unexpectedly: {:?}",
        report.loaded
    );
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    &report.refused[0].error
}

fn block_drop_bytes() -> Vec<u8> {
    std::fs::read(wasm("block-drop")).unwrap()
}

fn pack_block_drop(dir: &Path, signer: Option<&str>, hooks: &[&str]) -> PathBuf {
    let wasm = block_drop_bytes();
    let mut req = PackRequest {
        wasm: &wasm,
        name: "block-drop",
        version: "1.0.0",
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
        description: Some("refuses DROP TABLE".into()),
        license: Some("Apache-2.0".into()),
        signature: None,
        signed_by: None,
    };
    if let Some(s) = signer {
        req.signature = Some(trust::sign(&key(s), &req.signed_message()).into_bytes());
        req.signed_by = Some(s.into());
    }
    let out = dir.join("block-drop-1.0.0.tar.gz");
    std::fs::write(&out, artefact::pack(&req).unwrap()).unwrap();
    out
}

/// Rewrites an artefact's members (to simulate tampering).
fn repack(path: &Path, edit: impl Fn(&str, &mut Vec<u8>)) {
    let bytes = std::fs::read(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        members.insert(name, v);
    }
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, mut v) in members {
        edit(&name, &mut v);
        let mut h = tar::Header::new_gnu();
        h.set_size(v.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, &name, &v[..]).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap().finish().unwrap()).unwrap();
}

fn edit_manifest(path: &Path, f: impl Fn(&mut serde_json::Value)) {
    repack(path, |name, v| {
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(v).unwrap();
            f(&mut m);
            *v = serde_json::to_vec(&m).unwrap();
        }
    });
}

#[test]
fn signed_bare_wasm_loads_and_names_the_signer() {
    let dir = TempDir::new("bare");
    let trust = trust_root(&["release"]);
    let w = copy_wasm("block-drop", dir.path(), "block-drop.wasm");
    std::fs::write(
        dir.join("block-drop.sig"),
        trust::sign(&key("release"), &block_drop_bytes()),
    )
    .unwrap();
    let (rt, report) = load(&w, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("release"));
    assert_eq!(
        rt.plugins()[0].name,
        "block-drop",
        "name defaults to the file stem"
    );
}

#[test]
fn signed_artefact_loads_with_manifest_name_and_hooks() {
    let dir = TempDir::new("art");
    let trust = trust_root(&["release", "other"]);
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    let (rt, report) = load(&art, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let p = &rt.plugins()[0];
    assert_eq!(
        (
            p.name.as_str(),
            p.version.as_deref(),
            p.signed_by.as_deref()
        ),
        ("block-drop", Some("1.0.0"), Some("release"))
    );
    let mut shard = rt.shard(0);
    assert!(matches!(
        pre(&mut shard, "DROP TABLE x"),
        helios_plugin_host::PreQueryDecision::Block(_)
    ));
}

#[test]
fn tampered_wasm_is_refused() {
    let dir = TempDir::new("tamper");
    let trust = trust_root(&["release"]);
    // Bare: signature over the original bytes, one byte changed afterwards.
    let w = copy_wasm("block-drop", dir.path(), "block-drop.wasm");
    std::fs::write(
        dir.join("block-drop.sig"),
        trust::sign(&key("release"), &block_drop_bytes()),
    )
    .unwrap();
    let mut bytes = block_drop_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    let (_rt, report) = load(&w, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Untrusted(_)))
    ));
    // Artefact: the manifest's SHA-256 catches it before the signature (and without a trust root).
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    repack(&art, |name, v| {
        if name == "plugin.wasm" {
            let n = v.len() - 1;
            v[n] ^= 1;
        }
    });
    for t in [Some(trust.path()), None] {
        let (_rt, report) = load(&art, t);
        let e = refusal(&report);
        assert!(
            matches!(e, LoadError::Artefact(ArtefactError::HashMismatch { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("tampered or corrupt"));
    }
}

#[test]
fn tampered_manifest_hooks_are_refused() {
    let dir = TempDir::new("hooks");
    let trust = trust_root(&["release"]);
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    edit_manifest(&art, |m| {
        m["hooks"] = serde_json::json!(["pre_query", "post_query"])
    });
    let (_rt, report) = load(&art, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Untrusted(_)))
    ));

    // Sidecar manifest: a signature over the raw wasm does not cover the sidecar's hooks, so it
    // is not accepted once a sidecar exists; the manifest-style signature is, until the hooks
    // are edited.
    let w = copy_wasm("block-drop", dir.path(), "guard.wasm");
    let sha = artefact::hex(&artefact::sha256(&block_drop_bytes()));
    let manifest = |hooks: &str| {
        format!(
            r#"{{"schema_version":"1.0","name":"guard","version":"2","hooks":[{hooks}],"wasm_sha256":"{sha}"}}"#
        )
    };
    std::fs::write(dir.join("guard.json"), manifest(r#""pre_query""#)).unwrap();
    std::fs::write(
        dir.join("guard.sig"),
        trust::sign(&key("release"), &block_drop_bytes()),
    )
    .unwrap();
    let (_rt, report) = load(&w, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(..))
    ));
    let msg = artefact::signed_message("guard", "2", &["pre_query".into()], &sha);
    std::fs::write(dir.join("guard.sig"), trust::sign(&key("release"), &msg)).unwrap();
    let (rt, report) = load(&w, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].name, "guard");
    std::fs::write(dir.join("guard.json"), manifest(r#""pre_query","route""#)).unwrap();
    let (_rt, report) = load(&w, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(..))
    ));
}

#[test]
fn untrusted_signer_is_refused() {
    let dir = TempDir::new("untrusted");
    let trust = trust_root(&["release"]);
    let art = pack_block_drop(dir.path(), Some("mallory"), &["pre_query"]);
    let (_rt, report) = load(&art, Some(trust.path()));
    let e = refusal(&report);
    assert!(matches!(
        e,
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Untrusted(_)))
    ));
    assert!(
        e.to_string()
            .contains("does not verify against any key of trust root"),
        "{e}"
    );
}

#[test]
fn malformed_key_and_malformed_signature_are_refused() {
    let dir = TempDir::new("malformed");
    let trust = TempDir::new("badtrust");
    std::fs::write(trust.join("release.pub"), "this is not a key").unwrap();
    std::fs::write(
        trust.join("short.pub"),
        &trust::encode_public_key(&key("x").verifying_key())[..20],
    )
    .unwrap();
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    let (_rt, report) = load(&art, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::NoKeys(_)))
    ));
    assert_eq!(
        report
            .warnings
            .iter()
            .filter(|w| w.contains("ignored"))
            .count(),
        2,
        "{:?}",
        report.warnings
    );
    // A good key next to a bad one: the good one still works, the bad one trusts nothing.
    std::fs::write(
        trust.join("good.pub"),
        trust::encode_public_key(&key("good").verifying_key()),
    )
    .unwrap();
    let (_rt, report) = load(&art, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Untrusted(_)))
    ));
    // Malformed signature file.
    let trust = trust_root(&["release"]);
    repack(&art, |name, v| {
        if name == "plugin.sig" {
            *v = b"c2hvcnQ=".to_vec();
        }
    });
    let (_rt, report) = load(&art, Some(trust.path()));
    let e = refusal(&report);
    assert!(
        matches!(
            e,
            LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Malformed(_)))
        ),
        "{e}"
    );
}

#[test]
fn missing_signature_is_refused_with_a_trust_root_and_accepted_without() {
    let dir = TempDir::new("missing");
    let trust = trust_root(&["release"]);
    let art = pack_block_drop(dir.path(), None, &["pre_query"]);
    let (_rt, report) = load(&art, Some(trust.path()));
    let e = refusal(&report);
    assert!(matches!(
        e,
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Missing))
    ));
    assert!(e.to_string().contains("no signature"), "{e}");
    let (rt, report) = load(&art, None);
    assert!(report.refused.is_empty());
    assert_eq!(rt.plugins()[0].signed_by, None);
    // Bare wasm without .sig, trust root set.
    let w = copy_wasm("block-drop", dir.path(), "bare.wasm");
    let (_rt, report) = load(&w, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::Signature(_, SignatureError::Missing))
    ));
}

#[test]
fn unknown_schema_major_is_refused_and_later_minors_are_read() {
    let dir = TempDir::new("schema");
    let art = pack_block_drop(dir.path(), None, &["pre_query"]);
    edit_manifest(&art, |m| m["schema_version"] = "2.0".into());
    let (_rt, report) = load(&art, None);
    let e = refusal(&report);
    assert!(
        matches!(e, LoadError::Artefact(ArtefactError::SchemaVersion { .. })),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("schema_version \"2.0\" is not supported"),
        "{e}"
    );
    edit_manifest(&art, |m| {
        m["schema_version"] = "1.7".into();
        m["field_from_the_future"] = true.into();
    });
    let (_rt, report) = load(&art, None);
    assert!(report.refused.is_empty(), "{:?}", report.refused);
}

#[test]
fn a_refused_plugin_does_not_stop_the_others() {
    let dir = TempDir::new("partial");
    std::fs::write(dir.join("junk.wasm"), b"not wasm").unwrap();
    let cfg = config(&format!(
        "enabled = true\n[[plugin]]\nsource = {:?}\n{}",
        dir.join("junk.wasm").display().to_string(),
        entry("guard", "block-drop", "")
    ));
    let (rt, report) = runtime(&cfg);
    assert_eq!(report.refused.len(), 1);
    assert!(matches!(report.refused[0].error, LoadError::Module(_)));
    assert_eq!(rt.plugins().len(), 1);
}

fn sh(script: &str, dir: &Path) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Signatures made by the real openssl CLI, in the documented recipes, verify.
#[test]
fn openssl_signatures_verify() {
    assert!(
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the openssl CLI is required for this test (apt-get install openssl)"
    );
    let dir = TempDir::new("openssl");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    copy_wasm("block-drop", dir.path(), "plugin.wasm");
    sh(
        "openssl genpkey -algorithm Ed25519 -out signing.pem 2>/dev/null
         openssl pkey -in signing.pem -pubout -outform DER | tail -c 32 | base64 > keys/ops.pub
         openssl pkeyutl -sign -inkey signing.pem -rawin -in plugin.wasm | base64 -w 0 > plugin.sig",
        dir.path(),
    );
    let (rt, report) = load(&dir.join("plugin.wasm"), Some(&dir.join("keys")));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("ops"));

    // Artefact: sign the documented message with openssl, pack with the CLI.
    sh(
        r#"sha=$(sha256sum plugin.wasm | cut -d' ' -f1)
           printf 'helios-plugin-signature-v1\nname: %s\nversion: %s\nhooks: %s\nwasm_sha256: %s\n' \
               guard 1.0.0 pre_query "$sha" > message
           openssl pkeyutl -sign -inkey signing.pem -rawin -in message | base64 -w 0 > artefact.sig"#,
        dir.path(),
    );
    let cli = env!("CARGO_BIN_EXE_helios-plugin");
    sh(
        &format!("{cli} pack --wasm plugin.wasm --name guard --version 1.0.0 --hooks pre_query --sig artefact.sig --out guard.tar.gz"),
        dir.path(),
    );
    let (rt, report) = load(&dir.join("guard.tar.gz"), Some(&dir.join("keys")));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("ops"));
    // And the CLI signs with the openssl PEM key too.
    let out = sh(
        &format!(
            "{cli} pack --wasm plugin.wasm --name guard --version 1.0.1 --hooks pre_query --key signing.pem --out g2.tar.gz
             {cli} verify g2.tar.gz --trust-root keys"
        ),
        dir.path(),
    );
    assert!(out.contains("OK — signed by ops"), "{out}");
}

#[test]
fn cli_keygen_sign_pack_inspect_verify() {
    let cli = env!("CARGO_BIN_EXE_helios-plugin");
    let dir = TempDir::new("cli");
    copy_wasm("block-drop", dir.path(), "p.wasm");
    let out = sh(
        &format!(
            "{cli} keygen --out-dir keys --label release
             {cli} keygen --out-dir other --label someone
             {cli} sign --key keys/release.key --wasm p.wasm --name block-drop --version 1.0.0 --hooks pre_query --out p.sig
             {cli} pack --wasm p.wasm --name block-drop --version 1.0.0 --hooks pre_query --sig p.sig --license MIT --out a.tar.gz
             {cli} inspect a.tar.gz
             {cli} verify a.tar.gz --trust-root keys"
        ),
        dir.path(),
    );
    assert!(out.contains("\"schema_version\": \"1.0\""), "{out}");
    assert!(out.contains("\"packed_at\""), "{out}");
    assert!(out.contains("OK — signed by release"), "{out}");
    let mode = std::fs::metadata(dir.join("keys/release.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // The loader accepts what the CLI made.
    let (rt, report) = load(&dir.join("a.tar.gz"), Some(&dir.join("keys")));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("release"));
    // Wrong trust root: a reason and a non-zero exit.
    let out = Command::new(cli)
        .args(["verify", "a.tar.gz", "--trust-root", "other"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify against any key"), "{err}");
    // Bare wasm signed over its bytes verifies with the CLI as well.
    sh(&format!("rm p.sig && {cli} sign --key keys/release.key --wasm p.wasm && {cli} verify p.wasm --trust-root keys"), dir.path());
}
