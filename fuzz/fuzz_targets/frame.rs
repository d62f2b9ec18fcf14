//! QUIC frame decoding: `Frame::parse` over a buffer of frames,
//! `decode_header` on each header, and the payload decoded as the message its
//! kind names (an `InferRequest`'s tensor through the codec, its policy rules
//! through the wire policy checks).

#![no_main]

mod check;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use offramp_common::Policy;
use offramp_proto as pb;
use offramp_transport::frame::{self, decode_header, Frame, Kind, HEADER_LEN, MAX_TOKEN_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((l, mut buf)) = data.split_first_chunk::<2>() else { return };
    // The size limit: the fuzzer picks it (0xFFFF: none).
    let limit = match u16::from_le_bytes(*l) {
        0xFFFF => usize::MAX,
        n => n as usize,
    };
    loop {
        let header = buf.first_chunk::<HEADER_LEN>().map(|h| decode_header(*h, limit));
        match Frame::parse(buf, limit) {
            Ok(None) => {
                match header {
                    None => {}
                    Some(Ok((_, len))) => assert!(buf.len() < HEADER_LEN + len, "a complete frame was not parsed"),
                    Some(Err(e)) => panic!("header refused ({e}) but parse waits for more"),
                }
                break;
            }
            Ok(Some((f, used))) => {
                let (kind, len) = header.expect("parsed a frame without a header").expect("parsed a refused header");
                assert_eq!(kind, f.kind);
                assert_eq!(len, f.payload.len());
                assert_eq!(used, HEADER_LEN + len);
                assert!(used <= buf.len());
                assert!(len <= limit, "payload of {len} bytes over the limit {limit}");
                if kind == Kind::Auth {
                    assert!(len <= MAX_TOKEN_LEN, "auth payload of {len} bytes");
                }
                assert_eq!(&f.payload[..], &buf[HEADER_LEN..used]);
                payload(&f, limit);
                buf = &buf[used..];
            }
            Err(e) => {
                assert!(matches!(header, Some(Err(_))), "parse refused ({e}) a header decode_header accepts");
                let m = frame::wire_status(&e).message().to_string();
                assert!(m.len() <= check::MAX_MESSAGE, "wire error message of {} bytes", m.len());
                break;
            }
        }
    }
});

fn payload(f: &Frame, limit: usize) {
    match f.kind {
        Kind::InferRequest => {
            let Ok(req) = f.decode::<pb::InferRequest>() else { return };
            if let Some(t) = &req.hidden {
                check::tensor(t, limit);
            }
            // The request's rules, against models of a few sizes and splits.
            for num_exits in [1usize, 3, 4] {
                let base = Policy::never(num_exits);
                let first = (req.split as usize).min(num_exits);
                if let Err(e) = Policy::with_wire(&base, &req.policy, first..num_exits) {
                    let m = e.to_string();
                    assert!(m.len() <= check::MAX_MESSAGE, "policy error message of {} bytes", m.len());
                }
            }
            // What parsed re-frames to one whole frame.
            let mut out = BytesMut::new();
            frame::put_message(&mut out, Kind::InferRequest, &req);
            let (g, used) = Frame::parse(&out, usize::MAX).expect("re-framed").expect("whole frame");
            assert_eq!(used, out.len());
            assert!(g.decode::<pb::InferRequest>().is_ok(), "re-encoded request does not decode");
        }
        Kind::ModelInfoRequest | Kind::DecoderInfoRequest => {
            let _ = f.decode::<pb::ModelInfoRequest>();
        }
        Kind::GenerateRequest => {
            let Ok(req) = f.decode::<pb::GenerateRequest>() else { return };
            if let Some(pb::generate_request::Msg::Step(step)) = &req.msg {
                if let Some(t) = &step.hidden {
                    check::tensor(t, limit);
                }
            }
        }
        Kind::DecoderInfo => {
            let _ = f.decode::<pb::DecoderInfo>();
        }
        Kind::GenerateResponse => {
            let _ = f.decode::<pb::GenerateResponse>();
        }
        Kind::Auth => {
            let _ = f.token();
        }
        Kind::ModelInfo => {
            let _ = f.decode::<pb::ModelInfo>();
        }
        Kind::InferResponse => {
            let _ = f.decode::<pb::InferResponse>();
        }
        Kind::Error => {
            let _ = frame::frame_status(f, "fuzz");
        }
    }
}
