//! The `board` example in headless Chromium: two example processes form a
//! cluster, a page is opened on each, and `examples/board/web/test/browser.mjs`
//! (playwright-core driving Debian's `/usr/bin/chromium`) checks that an
//! item added in one page appears in the other, that a reorder, a delete, a
//! check-off and an edit converge, that edits made on both sides while page
//! B's WebSocket is closed merge when it opens again, and that the cluster
//! view shows node B up, then down once it is killed. Screenshots of both
//! pages end up in `target/board-browser/` and must not be blank.
//!
//! Needs `node` and `npm` (the page is bundled by esbuild, and the driver is
//! playwright-core, both from the npm registry, installed once into
//! `examples/board/web/node_modules`) and `/usr/bin/chromium` (`.ci/run`
//! installs Debian's `chromium`). Without them the test fails saying what
//! is missing; it never passes without running the browser.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to serve its page (a cold debug binary).
const START: Duration = Duration::from_secs(60);
/// How long the whole browser script may run (it bounds each wait itself).
const SCRIPT: Duration = Duration::from_secs(240);

const CHROMIUM: &str = "/usr/bin/chromium";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("board").join("web")
}

/// `target/` (or `$CARGO_TARGET_DIR`): the test binary is in `<it>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Kills the nodes and removes their data directory however the test ends.
struct Nodes {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pinned_versions(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("package.json")).expect("package.json");
    let json: repred_scuttlebutt::serde_json::Value =
        repred_scuttlebutt::serde_json::from_str(&text).expect("package.json is JSON");
    ["dependencies", "devDependencies"]
        .iter()
        .flat_map(|section| json[section].as_object().into_iter().flatten())
        .map(|(name, version)| (name.clone(), version.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let path = dir.join("node_modules").join(package).join("package.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: repred_scuttlebutt::serde_json::Value =
        repred_scuttlebutt::serde_json::from_str(&text).ok()?;
    Some(json["version"].as_str()?.to_string())
}

/// Checks the tools, installs the pinned npm packages when they are not
/// there yet (under a lock directory, as the scuttlebutt tests do), and
/// builds the page into `out`.
fn prepare_page(out: &Path) {
    for (tool, why) in [
        ("node", "runs esbuild and the playwright-core driver"),
        ("npm", "installs esbuild, playwright-core and the page's packages"),
    ] {
        let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` is not on PATH: the board's browser test needs node (20) and npm ({tool} \
             {why}); install them, e.g. `apt-get install nodejs npm`"
        );
    }
    let chromium = Command::new(CHROMIUM).arg("--version").output();
    assert!(
        chromium.as_ref().is_ok_and(|o| o.status.success()),
        "{CHROMIUM} does not run ({:?}): the board's browser test drives Debian's Chromium; \
         install it with `apt-get install -y chromium` (.ci/run does)",
        chromium.map(|o| o.status)
    );
    let dir = web_dir();
    let lock = dir.join(".install-lock");
    let start = Instant::now();
    while std::fs::create_dir(&lock).is_err() {
        let stale = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300));
        if stale {
            let _ = std::fs::remove_dir(&lock);
        }
        assert!(start.elapsed() < Duration::from_secs(600), "waited 10 min for {lock:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing: Vec<String> = pinned_versions(&dir)
        .into_iter()
        .filter(|(name, version)| installed_version(&dir, name).as_ref() != Some(version))
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    let installed = if missing.is_empty() {
        Ok(())
    } else {
        eprintln!("installing {}", missing.join(", "));
        Command::new("npm")
            .args(["install", "--no-package-lock", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}\n{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ))
                }
            })
    };
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = installed {
        panic!("`npm install` in {dir:?} failed (it needs the npm registry): {e}");
    }
    run(
        Command::new("node").arg("build.mjs").env("BOARD_DIST", out).current_dir(&dir),
        "building the page with esbuild",
    );
    assert!(out.join("index.html").is_file() && out.join("app.js").is_file());
}

/// The example's binary, as `tests/peer_example.rs` finds it: built by
/// `cargo test` next to the test binaries, or else built here into a
/// target directory of its own (the outer cargo holds the usual one).
fn board_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let name = format!("board{}", std::env::consts::EXE_SUFFIX);
    let built = profile_dir.join("examples").join(&name);
    if built.exists() {
        return built;
    }
    let target = profile_dir.join("board-example-target");
    run(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "board", "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        "building the board example",
    );
    target.join("debug").join("examples").join(name)
}

/// Ports nothing listens on right now: two UDP (QUIC), two TCP (HTTP).
fn free_ports() -> [u16; 4] {
    let udp: Vec<_> =
        (0..2).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
    let tcp: Vec<_> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let port = |a: std::io::Result<std::net::SocketAddr>| a.expect("bound").port();
    [
        port(udp[0].local_addr()),
        port(udp[1].local_addr()),
        port(tcp[0].local_addr()),
        port(tcp[1].local_addr()),
    ]
}

/// Starts a node; returns its process id once it serves its page.
fn start_node(
    nodes: &mut Nodes,
    binary: &Path,
    args: &[String],
    assets: &Path,
    name: &'static str,
) -> u32 {
    let mut child = Command::new(binary)
        .args(args)
        .arg("--data-dir")
        .arg(&nodes.dir)
        .arg("--assets")
        .arg(assets)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the board example starts");
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped stdout");
    nodes.children.push(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("node {name}: {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("HTTP ") => return pid,
            Ok(_) => {}
            Err(e) => panic!("node {name} did not serve its page within {START:?}: {e}"),
        }
    }
}

#[test]
fn two_pages_on_two_nodes_converge_and_the_cluster_view_follows() {
    let started = Instant::now();
    let artifacts = target_dir().join("board-browser");
    let assets = artifacts.join("dist");
    let shots = artifacts.join("screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    prepare_page(&assets);
    let binary = board_binary();
    let dir = std::env::temp_dir().join(format!("repred-board-browser-{}", std::process::id()));
    let mut nodes = Nodes { children: Vec::new(), dir };
    let [quic_a, quic_b, http_a, http_b] = free_ports();
    start_node(
        &mut nodes,
        &binary,
        &[quic_a.to_string(), quic_b.to_string(), "--http".into(), http_a.to_string()],
        &assets,
        "A",
    );
    let pid_b = start_node(
        &mut nodes,
        &binary,
        &[quic_b.to_string(), quic_a.to_string(), "--http".into(), http_b.to_string()],
        &assets,
        "B",
    );
    eprintln!("nodes up after {:.1} s", started.elapsed().as_secs_f64());

    let mut script = Command::new("node")
        .arg("test/browser.mjs")
        .current_dir(web_dir())
        .env("BOARD_A", format!("http://127.0.0.1:{http_a}/"))
        .env("BOARD_B", format!("http://127.0.0.1:{http_b}/"))
        .env("BOARD_B_PORT", quic_b.to_string())
        .env("BOARD_B_PID", pid_b.to_string())
        .env("SHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs the browser script");
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(script.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(script.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                println!("browser: {line}");
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + SCRIPT;
    let status = loop {
        if let Some(status) = script.try_wait().expect("wait for the script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            panic!("the browser script ran over {SCRIPT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The readers end with the pipes.
    let lines: Vec<String> = rx.iter().collect();
    assert!(status.success(), "the browser script failed ({status}); its output is above");
    for check in [
        "OK both pages load and sync with their nodes",
        "OK an item added in page A appears in page B",
        "OK a reorder in page B converges",
        "OK a delete in page A converges",
        "OK a check-off and an edit converge",
        "OK page B goes offline and says so",
        "OK B reconnects and both pages show the same list",
        "OK the cluster view shows node B up",
        "OK the cluster view shows node B down after it is killed",
        "OK screenshots of both pages are not blank",
        "OK no page loaded anything from elsewhere",
        "PASS",
    ] {
        assert!(lines.iter().any(|l| l.ends_with(check)), "the script never said {check:?}");
    }
    for name in ["a.png", "b.png", "cluster-up.png"] {
        let png = std::fs::read(shots.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        assert!(png.len() > 20_000, "{name} is only {} bytes: blank?", png.len());
    }
    eprintln!(
        "screenshots in {} ({:.1} s in all)",
        shots.display(),
        started.elapsed().as_secs_f64()
    );
}
