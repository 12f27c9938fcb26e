//! `catchup2p`: the catch-up scenario (`catchup`, in `quic.rs`) with its
//! two ends in two OS processes, each pinned to a core of its own.
//!
//! In `catchup` the source, the fresh node and quinn's work for both share
//! the machine's 2 cores in one process, which caps the history path near
//! 0.38 of raw quinn by CPU alone. Here the bench re-executes itself twice:
//! a *sender* that holds the source replica (the same `history_source`,
//! served by the same `serve`), and a *receiver* that is the fresh node (the
//! same session loop as `fetch_until`), each pinned with
//! `sched_setaffinity` to one CPU, talking QUIC over 127.0.0.1. Raw quinn
//! moves the same bytes between the same two pinned processes, on a fresh
//! connection, right after each transfer. Times are the receiver's, from
//! its connection being up to the fresh node being caught up, as in
//! `catchup`; CPU is each process's own over the transfer.
//!
//! The parent only orchestrates: it sends each child one command per line
//! on its stdin and reads one answer per line from its stdout, every wait
//! bounded (`CATCHUP2P_TIMEOUT` seconds, default 120, per transfer; the
//! sources take longer to build, five times that). A child that fails
//! writes why to stderr (inherited) and exits; the parent then fails with
//! the child's exit status. Children are killed when the parent returns or
//! unwinds, and die with it if it is killed (`PR_SET_PDEATHSIG`).
//!
//! Environment: `CATCHUP_RUNS` (default 5) runs of each path;
//! `CATCHUP_HISTORY=0` runs the cheaper path alone; `CATCHUP2P_PIN=0`
//! leaves the processes unpinned (for comparison); `CATCHUP2P_WORKERS`
//! tokio worker threads per process (default 2, as `catchup`'s runtime; 0:
//! a current-thread runtime); `CATCHUP_PART_BYTES` as in `catchup`;
//! `CATCHUP2P_READ_BYTES` (a diagnostic, see `fetch`) the fresh node's
//! reads into a buffer of that size instead of `catchup`'s chunk by chunk.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use repred::{Clock, Reduce, Replica, SourceId, StreamOpts};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bigstate::BigLww;
use crate::quic::{FixedLww, cpu_time, history_source, serve};

const NOW: u64 = 1_700_000_000_000;
/// History updates the source holds, over 100,000 keys from 100 sources.
const TOTAL: u64 = 1_000_000;
/// Scenario arguments the parent gives its children.
pub const SENDER_ROLE: &str = "catchup2p-sender";
/// See [`SENDER_ROLE`].
pub const RECEIVER_ROLE: &str = "catchup2p-receiver";
/// The variable that tells a child its CPU (absent: not pinned).
const CPU_VAR: &str = "CATCHUP2P_CPU";

/// What stops the two-process catch-up scenario, in the parent or in a
/// child.
#[derive(Debug, thiserror::Error)]
pub enum Catchup2pError {
    #[error("cannot start the {role} process ({exe}): {source}")]
    Spawn { role: &'static str, exe: String, source: std::io::Error },
    #[error(
        "the {role} process exited ({status}) while the bench waited for {waiting}; its stderr above says why"
    )]
    Exited { role: &'static str, status: String, waiting: String },
    #[error(
        "the {role} process did not answer {waiting} within {secs} s and was killed; on a busy machine raise CATCHUP2P_TIMEOUT"
    )]
    Timeout { role: &'static str, waiting: String, secs: u64 },
    #[error("the {role} process answered {line:?} to {waiting}, which the bench cannot read")]
    Answer { role: &'static str, waiting: String, line: String },
    #[error("cannot write a command to the {role} process: {source}")]
    Command { role: &'static str, source: std::io::Error },
    #[error(
        "the bench may run on {0} CPU(s) here; the two ends need one each (or set CATCHUP2P_PIN=0)"
    )]
    Cpus(usize),
    #[error("cannot pin this process to CPU {cpu}: {source}")]
    Pin { cpu: usize, source: std::io::Error },
    #[error("{0} is not a valid {1} (the parent's command line is out of step with this binary)")]
    Argument(String, &'static str),
    #[error("cannot set up QUIC on 127.0.0.1: {0}")]
    Setup(String),
    #[error("the transfer failed: {0}")]
    Transfer(String),
    #[error("the transfer took longer than {0} s")]
    TransferTimeout(u64),
    #[error("the fresh node did not catch up: {0}")]
    Incomplete(String),
    #[error("cannot read the parent's commands: {0}")]
    Stdin(std::io::Error),
}

type Result<T, E = Catchup2pError> = std::result::Result<T, E>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn transfer_timeout() -> Duration {
    Duration::from_secs(env("CATCHUP2P_TIMEOUT", 120))
}

// ------------------------------------------------------------ the parent

/// A child process of the bench with its command pipe and its answers.
struct Peer {
    role: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(role: &'static str, args: &[String], cpu: Option<usize>) -> Result<Peer> {
        let exe = std::env::current_exe().map_err(|source| Catchup2pError::Spawn {
            role,
            exe: "?".into(),
            source,
        })?;
        let mut command = Command::new(&exe);
        command.arg(role).args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        match cpu {
            Some(cpu) => command.env(CPU_VAR, cpu.to_string()),
            None => command.env_remove(CPU_VAR),
        };
        let spawn_error =
            |source| Catchup2pError::Spawn { role, exe: exe.display().to_string(), source };
        let mut child = command.spawn().map_err(spawn_error)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(std::io::Error::other("no pipes to the child")));
        };
        // A thread per child turns its answers into a channel the parent
        // can wait on with a deadline; it ends with the child's stdout.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Peer { role, child, stdin, lines })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|source| Catchup2pError::Command { role: self.role, source })
    }

    /// The child's next answer, split in words, which must start with
    /// `word`.
    fn answer(&mut self, word: &str, waiting: &str, within: Duration) -> Result<Vec<String>> {
        let line = match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                return Err(Catchup2pError::Timeout {
                    role: self.role,
                    waiting: waiting.into(),
                    secs: within.as_secs(),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Catchup2pError::Exited {
                    role: self.role,
                    status: self.status(),
                    waiting: waiting.into(),
                });
            }
        };
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        if words.first().map(String::as_str) != Some(word) {
            return Err(Catchup2pError::Answer { role: self.role, waiting: waiting.into(), line });
        }
        Ok(words)
    }

    /// How the child ended, once its stdout has closed: waited for a few
    /// seconds, then killed.
    fn status(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return format!("status unknown: {e}"),
            }
        }
        let _ = self.child.kill();
        "closed its stdout and did not exit; killed".into()
    }

    /// Asks the child to quit and waits a few seconds for it (the drop
    /// kills it if it has not).
    fn quit(mut self) {
        if self.send("quit").is_ok() {
            let _ = self.status();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPUs this process may run on (`sched_getaffinity`).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed, for the call to fill.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads `set` within its size (cpu < CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time the machine's other processes used while a section ran: all
/// busy CPU time (`/proc/stat`) less this process's and its children's,
/// a better figure of interference than the load average, which lags.
struct OtherLoad {
    start: Instant,
    machine: u64,
    ours: u64,
    pids: [u32; 3],
}

impl OtherLoad {
    fn start(sender: &Peer, receiver: &Peer) -> OtherLoad {
        let pids = [std::process::id(), sender.child.id(), receiver.child.id()];
        let ours = pids.iter().map(|&p| process_ticks(p)).sum();
        OtherLoad { start: Instant::now(), machine: machine_busy_ticks(), ours, pids }
    }

    fn report(&self) -> String {
        let ours: u64 = self.pids.iter().map(|&p| process_ticks(p)).sum();
        let machine = machine_busy_ticks().saturating_sub(self.machine);
        let ticks = machine.saturating_sub(ours.saturating_sub(self.ours));
        // SAFETY: sysconf takes a constant and no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let wall = self.start.elapsed().as_secs_f64();
        format!(
            "other processes used {:.2} s of CPU over these {wall:.1} s ({:.2} cores of 2)",
            ticks as f64 / hz,
            ticks as f64 / hz / wall
        )
    }
}

/// Busy CPU ticks of the whole machine so far (user, nice, system, irq,
/// softirq, steal).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else { return 0 };
    let ticks: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum()
}

/// CPU ticks (user and system) a process has used so far; 0 once gone.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's name (in parentheses, and it may
    // hold spaces): utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11..13).map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}

/// One transfer's figures: the receiver's time and each end's CPU.
struct Transfer {
    time: Duration,
    stream_bytes: u64,
    udp_bytes: u64,
    count: u64,
    sender_cpu: Duration,
    receiver_cpu: Duration,
}

fn number<T: std::str::FromStr>(words: &[String], i: usize, what: &'static str) -> Result<T> {
    let word = words.get(i).map_or("", String::as_str);
    word.parse().map_err(|_| Catchup2pError::Argument(word.into(), what))
}

/// One transfer: the sender is told to accept and serve, then the
/// receiver to connect and fetch; both report.
fn transfer(
    sender: &mut Peer,
    receiver: &mut Peer,
    serve: &str,
    fetch: &str,
    within: Duration,
) -> Result<Transfer> {
    sender.send(serve)?;
    sender.answer("listening", &format!("`{serve}`"), within)?;
    receiver.send(fetch)?;
    let r = receiver.answer("done", &format!("the end of `{fetch}`"), within)?;
    let s = sender.answer("done", &format!("the end of `{serve}`"), within)?;
    Ok(Transfer {
        time: Duration::from_nanos(number(&r, 1, "time")?),
        receiver_cpu: Duration::from_nanos(number(&r, 2, "CPU time")?),
        count: number(&r, 3, "count")?,
        stream_bytes: number(&s, 1, "byte count")?,
        udp_bytes: number(&s, 2, "byte count")?,
        sender_cpu: Duration::from_nanos(number(&s, 3, "CPU time")?),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut rows: Vec<f64>) -> f64 {
    rows.sort_by(f64::total_cmp);
    rows.get(rows.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The scenario: starts the two ends, runs the history path and then the
/// cheaper path `CATCHUP_RUNS` times each, each followed by raw quinn
/// moving the same bytes, and prints the tables.
pub fn catchup2p() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catchup2p: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let runs = env("CATCHUP_RUNS", 5);
    let within = transfer_timeout();
    let (sender_cpu, receiver_cpu) = if env("CATCHUP2P_PIN", 1) == 0 {
        (None, None)
    } else {
        match allowed_cpus()[..] {
            [a, b, ..] => (Some(a), Some(b)),
            ref cpus => return Err(Catchup2pError::Cpus(cpus.len())),
        }
    };
    let pinning = match (sender_cpu, receiver_cpu) {
        (Some(a), Some(b)) => format!("sender pinned to CPU {a}, receiver to CPU {b}"),
        _ => "not pinned".into(),
    };
    println!(
        "### catch-up with the two ends in two processes: a fresh node pulls 1,000,000 history updates from 100 sources over loopback QUIC\n"
    );
    println!("`CATCHUP_RUNS={runs} cargo run --release -p repred-bench -- catchup2p`\n");
    println!(
        "The `catchup` scenario's source, session loop and raw-quinn baseline, with the source in one process and the fresh node in another ({pinning}; {} tokio worker(s) each{}), over 127.0.0.1. Load average at the start: {}.\n",
        env("CATCHUP2P_WORKERS", 2),
        match env("CATCHUP2P_READ_BYTES", 0) {
            0 => String::new(),
            n => format!("; the fresh node reads up to {n} bytes at a time"),
        },
        load_average()
    );
    let mut sender = Peer::spawn(SENDER_ROLE, &[], sender_cpu)?;
    let ready = sender.answer("ready", "its endpoint", within)?;
    let (Some(addr), Some(cert)) = (ready.get(1), ready.get(2)) else {
        return Err(Catchup2pError::Answer {
            role: sender.role,
            waiting: "its endpoint".into(),
            line: ready.join(" "),
        });
    };
    let mut receiver = Peer::spawn(RECEIVER_ROLE, &[addr.clone(), cert.clone()], receiver_cpu)?;
    receiver.answer("ready", "its endpoint", within)?;
    let build = within * 5;

    if env("CATCHUP_HISTORY", 1) != 0 {
        sender.send("source history")?;
        sender.answer("built", "the history source", build)?;
        println!("#### the history path (`FixedLww`)\n");
        println!(
            "| run | repred time | updates/s | stream bytes/update | UDP bytes/update | raw quinn time | raw MB/s | repred / raw throughput | CPU sender / receiver | raw CPU sender / receiver |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut ratios = Vec::new();
        let others = OtherLoad::start(&sender, &receiver);
        for run in 1..=runs {
            let ours =
                transfer(&mut sender, &mut receiver, "serve", &format!("history {TOTAL}"), within)?;
            if ours.count != TOTAL {
                return Err(Catchup2pError::Incomplete(format!(
                    "{} history updates applied of {TOTAL}",
                    ours.count
                )));
            }
            let bytes = ours.stream_bytes;
            let raw = transfer(
                &mut sender,
                &mut receiver,
                &format!("raw {bytes}"),
                &format!("raw {bytes}"),
                within,
            )?;
            let ratio = raw.time.as_secs_f64() / ours.time.as_secs_f64();
            println!(
                "| {run} | {:.3} s | {:.2} M | {:.1} | {:.1} | {:.3} s | {:.0} | {ratio:.2} | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
                ours.time.as_secs_f64(),
                TOTAL as f64 / ours.time.as_secs_f64() / 1e6,
                bytes as f64 / TOTAL as f64,
                ours.udp_bytes as f64 / TOTAL as f64,
                raw.time.as_secs_f64(),
                bytes as f64 / raw.time.as_secs_f64() / 1e6,
                ms(ours.sender_cpu),
                ms(ours.receiver_cpu),
                ms(raw.sender_cpu),
                ms(raw.receiver_cpu),
            );
            ratios.push(ratio);
        }
        println!(
            "\nmedian repred / raw quinn throughput by history: {:.2} (goal: at least 0.6). Load average: {}; {}.\n",
            median(ratios),
            load_average(),
            others.report()
        );
    }

    sender.send("source snapshot")?;
    let built = sender.answer("built", "the cheaper path's source", build)?;
    let (Some(clock), Some(entries)) = (built.get(1), built.get(2)) else {
        return Err(Catchup2pError::Answer {
            role: sender.role,
            waiting: "the cheaper path's source".into(),
            line: built.join(" "),
        });
    };
    println!(
        "#### the cheaper path (`BigLww`: the fresh node is sent a streamed snapshot of {entries} entries)\n"
    );
    println!(
        "| run | repred time | stream bytes | raw quinn time, same bytes | repred / raw time | CPU sender / receiver | raw CPU sender / receiver |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    let others = OtherLoad::start(&sender, &receiver);
    for run in 1..=runs {
        let fetch = format!("snapshot {clock} {entries}");
        let ours = transfer(&mut sender, &mut receiver, "serve", &fetch, within)?;
        let bytes = ours.stream_bytes;
        let raw = transfer(
            &mut sender,
            &mut receiver,
            &format!("raw {bytes}"),
            &format!("raw {bytes}"),
            within,
        )?;
        let ratio = ours.time.as_secs_f64() / raw.time.as_secs_f64();
        println!(
            "| {run} | {:.4} s | {bytes} | {:.4} s | {ratio:.2} | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
            ours.time.as_secs_f64(),
            raw.time.as_secs_f64(),
            ms(ours.sender_cpu),
            ms(ours.receiver_cpu),
            ms(raw.sender_cpu),
            ms(raw.receiver_cpu),
        );
        ratios.push(ratio);
    }
    println!(
        "\nmedian repred / raw quinn time by the cheaper path: {:.2} (goal: at most 1.5). Load average: {}; {}.\n",
        median(ratios),
        load_average(),
        others.report()
    );
    sender.quit();
    receiver.quit();
    Ok(())
}

// ------------------------------------------------------------ the children

/// Pins this process (its threads to come: call it first) to the CPU the
/// parent named, and makes the kernel kill it if the parent dies.
fn child_setup() -> Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no
    // pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let Ok(cpu) = std::env::var(CPU_VAR) else { return Ok(()) };
    let cpu: usize = cpu.parse().map_err(|_| Catchup2pError::Argument(cpu, "CPU number"))?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Catchup2pError::Argument(cpu.to_string(), "CPU number"));
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes
    // within it (cpu < CPU_SETSIZE, checked above); sched_setaffinity
    // reads it at the size passed.
    let failed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
    };
    if failed {
        return Err(Catchup2pError::Pin { cpu, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// The child's tokio runtime: `CATCHUP2P_WORKERS` worker threads (2, as
/// `quic::runtime`, unless set), or with 0 a current-thread runtime
/// (quinn's drivers and the session loop on the thread that blocks on
/// them; on one core raw quinn measured twice as slow so).
fn child_runtime() -> Result<tokio::runtime::Runtime> {
    let mut builder = match env("CATCHUP2P_WORKERS", 2) {
        0 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers as usize);
            b
        }
    };
    builder.enable_all().build().map_err(|e| Catchup2pError::Setup(format!("tokio runtime: {e}")))
}

/// One answer to the parent, on its own line.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, what: &'static str) -> Result<Vec<u8>> {
    let bad = || Catchup2pError::Argument(text.chars().take(40).collect(), what);
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()).ok_or_else(bad))
        .collect()
}

fn failed(e: impl std::fmt::Display) -> Catchup2pError {
    Catchup2pError::Transfer(e.to_string())
}

/// Runs `f` within the transfer timeout.
async fn bounded<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    let within = transfer_timeout();
    tokio::time::timeout(within, f)
        .await
        .map_err(|_| Catchup2pError::TransferTimeout(within.as_secs()))?
}

/// Runs a child role, printing its error for the parent's stderr.
fn child(role: fn() -> Result<()>) -> ExitCode {
    match role() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catchup2p child: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The sender's process: see [`SENDER_ROLE`].
pub fn sender() -> ExitCode {
    child(sender_role)
}

/// The receiver's process: see [`SENDER_ROLE`].
pub fn receiver() -> ExitCode {
    child(receiver_role)
}

/// The source of whichever path the parent asked for.
enum Source {
    None,
    History(Replica<FixedLww>),
    Cheaper(Replica<BigLww>),
}

fn sender_role() -> Result<()> {
    child_setup()?;
    let rt = child_runtime()?;
    let (endpoint, cert) = rt.block_on(async { server_endpoint() })?;
    let addr = endpoint.local_addr().map_err(|e| Catchup2pError::Setup(e.to_string()))?;
    say(&format!("ready {addr} {}", hex(&cert)));
    let mut source = Source::None;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(Catchup2pError::Stdin)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["source", "history"] => {
                // The old source goes first: two 1M-record histories at
                // once would double the process's memory for nothing.
                drop(std::mem::replace(&mut source, Source::None));
                let r = history_source::<FixedLww>(TOTAL as usize, 100);
                say(&format!("built {} {}", clock_hex(r.clock())?, r.state().0.len()));
                source = Source::History(r);
            }
            ["source", "snapshot"] => {
                drop(std::mem::replace(&mut source, Source::None));
                let r = history_source::<BigLww>(TOTAL as usize, 100);
                say(&format!("built {} {}", clock_hex(r.clock())?, r.state().0.len()));
                source = Source::Cheaper(r);
            }
            ["serve"] => {
                say("listening");
                let cpu = cpu_time(false);
                let (bytes, udp) = match std::mem::replace(&mut source, Source::None) {
                    Source::History(r) => {
                        let (r, bytes, udp) = rt.block_on(bounded(serve_one(&endpoint, r)))?;
                        source = Source::History(r);
                        (bytes, udp)
                    }
                    Source::Cheaper(r) => {
                        let (r, bytes, udp) = rt.block_on(bounded(serve_one(&endpoint, r)))?;
                        source = Source::Cheaper(r);
                        (bytes, udp)
                    }
                    Source::None => {
                        return Err(Catchup2pError::Argument("serve".into(), "command yet"));
                    }
                };
                let cpu = cpu_time(false) - cpu;
                say(&format!("done {bytes} {udp} {}", cpu.as_nanos()));
            }
            ["raw", bytes] => {
                let bytes: u64 =
                    bytes.parse().map_err(|_| Catchup2pError::Argument(bytes.into(), "size"))?;
                say("listening");
                let cpu = cpu_time(false);
                let udp = rt.block_on(bounded(raw_send(&endpoint, bytes)))?;
                let cpu = cpu_time(false) - cpu;
                say(&format!("done {bytes} {udp} {}", cpu.as_nanos()));
            }
            ["quit"] => break,
            _ => return Err(Catchup2pError::Argument(line, "command")),
        }
    }
    Ok(())
}

fn clock_hex(clock: &Clock) -> Result<String> {
    let bytes = postcard::to_allocvec(clock).map_err(|e| Catchup2pError::Setup(e.to_string()))?;
    Ok(hex(&bytes))
}

/// The next connection to `endpoint`, accepted.
async fn accept(endpoint: &Endpoint) -> Result<Connection> {
    let incoming = endpoint.accept().await.ok_or_else(|| failed("the endpoint closed"))?;
    incoming.await.map_err(failed)
}

/// One catch-up's source side (`quic::serve`), then the connection closed
/// once the receiver has acknowledged everything: (the source back, stream
/// bytes, UDP bytes sent).
async fn serve_one<T>(endpoint: &Endpoint, source: Replica<T>) -> Result<(Replica<T>, u64, u64)>
where
    T: Reduce + Send + 'static,
    T::Update: Send,
{
    let conn = accept(endpoint).await?;
    let (source, bytes) = serve(conn.clone(), source).await;
    let udp = conn.stats().udp_tx.bytes;
    conn.close(0u32.into(), b"done");
    Ok((source, bytes, udp))
}

/// quinn alone, the sending side of `quic::raw`: `bytes` bytes in 256 KiB
/// writes on the stream the receiver opens.
async fn raw_send(endpoint: &Endpoint, bytes: u64) -> Result<u64> {
    let conn = accept(endpoint).await?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(failed)?;
    let mut hello = [0u8; 1];
    recv.read(&mut hello).await.map_err(failed)?;
    let data = vec![0x5Au8; 256 << 10];
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(data.len());
        send.write_all(&data[..n]).await.map_err(failed)?;
        left -= n;
    }
    send.finish().map_err(failed)?;
    let _ = send.stopped().await;
    let udp = conn.stats().udp_tx.bytes;
    conn.close(0u32.into(), b"done");
    Ok(udp)
}

fn receiver_role() -> Result<()> {
    child_setup()?;
    let mut args = std::env::args().skip(2);
    let (Some(addr), Some(cert)) = (args.next(), args.next()) else {
        return Err(Catchup2pError::Argument("(missing)".into(), "address and certificate"));
    };
    let addr: SocketAddr =
        addr.parse().map_err(|_| Catchup2pError::Argument(addr.clone(), "address"))?;
    let cert = unhex(&cert, "certificate")?;
    let rt = child_runtime()?;
    let endpoint = rt.block_on(async { client_endpoint(cert) })?;
    say("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(Catchup2pError::Stdin)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let cpu = cpu_time(false);
        let (time, count) = match words[..] {
            ["history", total] => {
                let total: u64 =
                    total.parse().map_err(|_| Catchup2pError::Argument(total.into(), "count"))?;
                let (time, fresh) = rt.block_on(bounded(async {
                    let conn = connect(&endpoint, addr).await?;
                    let got = fetch::<FixedLww>(&conn, |r| r.stats().applied >= total).await;
                    closed(&conn).await;
                    got
                }))?;
                (time, fresh.stats().applied)
            }
            ["snapshot", clock, entries] => {
                let entries: usize = entries
                    .parse()
                    .map_err(|_| Catchup2pError::Argument(entries.into(), "count"))?;
                let target: Clock = postcard::from_bytes(&unhex(clock, "clock")?)
                    .map_err(|_| Catchup2pError::Argument(clock.into(), "clock"))?;
                let (time, fresh) = rt.block_on(bounded(async {
                    let conn = connect(&endpoint, addr).await?;
                    // As in `catchup`: the clock is compared only once the
                    // snapshot is in.
                    let got = fetch::<BigLww>(&conn, |r| {
                        r.stats().snapshots >= 1 && r.clock() == &target
                    })
                    .await;
                    closed(&conn).await;
                    got
                }))?;
                if fresh.clock() != &target || fresh.state().0.len() != entries {
                    return Err(Catchup2pError::Incomplete(format!(
                        "{} entries of {entries}, clock equal to the source's: {}",
                        fresh.state().0.len(),
                        fresh.clock() == &target
                    )));
                }
                (time, fresh.state().0.len() as u64)
            }
            ["raw", bytes] => {
                let bytes: u64 =
                    bytes.parse().map_err(|_| Catchup2pError::Argument(bytes.into(), "size"))?;
                rt.block_on(bounded(raw_receive(&endpoint, addr, bytes)))?
            }
            ["quit"] => break,
            _ => return Err(Catchup2pError::Argument(line, "command")),
        };
        let cpu = cpu_time(false) - cpu;
        say(&format!("done {} {} {count}", time.as_nanos(), cpu.as_nanos()));
    }
    Ok(())
}

async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection> {
    endpoint.connect(addr, "localhost").map_err(failed)?.await.map_err(failed)
}

/// Waits (a few seconds at most) for the sender to close the connection,
/// so that it has had every acknowledgement before the next transfer.
async fn closed(conn: &Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

/// The fresh node's side, as `quic::fetch_until`: its Hello, then what
/// comes, handled read by read. The time is taken, from before the
/// stream is opened, when `done` first holds, as `catchup` does; the
/// stream is then read to its end (untimed), so that the sender's last
/// writes are not refused by a stream the receiver dropped.
async fn fetch<T: Reduce + Default>(
    conn: &Connection,
    done: impl Fn(&Replica<T>) -> bool,
) -> Result<(Duration, Replica<T>)> {
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(failed)?;
    let mut fresh = Replica::new(SourceId::random(), T::default());
    let sid = fresh.open(StreamOpts::default().tail(false)).map_err(failed)?;
    let mut out = Vec::new();
    while fresh.poll_transmit(sid, &mut out).map_err(failed)? > 0 {}
    send.write_all(&out).await.map_err(failed)?;
    out.clear();
    // `CATCHUP2P_READ_BYTES`: reads into a buffer of that size, each of
    // several of quinn's chunks, instead of one chunk (~1.2 kB) per read as
    // `catchup` does: to tell the cost per read from the cost per byte.
    let read_bytes = env("CATCHUP2P_READ_BYTES", 0) as usize;
    let mut buf = vec![0u8; read_bytes];
    let mut time = None;
    loop {
        if time.is_none() && done(&fresh) {
            time = Some(start.elapsed());
        }
        if read_bytes > 0 {
            let Some(n) = recv.read(&mut buf).await.map_err(failed)? else { break };
            fresh.handle(sid, NOW + 2_000, &buf[..n]).map_err(failed)?;
        } else {
            let Some(chunk) = recv.read_chunk(usize::MAX, true).await.map_err(failed)? else {
                break;
            };
            fresh.handle(sid, NOW + 2_000, &chunk.bytes).map_err(failed)?;
        }
        while fresh.poll_transmit(sid, &mut out).unwrap_or(0) > 0 {}
        if !out.is_empty() {
            let _ = send.write_all(&out).await;
            out.clear();
        }
    }
    let _ = send.finish();
    let time = time.ok_or_else(|| {
        Catchup2pError::Incomplete(format!(
            "the stream ended after {} updates and {} snapshots",
            fresh.stats().applied,
            fresh.stats().snapshots
        ))
    })?;
    Ok((time, fresh))
}

/// quinn alone, the receiving side of `quic::raw`: (time from the
/// connection being up to the stream's end, bytes read).
async fn raw_receive(endpoint: &Endpoint, addr: SocketAddr, bytes: u64) -> Result<(Duration, u64)> {
    let conn = connect(endpoint, addr).await?;
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(failed)?;
    send.write_all(&[1]).await.map_err(failed)?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.map_err(failed)? {
        got += chunk.bytes.len() as u64;
    }
    let time = start.elapsed();
    closed(&conn).await;
    if got != bytes {
        return Err(Catchup2pError::Incomplete(format!("raw quinn moved {got} bytes of {bytes}")));
    }
    Ok((time, got))
}

/// The sender's endpoint on 127.0.0.1 with a fresh self-signed
/// certificate (TLS 1.3, ring, as `quic::connect`), and that certificate
/// for the receiver to trust.
fn server_endpoint() -> Result<(Endpoint, Vec<u8>)> {
    let setup = |e: &dyn std::fmt::Display| Catchup2pError::Setup(e.to_string());
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).map_err(|e| setup(&e))?;
    let der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .map_err(|e| setup(&e))?;
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint =
        Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| setup(&e))?;
    Ok((endpoint, der.to_vec()))
}

/// The receiver's endpoint on 127.0.0.1, trusting the sender's
/// certificate only.
fn client_endpoint(cert: Vec<u8>) -> Result<Endpoint> {
    let setup = |e: &dyn std::fmt::Display| Catchup2pError::Setup(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert)).map_err(|e| setup(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
    let mut endpoint =
        Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| setup(&e))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(endpoint)
}
