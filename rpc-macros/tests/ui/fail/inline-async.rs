use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[rpc(inline)]
    pub async fn f() {}
}
fn main() {}
