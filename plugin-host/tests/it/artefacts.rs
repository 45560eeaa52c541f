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
        manifest_signature: None,
        signed_by: None,
    };
    if let Some(s) = signer {
        // The signature over the wasm bytes, and the additional one over the manifest.
        req.signature = Some(trust::sign(&key(s), &wasm).into_bytes());
        req.manifest_signature = Some(trust::sign(&key(s), &req.signed_message()).into_bytes());
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
    // A signed manifest: editing its hooks breaks the manifest signature.
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    edit_manifest(&art, |m| {
        m["hooks"] = serde_json::json!(["pre_query", "post_query"])
    });
    let (_rt, report) = load(&art, Some(trust.path()));
    let e = refusal(&report);
    assert!(
        matches!(
            e,
            LoadError::Artefact(ArtefactError::ManifestSignature(
                _,
                SignatureError::Untrusted(_)
            ))
        ),
        "{e}"
    );
    assert!(e.to_string().contains("manifest edited"), "{e}");

    // An unsigned manifest (only the wasm bytes signed, as openssl's flow makes) cannot switch
    // a hook of the signed code off: its hook list is not used, the module's exports are.
    let art = pack_block_drop(dir.path(), Some("release"), &["pre_query"]);
    let bytes = std::fs::read(&art).unwrap();
    let a = artefact::read_tar_gz_from(&art, &bytes[..]).unwrap();
    let mut m = a.manifest.clone().unwrap();
    m.hooks = vec!["route".into()];
    let unsigned = artefact::pack(&PackRequest {
        wasm: &a.wasm,
        name: &m.name,
        version: &m.version,
        hooks: m.hooks.clone(),
        description: None,
        license: None,
        signature: a.signature.clone(),
        manifest_signature: None,
        signed_by: None,
    })
    .unwrap();
    let art2 = dir.join("unsigned-manifest.tar.gz");
    std::fs::write(&art2, unsigned).unwrap();
    let (rt, report) = load(&art2, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(
        rt.plugins()[0].hooks,
        vec![helios_plugin_host::Hook::PreQuery],
        "the exports decide, not the unsigned manifest's [route]"
    );
    let mut shard = rt.shard(0);
    assert!(matches!(
        pre(&mut shard, "DROP TABLE x"),
        helios_plugin_host::PreQueryDecision::Block(_)
    ));

    // Sidecar manifest: guard.sig over the wasm bytes is what counts; guard.manifest.sig, when
    // present, must cover the sidecar's hooks.
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
    let (rt, report) = load(&w, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].name, "guard");
    let msg = artefact::signed_message("guard", "2", &["pre_query".into()], &sha);
    std::fs::write(
        dir.join("guard.manifest.sig"),
        trust::sign(&key("release"), &msg),
    )
    .unwrap();
    let (rt, report) = load(&w, Some(trust.path()));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("release"));
    std::fs::write(dir.join("guard.json"), manifest(r#""pre_query","route""#)).unwrap();
    let (_rt, report) = load(&w, Some(trust.path()));
    assert!(matches!(
        refusal(&report),
        LoadError::Artefact(ArtefactError::ManifestSignature(..))
    ));

    // The earlier format (plugin.sig over the manifest text) is refused with a reason that says
    // what to do.
    std::fs::remove_file(dir.join("guard.manifest.sig")).unwrap();
    std::fs::write(dir.join("guard.json"), manifest(r#""pre_query""#)).unwrap();
    std::fs::write(dir.join("guard.sig"), trust::sign(&key("release"), &msg)).unwrap();
    let (_rt, report) = load(&w, Some(trust.path()));
    let e = refusal(&report);
    assert!(
        matches!(
            e,
            LoadError::Artefact(ArtefactError::ManifestSignedAsPlugin(_))
        ),
        "{e}"
    );
    assert!(e.to_string().contains("sign the .wasm itself"), "{e}");
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

fn require_openssl() {
    assert!(
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the openssl CLI is required for this test (scripts/test.sh installs it; apt-get install openssl)"
    );
}

/// The reference's signing flow, typed as a new user would, with the real openssl CLI: key,
/// public key into keys/, signature over plugin.wasm, pack, verify says OK, the loader loads it
/// and it blocks.
#[test]
fn the_documented_openssl_flow_works_as_written() {
    require_openssl();
    let dir = TempDir::new("openssl");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    copy_wasm("block-drop", dir.path(), "plugin.wasm");
    let cli = env!("CARGO_BIN_EXE_helios-plugin");
    let out = sh(
        &format!(
            "openssl genpkey -algorithm Ed25519 -out signing.pem 2>/dev/null
             openssl pkey -in signing.pem -pubout -outform DER | tail -c 32 | base64 > keys/official.pub
             openssl pkeyutl -sign -inkey signing.pem -rawin -in plugin.wasm | base64 -w 0 > plugin.sig
             {cli} pack --wasm plugin.wasm --sig plugin.sig --name X --version 1.0 --hooks pre_query --out x.tar.gz
             {cli} verify x.tar.gz --trust-root keys/"
        ),
        dir.path(),
    );
    assert!(out.contains("OK — signed by official"), "{out}");
    let (rt, report) = load(&dir.join("x.tar.gz"), Some(&dir.join("keys")));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("official"));
    assert_eq!(rt.plugins()[0].name, "X");
    let mut shard = rt.shard(0);
    assert!(matches!(
        pre(&mut shard, "DROP TABLE t"),
        helios_plugin_host::PreQueryDecision::Block(_)
    ));
    // The bare form: plugin.wasm + plugin.sig in a directory.
    let (rt, report) = load(&dir.join("plugin.wasm"), Some(&dir.join("keys")));
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(rt.plugins()[0].signed_by.as_deref(), Some("official"));

    // The additional manifest signature, made with openssl from the documented message.
    let out = sh(
        &format!(
            r#"sha=$(sha256sum plugin.wasm | cut -d' ' -f1)
               printf 'helios-plugin-signature-v1\nname: %s\nversion: %s\nhooks: %s\nwasm_sha256: %s\n' \
                   guard 1.0.0 pre_query "$sha" > message
               openssl pkeyutl -sign -inkey signing.pem -rawin -in message | base64 -w 0 > manifest.sig
               {cli} pack --wasm plugin.wasm --sig plugin.sig --manifest-sig manifest.sig --name guard --version 1.0.0 --hooks pre_query --out guard.tar.gz
               {cli} verify guard.tar.gz --trust-root keys"#
        ),
        dir.path(),
    );
    assert!(
        out.contains("manifest (name, version, hooks) signed by official"),
        "{out}"
    );
    // And the CLI signs with the openssl PEM key too (both signatures).
    let out = sh(
        &format!(
            "{cli} pack --wasm plugin.wasm --name guard --version 1.0.1 --hooks pre_query --key signing.pem --out g2.tar.gz
             {cli} verify g2.tar.gz --trust-root keys"
        ),
        dir.path(),
    );
    assert!(out.contains("OK — signed by official"), "{out}");
    assert!(
        out.contains("manifest (name, version, hooks) signed by"),
        "{out}"
    );
}

/// `cargo helios-plugin sign` writes the sidecar byte for byte as openssl does, and `pack`
/// picks the sidecar up, so the reference's authoring flow needs no --sig.
#[test]
fn cargo_helios_plugin_sign_matches_openssl_byte_for_byte() {
    require_openssl();
    let dir = TempDir::new("cargo-sign");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    copy_wasm("block-drop", dir.path(), "my_plugin.wasm");
    let cargo_cli = env!("CARGO_BIN_EXE_cargo-helios-plugin");
    let cli = env!("CARGO_BIN_EXE_helios-plugin");
    let out = sh(
        &format!(
            "openssl genpkey -algorithm Ed25519 -out signing.pem 2>/dev/null
             openssl pkey -in signing.pem -pubout -outform DER | tail -c 32 | base64 > keys/official.pub
             openssl pkeyutl -sign -inkey signing.pem -rawin -in my_plugin.wasm | base64 -w 0 > openssl.sig
             {cargo_cli} helios-plugin sign --key signing.pem --input my_plugin.wasm
             {cli} pack --wasm my_plugin.wasm --out my-plugin-1.0.0.tar.gz --name my-plugin --version 1.0.0 --hooks pre_query
             {cli} verify my-plugin-1.0.0.tar.gz --trust-root keys"
        ),
        dir.path(),
    );
    let ours = std::fs::read(dir.join("my_plugin.sig")).unwrap();
    let theirs = std::fs::read(dir.join("openssl.sig")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs)
    );
    assert_eq!(ours.len(), 88, "base64 of 64 bytes, no newline");
    assert!(out.contains("using signature my_plugin.sig"), "{out}");
    assert!(out.contains("OK — signed by official"), "{out}");
    // Run directly (not through cargo) the extra word may be left out; --wasm is an alias.
    sh(
        &format!("rm my_plugin.sig && {cargo_cli} sign --key signing.pem --wasm my_plugin.wasm && cmp my_plugin.sig openssl.sig"),
        dir.path(),
    );
    // A wrong key type is an error, not a signature: a PEM public key is no signing key. (A
    // trust-root `.pub` file, base64 of 32 bytes, cannot be told from a base64 seed.)
    sh(
        "openssl pkey -in signing.pem -pubout -out public.pem",
        dir.path(),
    );
    let out = Command::new(cargo_cli)
        .args([
            "helios-plugin",
            "sign",
            "--key",
            "public.pem",
            "--input",
            "my_plugin.wasm",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
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
             {cli} sign --key keys/release.key --input p.wasm
             {cli} sign --key keys/release.key --input p.wasm --name block-drop --version 1.0.0 --hooks pre_query
             {cli} pack --wasm p.wasm --name block-drop --version 1.0.0 --hooks pre_query --manifest-sig p.manifest.sig --license MIT --out a.tar.gz
             {cli} inspect a.tar.gz
             {cli} verify a.tar.gz --trust-root keys"
        ),
        dir.path(),
    );
    assert!(out.contains("\"schema_version\": \"1.0\""), "{out}");
    assert!(out.contains("\"packed_at\""), "{out}");
    assert!(out.contains("signature (wasm bytes): present"), "{out}");
    assert!(out.contains("manifest signature: present"), "{out}");
    assert!(out.contains("OK — signed by release"), "{out}");
    assert!(
        out.contains("manifest (name, version, hooks) signed by release"),
        "{out}"
    );
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
    // Bare wasm signed over its bytes verifies with the CLI as well (without the manifest
    // signature, which needs a manifest beside it).
    sh(
        &format!("rm p.sig p.manifest.sig && {cli} sign --key keys/release.key --input p.wasm && {cli} verify p.wasm --trust-root keys"),
        dir.path(),
    );
    // --unsigned ignores the sidecar.
    let out = sh(
        &format!("{cli} pack --wasm p.wasm --name b --version 1 --hooks pre_query --unsigned --out u.tar.gz && {cli} inspect u.tar.gz"),
        dir.path(),
    );
    assert!(out.contains("signature (wasm bytes): none"), "{out}");
}
