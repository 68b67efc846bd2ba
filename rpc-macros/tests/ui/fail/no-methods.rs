use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[rpc(skip)]
    pub fn f() {}
}
fn main() {}
