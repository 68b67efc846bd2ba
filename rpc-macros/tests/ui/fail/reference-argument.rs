use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f(name: &str) -> usize { name.len() } }
fn main() {}
