//! A throwaway certificate authority for TLS tests, made with the `openssl` command: a CA, a
//! server certificate for `localhost` / 127.0.0.1, and client certificates by common name.
//! Keys are ECDSA P-256; certificates are valid for two days.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A CA in a scratch directory; issues certificates signed by it.
pub struct TestCa {
    pub dir: PathBuf,
    name: String,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (also its common name).
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = std::env::temp_dir().join(format!(
            "helios-ca-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        Ok(TestCa {
            dir,
            name: name.to_string(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A server certificate for the given DNS names and IP addresses (`file` names the files).
    pub fn server(&self, file: &str, dns: &[&str], ips: &[&str]) -> Result<Issued> {
        let mut san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        san.extend(ips.iter().map(|i| format!("IP:{i}")));
        let cn = dns.first().copied().unwrap_or("server");
        self.issue(
            file,
            cn,
            &format!(
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, file: &str, cn: &str) -> Result<Issued> {
        self.issue(
            file,
            cn,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
    }

    fn issue(&self, file: &str, cn: &str, ext: &str) -> Result<Issued> {
        let ext_file = format!("{file}.ext");
        std::fs::write(self.dir.join(&ext_file), ext)?;
        let (key, csr, crt) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.crt"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        )?;
        // libpq and PostgreSQL refuse keys others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.join(&key), std::fs::Permissions::from_mode(0o600))?;
        Ok(Issued {
            cert: self.dir.join(crt),
            key: self.dir.join(key),
        })
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
