//! The feature examples of `examples/`, run as tests: each example's body
//! is a `run(out)` function, compiled here as a module, so the test runs
//! exactly the code `cargo run --example NAME` runs and checks what it
//! prints (nothing to build or spawn, on a clean clone or a warm one).

use std::io::Write;

/// What an example's `run` printed, or its error.
fn printed(run: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>) -> String {
    let mut out = Vec::new();
    if let Err(e) = run(&mut out) {
        let _ = writeln!(out, "ERROR: {e:#}");
        panic!("the example failed; it printed:\n{}", String::from_utf8_lossy(&out));
    }
    String::from_utf8(out).expect("examples print UTF-8")
}

/// Asserts that `out` has a line equal to `line`.
fn has_line(out: &str, line: &str) {
    assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
}

#[allow(dead_code)] // its `main`
#[path = "../examples/lattices.rs"]
mod lattices;

#[test]
fn lattices_merge_concurrent_writes() {
    let out = printed(lattices::run);
    print!("{out}");
    has_line(&out, "Max: a wrote 40, b wrote 35 -> both hold Some(40)");
    has_line(&out, r#"LwwRegister: a wrote red, b wrote blue later -> both hold Some("blue")"#);
    has_line(
        &out,
        r#"LwwMap: each key's newest write -> [("font", "serif"), ("lang", "en"), ("theme", "light")]"#,
    );
    has_line(&out, r#"GSet: a added ann and bo, b added cy -> ["ann", "bo", "cy"]"#);
    has_line(&out, r#"OrSet: b removed milk and eggs while a added milk again -> ["milk"]"#);
    has_line(&out, "PnCounter: a +5, b -2 -> 3 on both");
    has_line(&out, r#"EventLog: ["a joined", "b joined", "b said hi"]"#);
    has_line(
        &out,
        r#"LatticeMap<String, PnCounter>: votes per topic -> [("rust", 2), ("tabs", -1)]"#,
    );
    has_line(&out, r#"LatticeMap<String, GSet<String>>: tags of post-1 -> ["crdt", "rust"]"#);
}

#[allow(dead_code)]
#[path = "../examples/derive.rs"]
mod derive;

#[test]
fn derive_both_modes_replicate() {
    let out = printed(derive::run);
    print!("{out}");
    // Field by field: each change carries its fields alone; b's relayed by
    // b to c; a's second write (17 < 42) changed nothing and never arrives.
    has_line(
        &out,
        r#"c got from b: ProfileChange { name: LwwRegister(Some("bo")), badges: GSet({"first"}) }"#,
    );
    has_line(&out, "c got from a: ProfileChange { best: Max(Some(42)) }");
    assert!(!out.contains("Some(17)"), "a no-op travelled:\n{out}");
    has_line(&out, r#"a now holds: name Some("bo"), best Some(50), badges ["first"]"#);
    // Your own merge: the later sighting wins per person.
    has_line(&out, r#"c got from c: {"ann": 11, "bo": 9}"#);
    has_line(&out, r#"everyone holds: {"ann": 11, "bo": 12}"#);
}

#[allow(dead_code)]
#[path = "../examples/custom_reduce.rs"]
mod custom_reduce;

#[test]
fn custom_reduce_is_lawful_and_sends_only_what_shows() {
    let out = printed(custom_reduce::run);
    print!("{out}");
    has_line(&out, "the law checker: Leaderboard is a lawful join");
    has_line(&out, r#"merged, every board: [("bo", 50), ("dee", 40), ("ann", 30)]"#);
    has_line(&out, "c posts fay 15: too low: changes nothing, not sent");
    has_line(&out, "c posts gus 45: on its board, sent");
    for node in ["a", "b", "c"] {
        has_line(&out, &format!(r#"{node}'s board: [("bo", 50), ("gus", 45), ("dee", 40)]"#));
    }
}

#[allow(dead_code)]
#[path = "../examples/durable.rs"]
mod durable;

#[test]
fn durable_loses_nothing_across_a_restart() {
    let out = printed(durable::run);
    print!("{out}");
    has_line(&out, "wrote milk = 3 litres at Some(1700000000002.0), saved 1 entry");
    has_line(&out, r#"after the restart: [("bread", "rye"), ("milk", "3 litres")]"#);
    has_line(&out, "same id: true, history of 3 entries, clock at 1700000000002.0");
    has_line(
        &out,
        "a write with the wall clock a minute back: stamped 1700000000002.1, after 1700000000002.0: true",
    );
    has_line(&out, r#"a fresh peer got: [("bread", "rye"), ("eggs", "6"), ("milk", "3 litres")]"#);
}

#[allow(dead_code)]
#[path = "../examples/signed.rs"]
mod signed;

#[test]
fn signed_refuses_every_forgery() {
    let out = printed(signed::run);
    print!("{out}");
    assert!(out.contains(r#"bob holds motd = Some("hello from alice")"#), "{out}");
    has_line(
        &out,
        "forged (unsigned, in alice's name): refused: unverified: the update is not signed",
    );
    assert!(
        out.lines().any(|l| l.starts_with("forged (signed by mallory's key, in alice's name): refused: unverified: the signing key does not belong to source ")),
        "{out}"
    );
    has_line(
        &out,
        "forged (alice's signature on an altered change): refused: unverified: the signature does not match the update",
    );
    assert!(out.contains(r#"bob still holds motd = Some("hello from alice")"#), "{out}");
    assert!(out.trim_end().ends_with("refused: 3"), "{out}");
}

#[allow(dead_code)]
#[path = "../examples/laws.rs"]
mod laws;

#[test]
fn laws_catch_the_broken_reducers() {
    let out = printed(laws::run);
    print!("{out}");
    has_line(&out, "Max<u32>: lawful");
    assert!(out.contains("LastArrival: law violated: commutativity"), "{out}");
    assert!(out.contains("Tally: law violated: idempotence"), "{out}");
    assert!(!out.contains("unexpected"), "{out}");
}

#[allow(dead_code)]
#[path = "../examples/embed.rs"]
mod embed;

#[test]
fn embed_syncs_two_replicas_over_a_pipe() {
    let out = printed(embed::run);
    print!("{out}");
    has_line(&out, r#"a: ["hello from b", "synced"]"#);
    has_line(&out, r#"b: ["hello from a", "synced"]"#);
    assert!(out.contains("a holds 201 names and b 201"), "{out}");
    has_line(&out, "b applied 200 name(s) from a");
    has_line(&out, "b applied 1 name(s) from a");
    assert!(out.contains(r#"both hold "ann": true"#), "{out}");
}
