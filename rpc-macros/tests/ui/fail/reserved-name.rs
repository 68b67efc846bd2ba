use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn new() -> u8 { 0 } }
fn main() {}
