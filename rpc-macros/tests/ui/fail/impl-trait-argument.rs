use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f(x: impl Into<u8>) -> u8 { x.into() } }
fn main() {}
