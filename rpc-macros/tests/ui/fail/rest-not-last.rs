use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f(#[rpc(rest)] xs: Vec<u8>, y: u8) -> u8 { y } }
fn main() {}
