use rpc_macros::rpc_service;
pub struct S;
macro_rules! m { () => { pub fn f() {} } }
#[rpc_service]
impl S { m!(); }
fn main() {}
