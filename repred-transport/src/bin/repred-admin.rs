//! `repred-admin`: the operator's side of admission. It runs where the
//! cluster key lives, so that nodes do not need it:
//!
//!     repred-admin ca --dir ca/
//!     repred-admin issue --ca ca/cluster-ca.pem --out node-9000.pem --days 90
//!
//! then copy `ca/cluster.pem` and `node-9000.pem` into the new machine's data
//! directory; that node runs without ever seeing `cluster-ca.pem`. See
//! `repred_transport::identity` for what each file is and `usage` below
//! (`repred-admin --help`) for every command.
//!
//! Exit status: 0 done, 1 failed (the cause is printed), 2 bad arguments
//! (the usage is printed on stderr).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use repred_transport::identity::{
    self, CA_FILE, CLUSTER_FILE, ClusterCa, REVOKED_FILE, certificate_id, format_node_id,
    parse_node_id,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const USAGE: &str = "\
usage: repred-admin COMMAND [ARGS]

Manages a repred cluster's credentials. Run it where the cluster key is.

commands:
  ca --dir DIR
      Creates a cluster in DIR: cluster-ca.pem (certificate and private key,
      owner only: whoever holds it can admit nodes) and cluster.pem (the
      certificate only: copy it into every member's data directory).
  issue --ca CA_FILE --out FILE [--days N]
      Issues a node: a new key and a certificate signed by the cluster, into
      FILE (which must not exist; owner only). Prints the node id. Copy FILE
      into the node's data directory as node-<port>.pem, next to cluster.pem.
      --days N: valid for N days (1 to 36500); default: no practical end.
  renew --ca CA_FILE [--days N] FILE
      A new certificate for the key in FILE (the node id stays), replacing
      FILE. Prints the node id.
  revoke --dir DATA_DIR NODE_ID
      Adds NODE_ID (32 hex digits) to DATA_DIR/revoked. Every node refuses the
      ids in its own list at the handshake, both ways, from its next start:
      put the list on every node.
  id FILE
      Prints the node id of the certificate in FILE.
  help, --help, -h
      Prints this text.

exit status: 0 done, 1 failed, 2 bad arguments";

/// What to do, from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Ca { dir: PathBuf },
    Issue { ca: PathBuf, out: PathBuf, days: Option<u32> },
    Renew { ca: PathBuf, file: PathBuf, days: Option<u32> },
    Revoke { dir: PathBuf, id: String },
    Id { file: PathBuf },
}

/// The named options and positional arguments after the command word.
#[derive(Default)]
struct Parsed {
    options: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Parsed {
    /// Takes `--name VALUE` out; a second one is an error.
    fn take(&mut self, name: &str) -> Result<Option<String>, String> {
        let mut found = self.options.iter().filter(|(n, _)| n == name);
        if found.nth(1).is_some() {
            return Err(format!("{name} given twice"));
        }
        let at = self.options.iter().position(|(n, _)| n == name);
        Ok(at.map(|i| self.options.remove(i).1))
    }

    fn path(&mut self, name: &str) -> Result<PathBuf, String> {
        match self.take(name)? {
            Some(value) if value.is_empty() => Err(format!("{name} needs a non-empty path")),
            Some(value) => Ok(value.into()),
            None => Err(format!("missing {name}")),
        }
    }

    fn days(&mut self) -> Result<Option<u32>, String> {
        let Some(text) = self.take("--days")? else { return Ok(None) };
        match text.parse::<u32>() {
            Ok(days) if (1..=36_500).contains(&days) => Ok(Some(days)),
            _ => Err(format!("--days takes a whole number of days from 1 to 36500, not `{text}`")),
        }
    }

    /// The one positional argument, named `what` in errors.
    fn one(&mut self, what: &str) -> Result<String, String> {
        match self.positional.len() {
            1 => Ok(self.positional.remove(0)),
            0 => Err(format!("missing {what}")),
            _ => Err(format!("unexpected argument `{}`", self.positional[1])),
        }
    }

    /// Nothing may be left over.
    fn done(self) -> Result<(), String> {
        if let Some((name, _)) = self.options.first() {
            return Err(format!("unknown option `{name}` for this command"));
        }
        if let Some(arg) = self.positional.first() {
            return Err(format!("unexpected argument `{arg}`"));
        }
        Ok(())
    }
}

fn parse(args: &[String]) -> Result<Command, String> {
    // Help wins wherever it is, as users expect of `--help`.
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let Some((command, rest)) = args.split_first() else {
        return Err("missing COMMAND".into());
    };
    let mut parsed = Parsed::default();
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            parsed.positional.extend(rest.by_ref().cloned());
        } else if let Some(flag) = arg.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (format!("--{name}"), value.to_string()),
                None => {
                    let value = rest.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    (arg.clone(), value.clone())
                }
            };
            parsed.options.push((name, value));
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(format!("unknown option `{arg}`"));
        } else {
            parsed.positional.push(arg.clone());
        }
    }
    let command = match command.as_str() {
        "help" => Command::Help,
        "ca" => Command::Ca { dir: parsed.path("--dir")? },
        "issue" => Command::Issue {
            ca: parsed.path("--ca")?,
            out: parsed.path("--out")?,
            days: parsed.days()?,
        },
        "renew" => Command::Renew {
            ca: parsed.path("--ca")?,
            days: parsed.days()?,
            file: parsed.one("FILE")?.into(),
        },
        "revoke" => {
            let dir = parsed.path("--dir")?;
            let id = parsed.one("NODE_ID")?;
            if parse_node_id(&id).is_none() {
                return Err(format!("`{id}` is not a node id (32 hex digits)"));
            }
            Command::Revoke { dir, id }
        }
        "id" => Command::Id { file: parsed.one("FILE")?.into() },
        other => return Err(format!("unknown command `{other}`")),
    };
    parsed.done()?;
    Ok(command)
}

fn validity(days: Option<u32>) -> Option<Duration> {
    days.map(|d| Duration::from_secs(u64::from(d) * 24 * 60 * 60))
}

fn valid_for(days: Option<u32>) -> String {
    match days {
        Some(days) => format!("valid for {days} days"),
        None => "valid without a practical end".into(),
    }
}

/// The error and its causes, each once.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn run(command: Command) -> Result<(), String> {
    let fail = |e: identity::CredentialsError| chain(&e);
    match command {
        Command::Help => println!("{USAGE}"),
        Command::Ca { dir } => {
            ClusterCa::create(&dir).map_err(fail)?;
            println!(
                "created a cluster: {} (private: it admits nodes), {} (copy to every node)",
                dir.join(CA_FILE).display(),
                dir.join(CLUSTER_FILE).display()
            );
        }
        Command::Issue { ca, out, days } => {
            let issued = ClusterCa::load(&ca).map_err(fail)?.issue(validity(days)).map_err(fail)?;
            issued.write_new(&out).map_err(fail)?;
            eprintln!(
                "wrote {} ({}): copy it into the node's data directory as node-<port>.pem, \
                 next to {CLUSTER_FILE}",
                out.display(),
                valid_for(days)
            );
            println!("{}", format_node_id(issued.id()));
        }
        Command::Renew { ca, file, days } => {
            let ca = ClusterCa::load(&ca).map_err(fail)?;
            let old =
                std::fs::read(&file).map_err(|e| format!("cannot use {}: {e}", file.display()))?;
            let renewed = ca.renew(&old, validity(days)).map_err(fail)?;
            renewed.replace(&file).map_err(fail)?;
            eprintln!("renewed {} ({})", file.display(), valid_for(days));
            println!("{}", format_node_id(renewed.id()));
        }
        Command::Revoke { dir, id } => {
            let node = parse_node_id(&id).ok_or_else(|| format!("`{id}` is not a node id"))?;
            let list = dir.join(REVOKED_FILE);
            if identity::revoke(&dir, node).map_err(fail)? {
                println!(
                    "revoked {} in {} (nodes read it when they start)",
                    format_node_id(node),
                    list.display()
                );
            } else {
                println!("{} is in {} already", format_node_id(node), list.display());
            }
        }
        Command::Id { file } => println!("{}", format_node_id(id_of(&file)?)),
    }
    Ok(())
}

fn id_of(file: &Path) -> Result<repred::SourceId, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot use {}: {e}", file.display()))?;
    let cert = CertificateDer::from_pem_slice(&bytes)
        .map_err(|_| format!("{}: no certificate found (expected PEM)", file.display()))?;
    certificate_id(&cert)
        .ok_or_else(|| format!("{}: the certificate does not parse", file.display()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands_parse() {
        let id = "0123456789abcdef0123456789abcdef";
        let cases = [
            ("ca --dir d", Command::Ca { dir: "d".into() }),
            ("ca --dir=d", Command::Ca { dir: "d".into() }),
            (
                "issue --out n.pem --ca c.pem --days 30",
                Command::Issue { ca: "c.pem".into(), out: "n.pem".into(), days: Some(30) },
            ),
            (
                "renew n.pem --ca c.pem",
                Command::Renew { ca: "c.pem".into(), file: "n.pem".into(), days: None },
            ),
            (&format!("revoke --dir d {id}"), Command::Revoke { dir: "d".into(), id: id.into() }),
            ("id n.pem", Command::Id { file: "n.pem".into() }),
            ("issue --ca c --help", Command::Help),
            ("help", Command::Help),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&args(line)), Ok(want), "{line}");
        }
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let cases = [
            ("", "missing COMMAND"),
            ("mint", "unknown command"),
            ("ca", "missing --dir"),
            ("ca --dir", "--dir needs a value"),
            ("ca --dir d --dir e", "given twice"),
            ("ca --dir d extra", "unexpected argument"),
            ("ca --dir d --days 3", "unknown option `--days`"),
            ("issue --ca c", "missing --out"),
            ("issue --ca c --out n --days 0", "--days"),
            ("issue --ca c --out n --days many", "--days"),
            ("revoke --dir d nothex", "not a node id"),
            ("revoke --dir d", "missing NODE_ID"),
            ("id", "missing FILE"),
            ("id a b", "unexpected argument `b`"),
            ("id -x", "unknown option"),
        ];
        for (line, want) in cases {
            let err = parse(&args(line)).expect_err(line);
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}
