//! Children and their process groups never left running, whether dropped, stopped or exited
//! by themselves; the minimal environment.

use super::*;

const QUICK: StopPlan = &[(Signal::TERM, Duration::from_secs(5))];
const SHORT: StopPlan = &[(Signal::TERM, Duration::from_millis(200))];

/// `sh -c script`, where the script starts a process in its group and prints its pid
/// first: the child and that pid. Its input is a pipe (closing it ends a `read`).
fn with_grandchild(script: &str, plan: StopPlan) -> (OwnedChild, u32) {
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = OwnedChild::spawn(&mut command, "sh", plan).expect("sh starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the grandchild's pid");
    let grandchild: u32 = line.trim().parse().expect("pid");
    (child, grandchild)
}

#[test]
fn a_dropped_child_and_its_process_group_are_stopped() {
    // A shell that ignores SIGTERM and keeps a grandchild in its group: only the final
    // SIGKILL to the group ends both.
    let (child, grandchild) = with_grandchild("trap '' TERM; sleep 600 & echo $!; wait", SHORT);
    let pid = child.id();
    assert!(is_running(pid) && is_running(grandchild));
    drop(child);
    assert!(!is_running(pid), "the child was left running");
    // The grandchild is not ours to reap: it may linger as a zombie of init, not running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_running(grandchild) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert!(!is_running(grandchild), "its group was left running");
}

#[tokio::test]
async fn a_child_that_exits_on_sigterm_leaves_nothing_of_its_group_running() {
    // As initdb stopped half-way: the child goes at SIGTERM, a process it started in its
    // group (here one that ignores SIGTERM) would stay.
    let (mut child, grandchild) = with_grandchild(
        "sh -c \"trap '' TERM; exec sleep 600\" & echo $!; wait",
        QUICK,
    );
    assert!(is_running(grandchild));
    let status = child.stop(QUICK).await.expect("it exited");
    assert!(!status.success(), "ended by SIGTERM: {status}");
    // Killed and waited for by the stop; a zombie of init at most.
    assert!(!is_running(grandchild), "its group was left running");
}

#[test]
fn a_child_that_exits_by_itself_leaves_nothing_of_its_group_running() {
    // As an initdb that fails on its own: its exit is seen by a caller watching it, and a
    // process it started in its group must not stay.
    let (mut child, grandchild) = with_grandchild(
        "sh -c \"trap '' TERM; exec sleep 600\" & echo $!; read _ ; exit 3",
        QUICK,
    );
    assert!(is_running(grandchild));
    assert_eq!(child.exited(), None, "it waits for its input");
    // Closing its input ends it (`read` returns at end of file).
    drop(child.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(POLL);
    };
    assert_eq!(status.code(), Some(3));
    // Killed when the exit was seen; a zombie of init at most.
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_running(grandchild) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert!(!is_running(grandchild), "its group was left running");
    assert_eq!(child.stop_blocking(QUICK), Some(status), "stopped once");
}

#[test]
fn a_child_stopped_in_order_is_not_stopped_again_and_the_environment_is_minimal() {
    let mut command = Command::new("sh");
    command.args(["-c", "env; exec sleep 600"]);
    minimal_env(&mut command).stdout(std::process::Stdio::piped());
    let mut child = OwnedChild::spawn(&mut command, "sh", QUICK).expect("sh starts");
    let mut env = String::new();
    let mut out = std::io::BufReader::new(child.child.stdout.take().expect("stdout"));
    while !env.contains("LANG=") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).expect("env") == 0 {
            break;
        }
        env.push_str(&line);
    }
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            ["PATH", "LANG", "PWD", "SHLVL", "_"].contains(name),
            "unexpected variable {name}"
        );
    }
    let status = child.stop_blocking(QUICK).expect("it ends on SIGTERM");
    assert!(!status.success());
    assert!(child.exited().is_some());
    drop(child);
}

#[test]
fn a_reaped_process_does_not_count_as_running() {
    assert!(is_running(std::process::id()));
    let mut done = Command::new("true").spawn().expect("true starts");
    let pid = done.id();
    done.wait().expect("reaped");
    assert!(!is_running(pid));
}
