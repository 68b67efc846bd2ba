use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S { pub unsafe fn f() {} }
fn main() {}
