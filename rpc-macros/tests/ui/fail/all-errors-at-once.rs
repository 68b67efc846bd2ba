use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    pub fn a(self) {}
    pub fn b(x: &u8) {}
    pub fn new() {}
    pub fn ok(x: u8) -> u8 { x }
}
fn main() {
    // The impl is re-emitted: its methods still exist, so this line adds no error.
    S::ok(1);
}
