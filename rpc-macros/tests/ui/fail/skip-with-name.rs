use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[rpc(skip, name = "g")]
    pub fn f() {}
    pub fn h() {}
}
fn main() {}
