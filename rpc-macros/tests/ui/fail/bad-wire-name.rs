use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[rpc(name = "two words")]
    pub fn f() {}
}
fn main() {}
