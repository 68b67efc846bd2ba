use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub fn f((a, b): (i32, i32)) -> i32 { a + b } }
fn main() {}
