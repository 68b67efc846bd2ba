use rpc_macros::rpc_service;
pub struct Health;
#[rpc_service(name = "_rpc")]
impl Health {
    pub fn health() -> u8 { 0 }
}
pub struct Admin;
#[rpc_service(name = "_rpc_admin")]
impl Admin {
    pub fn reset() -> u8 { 0 }
}
fn main() {}
