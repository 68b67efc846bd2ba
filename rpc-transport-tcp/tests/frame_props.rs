//! Properties of the pure wire format: no input makes it panic, and what is encoded parses
//! back to the same thing.

use proptest::prelude::*;
use rpc_core::{Args, Request, RpcError};
use rpc_transport_tcp::frame::{self, check_token, Decoded, LineDecoder, ParsedReply, RequestLine};
use rpc_transport_tcp::Error;

/// A token as a client may send it: no spaces, no control characters, not empty.
fn token() -> impl Strategy<Value = String> {
    "[^ \\x00-\\x1f\\x7f]{1,12}"
}

/// Bytes a client may send: mostly request-like (letters, spaces, newlines, CRs), sometimes
/// anything at all.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let requestish = proptest::collection::vec(
        prop_oneof![8 => b'a'..=b'e', 3 => Just(b' '), 1 => Just(b'\n'), 1 => Just(b'\r'), 1 => any::<u8>()],
        0..300,
    );
    prop_oneof![3 => requestish, 1 => proptest::collection::vec(any::<u8>(), 0..300)]
}

/// Line limits: small ones the inputs cross, and the largest ones (where `max_line + 1`
/// overflows).
fn max_line() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..80, 1 => Just(usize::MAX), 1 => Just(usize::MAX - 1)]
}

/// An outcome in comparable form.
fn outcome(result: &Result<Decoded<RequestLine>, Error>) -> String {
    match result {
        Ok(decoded) => format!("{decoded:?}"),
        Err(e) => format!("error: {e}"),
    }
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
        let error = RpcError::Handler { target: "svc.m".into(), code: Some(code.clone()), message: message.clone(), data: None };
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

    /// What `Connection::read_request` does, with arbitrary read sizes: every read is capped at
    /// what is left below `max_line + 1`, and end of stream is seen on a read of 0 bytes.
    #[test]
    fn any_chunking_of_any_bytes_decodes_as_one_read_would_and_never_buffers_more_than_max_line_plus_one(
        bytes in client_bytes(),
        max in max_line(),
        reads in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let mut decoder = LineDecoder::new(max);
        let (mut buf, mut fed, mut eof) = (Vec::new(), 0, false);
        let mut reads = reads.iter().cycle();
        let chunked = loop {
            match decoder.decode(&buf, eof) {
                Ok(Decoded::Incomplete) => {
                    prop_assert!(!eof, "end of stream must end the request");
                    prop_assert!(buf.len() <= max, "incomplete with {} bytes over the limit {max}", buf.len());
                    let room = max.saturating_add(1) - buf.len();
                    let n = (*reads.next().unwrap()).min(room).min(bytes.len() - fed);
                    buf.extend_from_slice(&bytes[fed..fed + n]);
                    fed += n;
                    eof = n == 0;
                }
                done => break done,
            }
        };
        prop_assert!(buf.len() <= max.saturating_add(1), "buffered {} bytes, limit {max}", buf.len());
        let whole = LineDecoder::new(max).decode(&bytes, true);
        prop_assert_eq!(outcome(&chunked), outcome(&whole));
    }

    #[test]
    fn any_accepted_line_has_clean_tokens_and_its_canonical_form_parses_back_to_it(bytes in client_bytes()) {
        if let Ok(line) = RequestLine::parse(&bytes) {
            for token in [&line.service, &line.method].into_iter().chain(&line.args) {
                prop_assert!(check_token(token).is_ok(), "{token:?}");
            }
            let wire = line.encode();
            prop_assert!(wire.ends_with(b"\n") && !wire.windows(2).any(|w| w == b"  "));
            let back = RequestLine::parse(&wire[..wire.len() - 1]).unwrap();
            prop_assert_eq!(back, line);
        }
    }

    #[test]
    fn a_value_rendered_as_a_token_either_travels_whole_or_is_refused_before_sending(s in any::<String>()) {
        let rendered = rpc_core::text::render(&serde_json::json!([s.clone()]));
        let request = rpc_core::Request::new("svc", "m", rpc_core::Args::Text(vec![s.clone(), rendered]));
        match RequestLine::from_request(request) {
            Ok(line) => {
                let wire = line.encode();
                let back = RequestLine::parse(&wire[..wire.len() - 1]).unwrap();
                prop_assert_eq!(&back.args[0], &s);
            }
            Err(e) => prop_assert!(s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f), "{s:?} refused: {e}"),
        }
    }

    #[test]
    fn runs_of_spaces_and_a_final_cr_never_change_the_request(
        tokens in proptest::collection::vec(token(), 2..7),
        gaps in proptest::collection::vec(1usize..6, 8),
        lead in 0usize..4,
        trail in 0usize..4,
        cr: bool,
    ) {
        let mut text = " ".repeat(lead);
        for (i, token) in tokens.iter().enumerate() {
            if i > 0 {
                text.push_str(&" ".repeat(gaps[i]));
            }
            text.push_str(token);
        }
        text.push_str(&" ".repeat(trail));
        if cr {
            text.push('\r');
        }
        let line = RequestLine::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(&line.service, &tokens[0]);
        prop_assert_eq!(&line.method, &tokens[1]);
        prop_assert_eq!(&line.args[..], &tokens[2..]);
        prop_assert_eq!(line.encode(), format!("{}\n", tokens.join(" ")).into_bytes());
    }

    #[test]
    fn bytes_after_the_first_newline_never_change_the_request(
        tokens in proptest::collection::vec(token(), 2..5),
        rest in proptest::collection::vec(any::<u8>(), 0..100),
        eof: bool,
    ) {
        let line = tokens.join(" ");
        let alone = LineDecoder::new(frame::DEFAULT_MAX_LINE).decode(line.as_bytes(), true);
        let mut bytes = format!("{line}\n").into_bytes();
        bytes.extend_from_slice(&rest);
        let followed = LineDecoder::new(frame::DEFAULT_MAX_LINE).decode(&bytes, eof);
        prop_assert_eq!(outcome(&followed), outcome(&alone));
    }
}
