//! Compile-time behaviour of `#[rpc_service]`: one failing case per error message, plus
//! passing cases. Regenerate snapshots with `TRYBUILD=overwrite cargo test -p rpc-macros --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
