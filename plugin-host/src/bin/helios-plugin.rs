//! `helios-plugin`: make keys, sign, pack, inspect and verify plugin artefacts, in exactly the
//! formats the proxy's loader reads (it uses the same code: `helios_plugin_host::artefact` and
//! `helios_plugin_host::trust`).
//!
//! The same commands are the cargo subcommand `cargo helios-plugin …` (binary
//! `cargo-helios-plugin`, which includes this file). A new subcommand is one `Cmd` variant and
//! one arm of `run`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use helios_plugin_host::artefact::{self, Manifest, PackRequest};
use helios_plugin_host::trust::{self, TrustRoot};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "helios-plugin",
    version,
    about = "Build-side tools for HeliosProxy WASM plugins"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an Ed25519 key pair: <DIR>/<LABEL>.key (private seed, base64, mode 0600) and
    /// <DIR>/<LABEL>.pub (public key, base64; copy it into the proxy's trust root).
    Keygen {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Key label (the file stem; the loader logs it as the signer).
        #[arg(long)]
        label: String,
    },
    /// Sign a plugin's wasm bytes: writes the .sig sidecar (base64, no newline), byte for byte
    /// what `openssl pkeyutl -sign -rawin -inkey KEY -in X.wasm | base64 -w 0` writes. With
    /// --manifest or --name/--version/--hooks it writes the additional manifest signature
    /// instead (X.manifest.sig), which lets a manifest restrict the module's hooks.
    Sign {
        /// Private key: an `openssl genpkey -algorithm Ed25519` PEM (PKCS#8) or a .key from
        /// `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The module.
        #[arg(long, visible_alias = "wasm")]
        input: PathBuf,
        /// Take name, version and hooks from this manifest (e.g. the .json sidecar).
        #[arg(long, conflicts_with_all = ["name", "version", "hooks"])]
        manifest: Option<PathBuf>,
        /// Plugin name.
        #[arg(long, requires_all = ["version", "hooks"])]
        name: Option<String>,
        /// Plugin version.
        #[arg(long)]
        version: Option<String>,
        /// Hooks, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hooks: Option<Vec<String>>,
        /// Output path (default: X.sig beside X.wasm; X.manifest.sig for a manifest signature).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pack a .tar.gz artefact: manifest.json + plugin.wasm [+ plugin.sig] [+ manifest.sig].
    Pack {
        /// The module.
        #[arg(long)]
        wasm: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Plugin version.
        #[arg(long)]
        version: String,
        /// Hooks, comma-separated (pre_query, route, post_query, authenticate).
        #[arg(long, value_delimiter = ',', required = true)]
        hooks: Vec<String>,
        /// The signature over the wasm bytes (`sign`, or openssl). Default: X.sig beside X.wasm,
        /// if there is one.
        #[arg(long, conflicts_with = "key")]
        sig: Option<PathBuf>,
        /// An additional signature over the manifest (`sign --name … --version … --hooks …`).
        #[arg(long, conflicts_with = "key")]
        manifest_sig: Option<PathBuf>,
        /// Pack unsigned even when X.sig exists.
        #[arg(long, conflicts_with_all = ["key", "sig", "manifest_sig"])]
        unsigned: bool,
        /// Sign while packing with this private key (both the wasm bytes and the manifest).
        #[arg(long)]
        key: Option<PathBuf>,
        /// One-line description.
        #[arg(long)]
        description: Option<String>,
        /// SPDX licence.
        #[arg(long)]
        license: Option<String>,
        /// Output path (.tar.gz).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print an artefact's manifest and integrity facts.
    Inspect {
        /// .tar.gz artefact or .wasm (with sidecars).
        artefact: PathBuf,
    },
    /// Check integrity and signature against a trust root, as the proxy's loader does.
    Verify {
        /// .tar.gz artefact or .wasm (with sidecars).
        artefact: PathBuf,
        /// Directory of trusted <label>.pub keys.
        #[arg(long)]
        trust_root: PathBuf,
    },
}

fn read_signature(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    trust::parse_signature(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text)
}

fn read_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    trust::parse_signing_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out_dir, label } => {
            if label.is_empty() || label.contains(['/', '\\']) {
                bail!("label {label:?} must be a plain file stem");
            }
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            std::fs::create_dir_all(&out_dir)?;
            let key_path = out_dir.join(format!("{label}.key"));
            let pub_path = out_dir.join(format!("{label}.pub"));
            if key_path.exists() {
                bail!("{} exists; refusing to overwrite a key", key_path.display());
            }
            write_private(
                &key_path,
                format!("{}\n", trust::encode_signing_key(&key)).as_bytes(),
            )?;
            std::fs::write(
                &pub_path,
                format!("{}\n", trust::encode_public_key(&key.verifying_key())),
            )?;
            println!("private key: {}", key_path.display());
            println!(
                "public key:  {} (copy into the proxy's trust_root)",
                pub_path.display()
            );
        }
        Cmd::Sign {
            key,
            input,
            manifest,
            name,
            version,
            hooks,
            out,
        } => {
            let key = read_key(&key)?;
            let bytes =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let sha = artefact::hex(&artefact::sha256(&bytes));
            let (message, what, default_out) = match (manifest, name, version, hooks) {
                (Some(m), ..) => {
                    let text =
                        std::fs::read(&m).with_context(|| format!("reading {}", m.display()))?;
                    let m: Manifest =
                        serde_json::from_slice(&text).context("parsing the manifest")?;
                    (
                        artefact::signed_message(&m.name, &m.version, &m.hooks, &sha),
                        "manifest signature",
                        input.with_extension("manifest.sig"),
                    )
                }
                (None, Some(n), Some(v), Some(h)) => (
                    artefact::signed_message(&n, &v, &h, &sha),
                    "manifest signature",
                    input.with_extension("manifest.sig"),
                ),
                _ => (bytes, "signature", input.with_extension("sig")),
            };
            let out = out.unwrap_or(default_out);
            std::fs::write(&out, trust::sign(&key, &message))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{what}: {}", out.display());
        }
        Cmd::Pack {
            wasm,
            name,
            version,
            hooks,
            sig,
            manifest_sig,
            unsigned,
            key,
            description,
            license,
            out,
        } => {
            let bytes =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let mut req = PackRequest {
                wasm: &bytes,
                name: &name,
                version: &version,
                hooks,
                description,
                license,
                signature: None,
                manifest_signature: None,
                signed_by: None,
            };
            if let Some(key_path) = key {
                let k = read_key(&key_path)?;
                req.signature = Some(trust::sign(&k, &bytes).into_bytes());
                req.manifest_signature = Some(trust::sign(&k, &req.signed_message()).into_bytes());
                req.signed_by = key_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned());
            } else if !unsigned {
                // The sidecar `sign` (or openssl) wrote beside the module, as the reference's
                // flow expects: `sign --input x.wasm`, then `pack --wasm x.wasm …`.
                let sidecar = wasm.with_extension("sig");
                let sig = match sig {
                    Some(s) => Some(s),
                    None if sidecar.is_file() => {
                        println!("using signature {}", sidecar.display());
                        Some(sidecar)
                    }
                    None => None,
                };
                req.signature = sig.map(|p| read_signature(&p)).transpose()?;
                req.manifest_signature = manifest_sig.map(|p| read_signature(&p)).transpose()?;
            }
            let packed = artefact::pack(&req)?;
            std::fs::write(&out, packed).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "packed {} ({} hooks, signed: {}, manifest signed: {})",
                out.display(),
                req.hooks.len(),
                req.signature.is_some(),
                req.manifest_signature.is_some()
            );
        }
        Cmd::Inspect { artefact: path } => {
            let a = artefact::read(&path)?;
            match &a.manifest {
                Some(m) => println!("{}", serde_json::to_string_pretty(m)?),
                None => println!("(no manifest)"),
            }
            let ok = a.verify(None).is_ok();
            println!(
                "wasm: {} bytes, sha256 {} ({})",
                a.wasm.len(),
                a.sha256_hex(),
                if ok { "matches" } else { "MISMATCH" }
            );
            let present = |s: &Option<Vec<u8>>| if s.is_some() { "present" } else { "none" };
            println!("signature (wasm bytes): {}", present(&a.signature));
            println!("manifest signature: {}", present(&a.manifest_signature));
            if !ok {
                bail!("integrity check failed");
            }
        }
        Cmd::Verify {
            artefact: path,
            trust_root,
        } => {
            let (tr, warnings) = TrustRoot::load(&trust_root)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            let a = artefact::read(&path)?;
            let v = a.verify(Some(&tr))?;
            println!("OK — signed by {}", v.signed_by.as_deref().unwrap_or("?"));
            match (&a.manifest, &v.manifest_signed_by) {
                (Some(_), Some(label)) => {
                    println!("manifest (name, version, hooks) signed by {label}")
                }
                (Some(_), None) => println!(
                    "manifest not signed: the proxy enables the hooks the module exports (or the config entry's hooks), not the manifest's list"
                ),
                (None, _) => {}
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Parses `args` (program name first) and runs the command; `bin` names the program in errors.
pub fn main_with(bin: &str, args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(dead_code)] // Unused where cargo-helios-plugin includes this file.
fn main() -> ExitCode {
    main_with("helios-plugin", std::env::args_os())
}
