use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    pub fn add() {}
    #[rpc(name = "add")]
    pub fn plus() {}
}
fn main() {}
