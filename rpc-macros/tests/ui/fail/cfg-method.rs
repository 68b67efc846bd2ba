use rpc_macros::rpc_service;
pub struct S;
#[rpc_service]
impl S {
    #[cfg(test)]
    pub fn f() {}
    pub fn g() {}
}
fn main() {}
