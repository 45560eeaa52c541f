//! Start-up failures are one clear line and a non-zero exit, never a hang or a panic.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_heliosproxy");

fn run(cmd: &mut Command) -> (i32, String) {
    let start = Instant::now();
    let out = cmd.output().expect("run heliosproxy");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn locked_memory_too_small_is_a_clear_error() {
    // An unprivileged user whose hard memlock limit is 64 KiB cannot raise it: the proxy must
    // say what to change instead of failing inside an executor thread.
    let (code, err) = run(Command::new("prlimit")
        .arg("--memlock=65536:65536")
        .arg("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(BIN)
        .args([
            "--upstream",
            "postgres://u:p@127.0.0.1:1/db",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "2",
        ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("locked-memory limit") && err.contains("ulimit -l"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
}

#[test]
fn bad_config_names_the_key() {
    let dir = std::env::temp_dir().join(format!("helios-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n[databases.app]\npool_sise = 3\n",
    )
    .unwrap();
    let (code, err) = run(Command::new(BIN).arg("--config").arg(&path));
    assert_eq!(code, 1);
    assert!(
        err.contains("databases.app") && err.contains("pool_sise"),
        "{err}"
    );
    std::fs::write(&path, "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n[databases.app]\nnode = \"b\"\n").unwrap();
    let (code, err) = run(Command::new(BIN).arg("--config").arg(&path));
    assert_eq!(code, 1);
    assert!(err.contains("databases.app.node"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_in_use_is_a_clear_error() {
    // Held without SO_REUSEPORT, so no shard can bind it. The shards report the failure to the
    // main thread, which returns it: the binary prints it and exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for cores in ["1", "2"] {
        let (code, err) = run(Command::new(BIN).args([
            "--upstream",
            "postgres://u:p@127.0.0.1:1/db",
            "--listen",
            &addr,
            "--cores",
            cores,
            "--admin-listen",
            "off",
        ]));
        assert_eq!(code, 1, "{err}");
        // The binary's own error line (another shard's thread may still log after it).
        assert!(
            err.lines().any(|l| l.starts_with("heliosproxy: shard ")
                && l.contains(&format!("cannot listen on {addr}"))),
            "--cores {cores}: an error line should say which address: {err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
}

#[test]
fn a_node_name_that_does_not_resolve_is_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("helios-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nenabled = false\n[auth]\nmethod = \"trust\"\n\
         [[nodes]]\nname = \"primary\"\nhost = \"localhost\"\n\
         [[nodes]]\nname = \"replica\"\nhost = \"no-such-host.invalid\"\n[databases.app]\n",
    )
    .unwrap();
    for check in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&path);
        if check {
            cmd.arg("--check");
        }
        let (code, err) = run(&mut cmd);
        assert_eq!(code, 1, "--check {check}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.contains("node \"replica\"") && last.contains("no-such-host.invalid"),
            "--check {check}: the error must name the node and its host: {err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
    // The same file with the name fixed passes the check.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("no-such-host.invalid", "127.0.0.1")).unwrap();
    let (code, err) = run(Command::new(BIN).arg("--config").arg(&path).arg("--check"));
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
