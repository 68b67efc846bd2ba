use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[rpc(hidden)]
    pub fn f() {}
}
fn main() {}
