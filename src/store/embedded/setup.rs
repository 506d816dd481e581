//! Creating the embedded cluster: finding the server binaries, the `postgres` user when we
//! are root, the password file, and `initdb` into a staging directory that becomes the
//! cluster only once complete (an interrupted `initdb` never leaves a half-made cluster).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use super::{EmbeddedError, EmbeddedPostgres, USER};
use crate::children::{self, OwnedChild, Signal, StopPlan};

/// The longest `initdb` may take (a few seconds is usual).
const INITDB_WITHIN: Duration = Duration::from_secs(300);

/// How an abandoned `initdb` is stopped (it cleans up on SIGTERM).
const INITDB_ON_DROP: StopPlan = &[(Signal::TERM, Duration::from_secs(5))];

/// Removes a file when dropped (the password file handed to `initdb`).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _removed = std::fs::remove_file(&self.0);
    }
}

impl EmbeddedPostgres {
    /// A command for a server binary with a minimal environment, run as the `postgres` user
    /// when we are root.
    pub(super) fn pg_command(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin_dir.join(program));
        children::minimal_env(&mut command);
        command.current_dir(&self.data_dir).stdin(Stdio::null());
        if let Some((uid, gid)) = self.as_postgres {
            command.uid(uid).gid(gid);
        }
        command
    }

    pub(super) async fn init(&self) -> Result<(), EmbeddedError> {
        let staging = self.cluster.with_extension("init");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        self.give_to_postgres(&staging)?;
        set_mode(&staging, 0o700)?;
        // initdb reads the password from a file the server user can read; removed afterwards.
        let pwfile = RemoveOnDrop(self.cluster.with_extension("pwfile"));
        write_private(&pwfile.0, self.password.expose_secret())?;
        self.give_to_postgres(&pwfile.0)?;
        let log_path = self.data_dir.join("initdb.log");
        let (log, offset) = children::append_log(&log_path)?;
        let mut command = self.pg_command("initdb");
        command
            .arg("-D")
            .arg(&staging)
            .args(["-U", USER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.0.display()))
            .stdout(log.try_clone()?)
            .stderr(log);
        tracing::info!(cluster = %self.cluster.display(), "creating the embedded PostgreSQL cluster (initdb)");
        // Dropped before it ends (a stop signal while starting), the guard stops initdb.
        let mut initdb = OwnedChild::spawn(&mut command, "initdb", INITDB_ON_DROP)?;
        let deadline = tokio::time::Instant::now() + INITDB_WITHIN;
        let status = loop {
            if let Some(status) = initdb.exited() {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                // Dropping the guard stops initdb; the staging directory is redone next time.
                return Err(EmbeddedError::Command {
                    what: "initdb".into(),
                    detail: format!("did not finish within {INITDB_WITHIN:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        drop(pwfile);
        if !status.success() {
            let output = children::log_since(&log_path, offset);
            return Err(EmbeddedError::Command {
                what: "initdb".into(),
                detail: format!("{status}: {}", children::last_lines(&output, 5)),
            });
        }
        std::fs::rename(&staging, &self.cluster).map_err(|e| EmbeddedError::Command {
            what: format!("moving the new cluster to {}", self.cluster.display()),
            detail: e.to_string(),
        })
    }

    fn give_to_postgres(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some((uid, gid)) = self.as_postgres {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

/// The cluster's password: read from `path` for an existing cluster, else a new one written
/// there (mode 0600).
pub(super) fn password(path: &Path, initialized: bool) -> Result<SecretString, EmbeddedError> {
    if initialized {
        let text = std::fs::read_to_string(path).map_err(|e| EmbeddedError::Command {
            what: format!("reading {}", path.display()),
            detail: e.to_string(),
        })?;
        return Ok(SecretString::from(text.trim().to_owned()));
    }
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    write_private(path, &password)?;
    Ok(SecretString::from(password))
}

pub(super) fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return Some(dir);
            }
        }
    }
    // Debian keeps the server binaries off PATH, one directory per major version: newest wins.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub(super) fn is_root() -> bool {
    // The owner of a fresh file is the effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub(super) fn postgres_user_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Every parent of `dir` must let others search it (the `postgres` user is not their owner).
pub(super) fn check_reachable(dir: &Path) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors() {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable(dir.to_path_buf()));
        }
    }
    Ok(())
}

fn write_private(path: &Path, content: &str) -> Result<(), EmbeddedError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
