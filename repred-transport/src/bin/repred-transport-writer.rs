//! A durable node that writes numbered updates as fast as its acknowledgements
//! come back, printing `ack N` once `update(N)` returned (that is, once N is
//! on disk). The transport's crash test kills it with SIGKILL and checks the
//! store; it is also a quick way to watch group commit at work:
//!
//!     cargo run -p repred-transport --bin repred-transport-writer -- /tmp/w 9100 4
//!
//! Usage: `repred-transport-writer DATA_DIR PORT LANES [--bootstrap PORT] [--serve]`.
//! `LANES` writers run at once (lane `l` writes `l`, `l + LANES`, ...,
//! each awaiting its previous update), so their updates share commits.
//! On start it prints `listening PORT`, then `loaded COUNT`; with `--serve`
//! it writes nothing and only serves its peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use repred::GSet;
use repred_transport::{Handle, Node};

/// The numbers written so far: a grow-only set.
type Numbers = GSet<u64>;

struct Args {
    dir: PathBuf,
    port: u16,
    lanes: u64,
    bootstrap: Option<u16>,
    serve: bool,
}

fn parse() -> Option<Args> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next()?);
    let port = args.next()?.parse().ok()?;
    let lanes = args.next()?.parse().ok().filter(|&l| l > 0)?;
    let (mut bootstrap, mut serve) = (None, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bootstrap" => bootstrap = Some(args.next()?.parse().ok()?),
            "--serve" => serve = true,
            _ => return None,
        }
    }
    Some(Args { dir, port, lanes, bootstrap, serve })
}

/// Writes `lane`, `lane + lanes`, ... after the lane's highest number so far.
async fn lane(
    numbers: Handle<Numbers>,
    lane: u64,
    lanes: u64,
) -> Result<(), repred_transport::Error> {
    let mut next = numbers
        .read(|s| s.iter().filter(|n| *n % lanes == lane).last().map_or(lane, |n| n + lanes));
    loop {
        numbers.update([next].into()).await?;
        // println! locks stdout and Rust's stdout flushes at each newline,
        // so lines from different lanes never mix.
        println!("ack {next}");
        next += lanes;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(args) = parse() else {
        eprintln!(
            "usage: repred-transport-writer DATA_DIR PORT LANES [--bootstrap PORT] [--serve]"
        );
        return ExitCode::from(2);
    };
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let run = async {
        let node = Node::builder()
            .data_dir(&args.dir)
            .durable(true)
            .listen(localhost(args.port))
            .bootstrap(args.bootstrap.map(localhost))
            .heartbeat(Duration::from_millis(100))
            .down_after(Duration::from_millis(1_000))
            .spawn()
            .await?;
        println!("listening {}", node.addr().port());
        let numbers = node.replicate("numbers", Numbers::default())?;
        println!("loaded {}", numbers.read(|s| s.len()));
        if args.serve {
            std::future::pending::<()>().await;
        }
        let mut lanes = tokio::task::JoinSet::new();
        for l in 0..args.lanes {
            lanes.spawn(lane(numbers.clone(), l, args.lanes));
        }
        // Lanes only end on an error; the first one ends the process.
        match lanes.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(repred_transport::Error::Task(e.to_string())),
            None => Ok(()),
        }
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("repred-transport-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
