//! The generated code uses absolute paths only: it compiles where the prelude is absent and
//! where common names are shadowed.
#![allow(dead_code)]

mod shadowing {
    // Names a careless expansion might pick up from the caller's scope.
    pub struct Result;
    pub struct Option;
    pub struct Box;
    pub struct Arc;
    pub struct String;
    pub struct Vec;
}

mod service {
    #![no_implicit_prelude]
    #[allow(unused_imports)]
    use super::shadowing::*;

    pub struct Hygienic;

    #[::rpc_macros::rpc_service]
    impl Hygienic {
        pub fn add(a: i64, b: i64) -> i64 {
            a + b
        }

        pub async fn greet(
            &self,
            name: ::std::string::String,
        ) -> ::core::result::Result<::std::string::String, ::rpc_core::HandlerError> {
            ::core::result::Result::Ok(::std::format!("hi {name}"))
        }

        pub fn spread(#[rpc(rest)] xs: ::std::vec::Vec<u8>) -> usize {
            xs.len()
        }
    }
}

#[tokio::test]
async fn generated_code_compiles_and_runs_without_the_prelude() {
    let registry = rpc_core::Registry::new().with(service::Hygienic).unwrap();
    let client = service::HygienicClient::new(rpc_core::MemoryTransport::new(registry));
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    assert_eq!(client.greet("x".to_owned()).await.unwrap(), "hi x");
    assert_eq!(client.spread(vec![1, 2, 3]).await.unwrap(), 3);
}
