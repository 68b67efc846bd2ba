use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f<T>(x: u8) -> u8 { x } }
fn main() {}
