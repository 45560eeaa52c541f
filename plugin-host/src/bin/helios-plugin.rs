//! `helios-plugin`: make keys, sign, pack, inspect and verify plugin artefacts, in exactly the
//! formats the proxy's loader reads (it uses the same code: `helios_plugin_host::artefact` and
//! `helios_plugin_host::trust`).

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
    /// Sign a plugin. With --name/--version/--hooks (or --manifest) the signature covers them
    /// and the wasm's SHA-256 (what artefacts and sidecar manifests need); without, it covers
    /// the raw wasm bytes (a bare .wasm whose hooks come from the proxy config).
    Sign {
        /// Private key: a .key from `keygen` or an `openssl genpkey -algorithm Ed25519` PEM.
        #[arg(long)]
        key: PathBuf,
        /// The module.
        #[arg(long)]
        wasm: PathBuf,
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
        /// Output .sig path (default: the wasm path with extension .sig).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pack a .tar.gz artefact: manifest.json + plugin.wasm [+ plugin.sig].
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
        /// An existing signature (made by `sign` with the same name, version and hooks).
        #[arg(long, conflicts_with = "key")]
        sig: Option<PathBuf>,
        /// Sign while packing with this private key.
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
            wasm,
            manifest,
            name,
            version,
            hooks,
            out,
        } => {
            let key = read_key(&key)?;
            let bytes =
                std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let sha = artefact::hex(&artefact::sha256(&bytes));
            let message = match (manifest, name, version, hooks) {
                (Some(m), ..) => {
                    let text =
                        std::fs::read(&m).with_context(|| format!("reading {}", m.display()))?;
                    let m: Manifest =
                        serde_json::from_slice(&text).context("parsing the manifest")?;
                    artefact::signed_message(&m.name, &m.version, &m.hooks, &sha)
                }
                (None, Some(n), Some(v), Some(h)) => artefact::signed_message(&n, &v, &h, &sha),
                _ => bytes.clone(),
            };
            let out = out.unwrap_or_else(|| wasm.with_extension("sig"));
            std::fs::write(&out, trust::sign(&key, &message))?;
            println!("signature: {}", out.display());
        }
        Cmd::Pack {
            wasm,
            name,
            version,
            hooks,
            sig,
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
                signed_by: None,
            };
            if let Some(sig) = sig {
                let text =
                    std::fs::read(&sig).with_context(|| format!("reading {}", sig.display()))?;
                trust::parse_signature(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", sig.display()))?;
                req.signature = Some(text);
            } else if let Some(key_path) = key {
                let k = read_key(&key_path)?;
                req.signature = Some(trust::sign(&k, &req.signed_message()).into_bytes());
                req.signed_by = key_path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned());
            }
            let packed = artefact::pack(&req)?;
            std::fs::write(&out, packed)?;
            println!(
                "packed {} ({} hooks, signed: {})",
                out.display(),
                req.hooks.len(),
                req.signature.is_some()
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
            println!(
                "signature: {}",
                if a.signature.is_some() {
                    "present"
                } else {
                    "none"
                }
            );
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
            match a.verify(Some(&tr))? {
                Some(label) => println!("OK — signed by {label}"),
                None => unreachable!("a trust root was given"),
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helios-plugin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
