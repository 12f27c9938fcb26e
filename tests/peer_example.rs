//! The `peer` example itself: two processes on free ports find each other
//! and both print `UP [a, b]`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the peers and removes their data directory however the test ends.
struct Peers {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Peers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example's binary. `cargo test` builds examples next to the test
/// binaries (`target/<profile>/examples/`); when only this test was built,
/// it is built here into a target directory of its own, because the outer
/// cargo holds the lock of the usual one while tests run.
fn peer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let name = format!("peer{}", std::env::consts::EXE_SUFFIX);
    let built = profile_dir.join("examples").join(&name);
    if built.exists() {
        return built;
    }
    let target = profile_dir.join("peer-example-target");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "peer", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the peer example failed");
    target.join("debug").join("examples").join(name)
}

/// Two ports nothing listens on right now (UDP, as QUIC uses).
fn free_ports() -> (u16, u16) {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

#[test]
fn two_peer_processes_see_each_other() {
    let binary = peer_binary();
    let dir = std::env::temp_dir().join(format!("repred-peer-example-{}", std::process::id()));
    let mut peers = Peers { children: Vec::new(), dir: dir.clone() };
    let (a, b) = free_ports();
    let (tx, rx) = mpsc::channel::<(u16, String)>();
    for (port, other) in [(a, b), (b, a)] {
        let mut child = Command::new(&binary)
            .args([port.to_string(), other.to_string(), "--data-dir".into()])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the peer example starts");
        let stdout = child.stdout.take().expect("piped stdout");
        peers.children.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((port, line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let want = format!("UP [{}, {}]", a.min(b), a.max(b));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<(u16, String)> = Vec::new();
    let mut up = (false, false);
    while !(up.0 && up.1) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((port, line)) => {
                if line == want {
                    if port == a {
                        up.0 = true;
                    } else {
                        up.1 = true;
                    }
                }
                seen.push((port, line));
            }
            Err(e) => panic!("no `{want}` from both peers ({e}); output so far: {seen:#?}"),
        }
    }
    drop(peers);
}
