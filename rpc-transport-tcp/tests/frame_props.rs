//! Properties of the pure wire format: no input makes it panic, and what is encoded parses
//! back to the same thing.

use proptest::prelude::*;
use rpc_core::{Args, Request, RpcError};
use rpc_transport_tcp::frame::{self, Decoded, LineDecoder, ParsedReply, RequestLine};

/// A token as a client may send it: no spaces, no control characters, not empty.
fn token() -> impl Strategy<Value = String> {
    "[^ \\x00-\\x1f\\x7f]{1,12}"
}

proptest! {
    #[test]
    fn no_bytes_make_the_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..64, eof: bool) {
        let mut decoder = LineDecoder::new(max);
        // Feed in two steps too, as a socket would.
        let half = bytes.len() / 2;
        let _ = decoder.decode(&bytes[..half], false);
        if let Ok(Decoded::Complete(line)) = decoder.decode(&bytes, eof) {
            prop_assert!(!line.service.is_empty() && !line.method.is_empty());
        }
    }

    #[test]
    fn a_rendered_request_parses_back_to_the_same_tokens(service in token(), method in token(), args in proptest::collection::vec(token(), 0..6)) {
        let request = Request::new(service.clone(), method.clone(), Args::Text(args.clone()));
        let wire = RequestLine::from_request(request).unwrap().encode();
        let mut decoder = LineDecoder::new(frame::DEFAULT_MAX_LINE);
        let Ok(Decoded::Complete(line)) = decoder.decode(&wire, false) else { panic!("{wire:?} did not parse") };
        prop_assert_eq!(line.service, service);
        prop_assert_eq!(line.method, method);
        prop_assert_eq!(line.args, args);
    }

    #[test]
    fn any_success_text_round_trips_and_is_never_read_as_an_error(text in any::<String>()) {
        match frame::parse_reply(&frame::encode_success(&text), "t").unwrap() {
            ParsedReply::Success(back) => prop_assert_eq!(back, text),
            ParsedReply::Error(e) => prop_assert!(false, "read as an error: {e}"),
        }
    }

    #[test]
    fn any_handler_error_round_trips(code in any::<String>(), message in any::<String>()) {
        let error = RpcError::Handler { target: "svc.m".into(), code: Some(code.clone()), message: message.clone() };
        match frame::parse_reply(&frame::encode_error(&error), "svc.m").unwrap() {
            ParsedReply::Error(RpcError::Handler { code: c, message: m, .. }) => {
                prop_assert_eq!(c, Some(code));
                prop_assert_eq!(m, message);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn no_reply_bytes_make_the_reply_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = frame::parse_reply(&bytes, "t");
    }
}
