//! Process helpers shared by the peers: log tails, a parent-death watchdog, stopping children.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The last `max_lines` lines of a log file (at most its last 16 KiB), for error messages.
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(max_lines)..];
            format!("--- last lines of {} ---\n{}", path.display(), tail.join("\n"))
        }
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

/// The first `max_lines` lines of a log file (read from its first 16 KiB), for error messages.
pub(crate) fn log_head(path: &Path, max_lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut buf = Vec::new();
        std::fs::File::open(path)?.take(16 * 1024).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let head: Vec<&str> = text.lines().take(max_lines).collect();
            format!("--- first lines of {} ---\n{}", path.display(), head.join("\n"))
        }
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

/// What a watchdog runs once the watched process is gone: shell snippets whose positional
/// parameters are `args`.
pub(crate) struct Cleanup<'a> {
    /// Runs while the peer still lives (and so still holds its ports): removing files named
    /// after its ports here cannot hit a successor that took the same ports.
    pub before_kill: &'a str,
    /// Runs after the peer was SIGKILLed.
    pub after_kill: &'a str,
    /// The snippets' positional parameters.
    pub args: &'a [String],
}

impl<'a> Cleanup<'a> {
    /// Only `snippet`, after the kill.
    pub fn after_kill(snippet: &'a str, args: &'a [String]) -> Self {
        Self {
            before_kill: "",
            after_kill: snippet,
            args,
        }
    }
}

/// Starts a watchdog that SIGKILLs `child_pid` once this (test) process is gone (exited or a
/// zombie), running `cleanup`'s snippets before and after the kill.
///
/// The watchdog runs in its own process group, so a Ctrl-C to the test does not kill it
/// before it has done its job. Kill it (and wait) when the peer is stopped normally.
pub(crate) fn spawn_watchdog(child_pid: u32, cleanup: &Cleanup<'_>) -> std::io::Result<Child> {
    spawn_watchdog_for(std::process::id(), child_pid, cleanup)
}

/// [`spawn_watchdog`] watching `watched_pid` instead of this process.
pub(crate) fn spawn_watchdog_for(
    watched_pid: u32,
    child_pid: u32,
    cleanup: &Cleanup<'_>,
) -> std::io::Result<Child> {
    let Cleanup {
        before_kill,
        after_kill,
        args,
    } = cleanup;
    // A zombie still answers `kill -0`: read the state from /proc instead.
    let script = format!(
        "t=$1; c=$2; shift 2; \
         alive() {{ read -r l < \"/proc/$t/stat\" || return 1; s=${{l##*\") \"}}; [ \"${{s%% *}}\" != Z ]; }}; \
         while alive; do sleep 0.5; done\n{before_kill}\nkill -9 \"$c\" 2>/dev/null; sleep 0.3\n{after_kill}"
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("ido-testkit-watchdog")
        .arg(watched_pid.to_string())
        .arg(child_pid.to_string())
        .args(*args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// SIGKILLs a child and reaps it (errors ignored: it may be gone already).
pub(crate) fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM (through `kill(1)`: this crate has no unsafe code), waits up to `grace`
/// for the child to exit, then SIGKILLs it. Always reaps it.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    kill_and_wait(child);
}

/// Runs `scripts/<script>` under `flock` (the Go peer scripts do nothing when the cached
/// build is up to date) and returns `target/peers/<bin>`. A failed rebuild (no module proxy,
/// say) falls back to an existing binary. Callers keep the result per process.
pub(crate) async fn build_go_peer(script: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let root = crate::workspace_root();
    let peers = root.join("target/peers");
    let path = peers.join(bin);
    std::fs::create_dir_all(&peers).with_context(|| format!("creating {}", peers.display()))?;
    let lock = peers.join(format!(".{}.lock", script.trim_end_matches(".sh")));
    let out = tokio::process::Command::new("flock")
        .arg(lock)
        .arg(root.join("scripts").join(script))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running scripts/{script}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !path.is_file() {
            anyhow::bail!("scripts/{script} failed ({}): {stderr}", out.status);
        }
        tracing::warn!(%stderr, "rebuilding {bin} failed; using the existing binary");
    }
    Ok(path)
}

/// The first line `child` prints on stdout (its address, say), trimmed, within `timeout`; the
/// lines after it go to `log`, so the child never writes into a closed pipe. `what` names
/// the child and what the line is, in errors.
pub(crate) async fn first_stdout_line(
    child: &mut Child,
    log: std::fs::File,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("{what}: no stdout"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        let mut log = log;
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
        }
    });
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Some(Ok(line)))) => Ok(line.trim().to_owned()),
        Ok(Ok(Some(Err(e)))) => Err(anyhow::anyhow!("{what}: reading its stdout: {e}")),
        Ok(_) => Err(anyhow::anyhow!("{what}: it exited before printing it")),
        Err(_) => Err(anyhow::anyhow!("{what}: nothing printed within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_head_and_tail_keep_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        let tail = log_tail(&path, 2);
        assert!(tail.ends_with("b\nc"), "{tail}");
        let head = log_head(&path, 2);
        assert!(head.ends_with("\na\nb"), "{head}");
        assert!(log_head(&dir.path().join("missing"), 2).contains("cannot read"));
        assert!(log_tail(&dir.path().join("missing"), 2).contains("cannot read"));
    }

    #[test]
    fn watchdog_kills_the_peer_once_the_watched_process_is_a_zombie() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("cleaned");
        // Never reaped while the watchdog runs: it stays a zombie, which must count as gone.
        let mut watched = Command::new("true").spawn().unwrap();
        let mut peer = Command::new("sleep").arg("30").spawn().unwrap();
        let args = [marker.display().to_string(), "-before".into()];
        // The first file is made while the peer lives, the second after it is gone.
        let before = "kill -0 \"$c\" && touch \"$1$2\"";
        let cleanup = Cleanup {
            before_kill: before,
            after_kill: "touch \"$1\"",
            args: &args,
        };
        let mut dog = spawn_watchdog_for(watched.id(), peer.id(), &cleanup).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while peer.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the watchdog did not kill the peer");
            std::thread::sleep(Duration::from_millis(50));
        }
        dog.wait().unwrap();
        assert!(marker.exists(), "the cleanup after the kill did not run");
        assert!(
            dir.path().join("cleaned-before").exists(),
            "the cleanup before the kill did not run while the peer lived"
        );
        watched.wait().unwrap();
    }

    #[test]
    fn terminate_stops_a_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        terminate(&mut child, Duration::from_secs(2));
        assert!(child.try_wait().unwrap().is_some());
    }
}
