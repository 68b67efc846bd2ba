use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f(__rpc_args: u8) -> u8 { __rpc_args } }
fn main() {}
