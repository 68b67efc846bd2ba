use rpc_macros::rpc_service;
#[derive(serde::Serialize)]
pub struct S;
#[rpc_service]
impl S { pub fn make() -> Self { S } }
fn main() {}
