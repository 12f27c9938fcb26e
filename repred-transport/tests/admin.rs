//! `repred-admin`, run as a program: what it writes, prints and exits with.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use repred_transport::Credentials;
use repred_transport::identity::{CA_FILE, CLUSTER_FILE, REVOKED_FILE, format_node_id};

fn admin<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repred-admin")).args(args).output().expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Succeeded; returns stdout.
fn ok(output: Output) -> String {
    assert!(output.status.success(), "{output:?}");
    text(&output.stdout)
}

#[test]
fn help_is_printed_on_stdout_with_status_0() {
    for args in [&["--help"][..], &["-h"], &["help"], &["issue", "--ca", "x", "--help"]] {
        let output = admin(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(text(&output.stdout).starts_with("usage: repred-admin"), "{args:?}");
        assert!(output.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn bad_arguments_exit_2_with_the_usage_on_stderr() {
    let cases: [&[&str]; 6] = [
        &[],
        &["mint"],
        &["issue", "--ca", "c.pem"],
        &["issue", "--ca", "c.pem", "--out", "n.pem", "--days", "0"],
        &["revoke", "--dir", "d", "not-an-id"],
        &["ca", "--dir", ""],
    ];
    for args in cases {
        let output = admin(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains("usage: repred-admin"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// The whole operator's path: a cluster, a node issued from it that runs
/// without the key, its renewal, its revocation.
#[test]
fn a_cluster_issues_renews_identifies_and_revokes_nodes() {
    let (ca_dir, member) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca_file = ca_dir.path().join(CA_FILE);
    ok(admin(&[Path::new("ca"), Path::new("--dir"), ca_dir.path()]));
    let public = fs::read_to_string(ca_dir.path().join(CLUSTER_FILE)).unwrap();
    assert!(public.contains("BEGIN CERTIFICATE") && !public.contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&ca_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // A second cluster over the first is refused: status 1, the cause once.
    let again = admin(&[Path::new("ca"), Path::new("--dir"), ca_dir.path()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("exists already"), "{again:?}");

    let node_file = member.path().join("node-4100.pem");
    let issue = [
        Path::new("issue"),
        Path::new("--ca"),
        &ca_file,
        Path::new("--out"),
        &node_file,
        Path::new("--days"),
        Path::new("30"),
    ];
    let id = ok(admin(&issue)).trim().to_string();
    assert_eq!(id.len(), 32, "{id}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&node_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Never over an existing node: that would be another identity.
    let before = fs::read(&node_file).unwrap();
    let twice = admin(&issue);
    assert_eq!(twice.status.code(), Some(1));
    assert_eq!(fs::read(&node_file).unwrap(), before);

    assert_eq!(ok(admin(&[Path::new("id"), &node_file])).trim(), id);
    fs::copy(ca_dir.path().join(CLUSTER_FILE), member.path().join(CLUSTER_FILE)).unwrap();
    let credentials = Credentials::load_or_create(member.path(), 4100).unwrap();
    assert_eq!(format_node_id(credentials.id()), id);
    assert!(!member.path().join(CA_FILE).exists());

    // Renewal: a new certificate, the same key and id.
    let renewed = ok(admin(&[Path::new("renew"), Path::new("--ca"), &ca_file, &node_file]));
    assert_eq!(renewed.trim(), id);
    assert_ne!(fs::read(&node_file).unwrap(), before);
    assert_eq!(format_node_id(Credentials::load_or_create(member.path(), 4100).unwrap().id()), id);

    // Revocation goes into the data directory's list, once.
    let revoke = [Path::new("revoke"), Path::new("--dir"), member.path(), Path::new(&id)];
    assert!(ok(admin(&revoke)).contains("revoked"));
    assert!(ok(admin(&revoke)).contains("already"));
    let list = fs::read_to_string(member.path().join(REVOKED_FILE)).unwrap();
    assert_eq!(list.matches(&id).count(), 1, "{list}");
    // The revoked node itself now refuses to start on that directory.
    assert!(Credentials::load_or_create(member.path(), 4100).is_err());
    let missing = admin(&[
        Path::new("revoke"),
        Path::new("--dir"),
        &member.path().join("missing"),
        Path::new(&id),
    ]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn failures_exit_1_and_say_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.pem");
    let output = admin(&[
        Path::new("issue"),
        Path::new("--ca"),
        &missing,
        Path::new("--out"),
        &dir.path().join("n.pem"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let os = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    assert!(stderr.contains("nowhere.pem"), "{stderr}");
    // "No such file or directory (os error 2)": once, whatever the wording.
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr} ({os})");
    assert!(!dir.path().join("n.pem").exists());
}
