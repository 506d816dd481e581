//! What a killed service leaves behind: running servers and a stale postmaster.pid.

use super::*;

#[tokio::test]
async fn servers_left_by_a_killed_service_do_not_block_the_next_start() {
    let sim = simulator().await;
    let data = DataDir::new();
    let mut serve = Serve::start(&data, &feed(&sim));
    serve.wait_healthy().await;
    let postmaster = postmaster_pid(&data.cluster()).expect("the database runs");
    let nats = nats_pids(&data);
    assert_eq!(nats.len(), 1, "one nats-server: {nats:?}");

    signal(serve.pid(), "-KILL");
    serve.wait_exit().await;
    // kill -9 gives the service no chance: its servers still run.
    assert!(alive(postmaster), "the postmaster outlives a kill -9");
    assert!(alive(nats[0]), "the nats-server outlives a kill -9");

    let mut again = Serve::start(&data, &feed(&sim));
    again.wait_healthy().await;
    assert!(!alive(postmaster), "the leftover postmaster was stopped");
    assert!(!alive(nats[0]), "the leftover nats-server was stopped");
    stop_cleanly(again, &data).await;
    sim.stop().await;
}

/// Writes a `postmaster.pid` naming `pid`, as a crashed server leaves it.
fn write_pid_file(cluster: &Path, pid: u32) {
    let text = format!(
        "{pid}\n{}\n1700000000\n5432\n\n127.0.0.1\n  1234567   1\nready   \n",
        cluster.display()
    );
    std::fs::write(cluster.join("postmaster.pid"), text).expect("pid file");
}

/// The `postgres` user's ids when we are root (the server then runs as that user).
fn server_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

#[test]
fn a_stale_postmaster_pid_does_not_block_the_start() {
    let data = DataDir::new();
    migrate(&data, "up");
    assert_eq!(postmaster_pid(&data.cluster()), None, "stopped cleanly");

    // The pid of a running process that is no PostgreSQL server (pids are reused), of the
    // server's user (another user's process cannot be signalled, which PostgreSQL takes as
    // not running).
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    if let Some((uid, gid)) = server_user() {
        std::os::unix::process::CommandExt::uid(&mut sleep, uid);
        std::os::unix::process::CommandExt::gid(&mut sleep, gid);
    }
    let mut other = sleep.spawn().expect("sleep starts");
    write_pid_file(&data.cluster(), other.id());
    migrate(&data, "status");
    assert!(alive(other.id()), "an unrelated process is left alone");
    other.kill().expect("kill");
    other.wait().expect("reaped");

    // The pid of a process that no longer exists.
    let mut gone = Command::new("true").spawn().expect("true starts");
    let gone_pid = gone.id();
    gone.wait().expect("reaped");
    write_pid_file(&data.cluster(), gone_pid);
    migrate(&data, "status");
    assert_eq!(processes_of(&data.path), Vec::<u32>::new());
}
