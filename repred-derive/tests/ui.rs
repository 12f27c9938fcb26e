//! Compile-time behaviour of #[derive(Replicated)]: what compiles, and what
//! does not with which message (pinned in tests/ui/fail/*.stderr).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
