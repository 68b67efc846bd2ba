use rpc_macros::rpc_service;
pub struct NotData;
pub struct S;
#[rpc_service]
impl S { pub fn f(x: NotData) -> u8 { let _ = x; 0 } }
fn main() {}
