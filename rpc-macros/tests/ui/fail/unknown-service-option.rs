use rpc_macros::rpc_service;
pub struct S;
#[rpc_service(title = "s")]
impl S { pub fn f() {} }
fn main() {}
