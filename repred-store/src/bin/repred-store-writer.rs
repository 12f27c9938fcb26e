//! Writes numbered updates into a store as fast as it can, saving every
//! batch and printing `ack N` once update N is durable. The crash test kills
//! it with SIGKILL at random moments; it is also a quick load generator:
//!
//!     cargo run -p repred-store --bin repred-store-writer -- /tmp/w.redb 0 64

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use repred::{Config, GSet};
use repred_store::Store;

/// The numbers written so far: a grow-only set.
type Written = GSet<u64>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: repred-store-writer <store file> <first number> <batch size> [count]";
    let (Some(path), Some(first), Some(batch)) = (
        args.get(1),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<u64>().ok()).filter(|&b| b > 0),
    ) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let count = args.get(4).and_then(|a| a.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(path)?;
        let config = Config::default().history_limit(1_024);
        let mut replica = store.load_or_create::<Written>("numbers", config)?;
        let mut out = std::io::stdout().lock();
        let mut n = first;
        while n < first.saturating_add(count) {
            for _ in 0..batch {
                replica.update(now(), [n].into())?;
                n += 1;
            }
            store.save("numbers", &replica)?;
            writeln!(out, "ack {}", n - 1)?;
            out.flush()?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repred-store-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
