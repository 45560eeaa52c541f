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
    /// The audit-chain plugin's log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk every shard's chain and report the first broken link (exit status 1 if any, or if
    /// there is no chain at all).
    Verify {
        /// A KV export: the proxy's `kv_persist_path` file.
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        kv_file: Option<PathBuf>,
        /// The admin API, e.g. http://127.0.0.1:9090 (reads `GET /plugins/{name}/kv/{key}`).
        #[arg(long)]
        admin: Option<String>,
        /// Bearer token for the admin API.
        #[arg(long)]
        token: Option<String>,
        /// The plugin's configured name (its KV namespace).
        #[arg(long, default_value = "audit-chain")]
        plugin: String,
        /// Shards to look for (chains are per shard: 0..N).
        #[arg(long, default_value_t = 256)]
        max_shards: u64,
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
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    kv_file,
                    admin,
                    token,
                    plugin,
                    max_shards,
                },
        } => {
            let mut get: Box<KvReader> = match (kv_file, admin) {
                (Some(path), _) => {
                    let ns = audit::read_export(&path, &plugin)?;
                    Box::new(move |k: &str| Ok(ns.get(k.as_bytes()).cloned()))
                }
                (None, Some(url)) => {
                    let base = audit::AdminUrl::parse(&url)?;
                    let name = plugin.clone();
                    Box::new(move |k: &str| base.kv_get(&name, k, token.as_deref()))
                }
                (None, None) => bail!("give --kv-file or --admin"),
            };
            let mut chains = 0;
            let mut records = 0;
            let mut broken = 0;
            for shard in 0..max_shards {
                let mut err = None;
                let report = audit_chain::verify_chain(shard, |k| match get(k) {
                    Ok(v) => v,
                    Err(e) => {
                        err.get_or_insert(e);
                        None
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                let Some(r) = report else { continue };
                chains += 1;
                records += r.records;
                match &r.broken {
                    None => println!(
                        "shard {shard}: {} records, tail {}: OK",
                        r.records, r.tail_hash
                    ),
                    Some(b) => {
                        broken += 1;
                        println!(
                            "shard {shard}: {} records: BROKEN at record {}: {}",
                            r.records, b.seq, b.what
                        );
                    }
                }
            }
            if chains == 0 {
                bail!("no audit chain found for plugin {plugin:?}");
            }
            if broken > 0 {
                bail!("{broken} of {chains} chains broken");
            }
            println!("OK — {records} records in {chains} chains");
        }
    }
    Ok(())
}

/// Reading the audit chain's KV: a `kv_persist_path` export or the admin API.
mod audit {
    use anyhow::{bail, Context, Result};
    use base64::Engine as _;
    use std::collections::{BTreeMap, HashMap};
    use std::io::{Read, Write};
    use std::path::Path;

    /// One namespace of a KV export (format 1: plugin → base64 key → base64 value).
    pub fn read_export(path: &Path, plugin: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
        #[derive(serde::Deserialize)]
        struct File {
            format: u32,
            namespaces: BTreeMap<String, BTreeMap<String, String>>,
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let f: File = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a plugin KV export", path.display()))?;
        if f.format != 1 {
            bail!("{}: unknown KV export format {}", path.display(), f.format);
        }
        let Some(ns) = f.namespaces.get(plugin) else {
            bail!("{} has no namespace {plugin:?}", path.display());
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        ns.iter()
            .map(|(k, v)| Ok((b64.decode(k)?, b64.decode(v)?)))
            .collect::<Result<_>>()
            .with_context(|| format!("{}: bad base64", path.display()))
    }

    /// `http://host:port` of the admin API (plain HTTP: the admin API listens on loopback or
    /// behind the operator's own TLS terminator).
    pub struct AdminUrl {
        host: String,
    }

    impl AdminUrl {
        pub fn parse(url: &str) -> Result<AdminUrl> {
            let Some(rest) = url.strip_prefix("http://") else {
                bail!("--admin takes http://host:port, not {url:?}");
            };
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains('/') {
                bail!("--admin takes http://host:port, not {url:?}");
            }
            Ok(AdminUrl {
                host: host.to_string(),
            })
        }

        /// `GET /plugins/{plugin}/kv/{key}`: `Ok(None)` on 404.
        pub fn kv_get(
            &self,
            plugin: &str,
            key: &str,
            token: Option<&str>,
        ) -> Result<Option<Vec<u8>>> {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>()
            };
            let mut s = std::net::TcpStream::connect(&self.host)
                .with_context(|| format!("connecting to the admin API at {}", self.host))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            write!(
                s,
                "GET /plugins/{}/kv/{} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
                enc(plugin),
                enc(key),
                self.host
            )?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                bail!("malformed HTTP response from {}", self.host);
            };
            let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("malformed HTTP status line")?;
            let mut body = raw[at + 4..].to_vec();
            if head.contains("transfer-encoding: chunked") {
                body = dechunk(&body)?;
            }
            match status {
                200 => Ok(Some(body)),
                404 if String::from_utf8_lossy(&body).contains("has no key") => Ok(None),
                _ => bail!(
                    "GET /plugins/{plugin}/kv/{key}: HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }

    fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
                bail!("malformed chunked body");
            };
            let size_text = String::from_utf8_lossy(&b[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("malformed chunk size")?;
            b = &b[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            if b.len() < size + 2 {
                bail!("truncated chunked body");
            }
            out.extend_from_slice(&b[..size]);
            b = &b[size + 2..];
        }
    }
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

/// Reads one KV key of the audited plugin (from an export file or the admin API).
type KvReader = dyn FnMut(&str) -> Result<Option<Vec<u8>>>;

#[allow(dead_code)] // Unused where cargo-helios-plugin includes this file.
fn main() -> ExitCode {
    main_with("helios-plugin", std::env::args_os())
}
