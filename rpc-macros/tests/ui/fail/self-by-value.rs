use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f(self) {} }
fn main() {}
