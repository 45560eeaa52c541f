//! The harness itself: a scratch cluster starts, answers over SCRAM, and is removed on drop.

use helios_testkit::PgCluster;

#[test]
fn scratch_cluster_starts_answers_and_is_removed() {
    let pg = PgCluster::start().expect("start cluster");
    assert_eq!(pg.psql("postgres", "select 40 + 2").unwrap(), "42");
    // SCRAM over TCP with the superuser password, as the proxy will connect.
    let out = std::process::Command::new("psql")
        .arg(pg.url("postgres"))
        .args(["-At", "-c", "show password_encryption"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "scram-sha-256");
    let dir = pg.socket_dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "cluster directory left behind");
}
