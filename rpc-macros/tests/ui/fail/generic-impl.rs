use rpc_macros::rpc_service;
pub struct S<T>(T);
#[rpc_service]
impl<T: Send + Sync + 'static> S<T> { pub fn f() {} }
fn main() {}
