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

#[test]
fn a_standby_streams_from_its_primary_and_can_be_promoted() {
    use helios_testkit::PgOptions;
    use std::time::Duration;
    let primary = PgCluster::start().expect("start primary");
    let standby = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby");
    assert_ne!(standby.port, primary.port);
    assert_eq!(
        standby
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    primary
        .psql(
            "postgres",
            "create table t(x int); insert into t values (7)",
        )
        .unwrap();
    standby
        .wait_replayed(&primary, Duration::from_secs(30))
        .unwrap();
    assert_eq!(standby.psql("postgres", "select x from t").unwrap(), "7");
    primary.signal(libc::SIGKILL).unwrap();
    standby.promote().unwrap();
    assert_eq!(
        standby
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    standby
        .psql("postgres", "insert into t values (8)")
        .unwrap();
}
