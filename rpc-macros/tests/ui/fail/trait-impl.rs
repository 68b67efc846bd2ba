use rpc_macros::rpc_service;
pub struct S;
trait T { fn f(); }
#[rpc_service]
impl T for S { fn f() {} }
fn main() {}
