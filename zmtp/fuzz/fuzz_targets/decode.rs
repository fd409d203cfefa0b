//! Fuzzes the byte-level parsers with arbitrary input and checks them
//! against a reference model and against themselves:
//! - greeting: verdicts on growing prefixes are consistent (an error stays
//!   the same error, `NeedMore` counts down, `Done` only at 64 bytes);
//! - frames: the in-place decoder agrees with a byte-at-a-time model decoder
//!   (same frames, same stopping point, error or not), also when the input
//!   arrives in chunks whose sizes come from the input, and every frame
//!   re-encodes to exactly the bytes it was decoded from;
//! - commands: whatever parses re-encodes and parses back equal; READY
//!   metadata passes or fails the peer check without panicking;
//! - messages: the assembler groups frames exactly by MORE.
//!
//! Nothing may panic. Seeds (libzmq streams from the crate's test vectors)
//! are in `seeds/decode`:
//!   cargo +nightly fuzz run decode corpus/decode seeds/decode

#![no_main]

use libfuzzer_sys::fuzz_target;
use zmtp::frame::{encode_header_in, SizeForm};
use zmtp::{
    greeting, Assembler, Command, Decoder, Limits, Progress, Push, SocketType, Subscription,
};

/// Body limit for the fuzz run: small enough that random 8-byte sizes are
/// refused quickly, large enough for long-form frames.
const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // A complete greeting is followed by frames, as on a connection; input
    // that is not a greeting is fed to the frame decoder whole (a 0xFF first
    // byte is never a valid frame anyway).
    let stream = match check_greeting(data) {
        Some(Progress::Done(_)) => &data[greeting::GREETING_LEN..],
        _ => data,
    };
    // The chunk size of the chunked decode comes from the input length, so
    // the fuzzer explores it without a control byte.
    let frames = check_frames(stream, data.len() % 13 + 1);
    for (flags, body) in &frames {
        if flags & 0x04 != 0 {
            check_command(body);
        } else if let Some(sub) = Subscription::from_message(body) {
            assert_eq!(sub.prefix(), &body[1..]);
        }
    }
    check_messages(&frames);
});

/// Checks the greeting parser on every prefix; returns its verdict on the
/// whole input, if any.
fn check_greeting(data: &[u8]) -> Option<Progress> {
    let full = greeting::parse(data);
    let mut previous: Option<Result<Progress, greeting::GreetingError>> = None;
    for len in 0..=data.len().min(greeting::GREETING_LEN) {
        let verdict = greeting::parse(&data[..len]);
        match (&previous, &verdict) {
            (Some(Err(before)), now) => assert_eq!(Err(before), now.as_ref(), "an error must stay"),
            (_, Ok(Progress::NeedMore { needed })) => {
                assert_eq!(*needed, greeting::GREETING_LEN - len)
            }
            (_, Ok(Progress::Done(_))) => assert_eq!(len, greeting::GREETING_LEN),
            _ => {}
        }
        previous = Some(verdict);
    }
    if data.len() >= greeting::GREETING_LEN {
        assert_eq!(
            full,
            greeting::parse(&data[..greeting::GREETING_LEN]),
            "bytes after 64 must not matter"
        );
        if let Ok(Progress::Done(g)) = full {
            assert!(g.major >= 3);
        }
    }
    full.ok()
}

/// The model: a plain decoder written from RFC 37, one field at a time.
/// Returns the frames (flags without LONG, body) and whether it stopped on
/// an error (as opposed to running out of bytes).
fn model_decode(stream: &[u8]) -> (Vec<(u8, Vec<u8>, bool)>, usize, bool) {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        let Some(&flags) = stream.get(pos) else {
            return (frames, pos, false);
        };
        if flags & 0xF8 != 0 || flags & 0x05 == 0x05 {
            return (frames, pos, true);
        }
        let long = flags & 0x02 != 0;
        let mut size: u64 = 0;
        let size_len = if long { 8 } else { 1 };
        for i in 0..size_len {
            let Some(&byte) = stream.get(pos + 1 + i) else {
                return (frames, pos, false);
            };
            size = (size << 8) | u64::from(byte);
        }
        if size > MAX_BODY as u64 {
            return (frames, pos, true);
        }
        let start = pos + 1 + size_len;
        let end = start + size as usize;
        if stream.len() < end {
            return (frames, pos, false);
        }
        frames.push((flags & !0x02, stream[start..end].to_vec(), long));
        pos = end;
    }
}

/// Decodes `stream` whole and in chunks of `chunk` bytes, compares both with
/// the model and checks re-encoding. Returns the frames.
fn check_frames(stream: &[u8], chunk: usize) -> Vec<(u8, Vec<u8>)> {
    let decoder = Decoder::new(MAX_BODY);
    let (model, model_pos, model_err) = model_decode(stream);

    // Whole buffer.
    let mut pos = 0;
    let mut frames = Vec::new();
    let mut failed = false;
    loop {
        match decoder.decode(&stream[pos..]) {
            Ok(Some((frame, used))) => {
                let frame = frame.offset(pos);
                let body = &stream[frame.body.clone()];
                // Re-encoding in the same size form gives the same bytes.
                let form = if frame.flags.long() {
                    SizeForm::Long
                } else {
                    SizeForm::Short
                };
                let header = encode_header_in(form, frame.flags, body.len())
                    .expect("a decoded short frame fits the short form");
                assert_eq!(header.as_bytes(), &stream[pos..frame.body.start]);
                assert_eq!(frame.body.end, pos + used);
                frames.push((
                    frame.flags.bits() & !0x02,
                    body.to_vec(),
                    frame.flags.long(),
                ));
                pos += used;
            }
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert_eq!(frames, model, "decoder and model disagree on frames");
    assert_eq!(
        (pos, failed),
        (model_pos, model_err),
        "decoder and model stop differently"
    );

    // The same bytes in chunks, through a compacting buffer.
    let mut buf = Vec::new();
    let mut chunked = Vec::new();
    let mut chunk_failed = false;
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        let mut at = 0;
        loop {
            match decoder.decode(&buf[at..]) {
                Ok(Some((frame, used))) => {
                    let frame = frame.offset(at);
                    chunked.push((
                        frame.flags.bits() & !0x02,
                        buf[frame.body.clone()].to_vec(),
                        frame.flags.long(),
                    ));
                    at += used;
                }
                Ok(None) => break,
                Err(_) => {
                    chunk_failed = true;
                    break 'feed;
                }
            }
        }
        buf.drain(..at);
    }
    assert_eq!(chunked, model, "chunked decode differs");
    assert_eq!(chunk_failed, model_err, "chunked decode fails differently");

    frames
        .into_iter()
        .map(|(flags, body, _)| (flags, body))
        .collect()
}

fn check_command(body: &[u8]) {
    let Ok(command) = Command::parse(body) else {
        return;
    };
    let mut wire = Vec::new();
    command.encode(&mut wire);
    let decoder = Decoder::new(usize::MAX);
    let Ok(Some((frame, used))) = decoder.decode(&wire) else {
        panic!("an encoded command is not a frame");
    };
    assert_eq!(used, wire.len());
    assert!(frame.command());
    let again = Command::parse(&wire[frame.body.clone()]).expect("an encoded command parses");
    assert_eq!(again, command, "command does not survive encode/parse");
    match &command {
        Command::Ready(metadata) => {
            for ours in SocketType::ALL {
                let _ = metadata.check_peer(ours).map_err(|e| e.reason());
            }
        }
        Command::Ping { context, .. } => {
            let Command::Pong { context: echoed } = Command::pong_for(context) else {
                panic!("pong_for made something else");
            };
            assert!(echoed.len() <= 16 && context.starts_with(echoed));
        }
        _ => {}
    }
}

fn check_messages(frames: &[(u8, Vec<u8>)]) {
    // Lay the bodies out contiguously so positions are meaningful.
    let mut assembler = Assembler::new(Limits {
        max_frames: 8,
        max_bytes: 1024,
    });
    let mut offset = 0;
    let mut current: Vec<(usize, usize)> = Vec::new();
    let mut current_bytes = 0;
    for (flags, body) in frames {
        let header = zmtp::FrameHeader {
            flags: zmtp::Flags::from_byte(*flags).expect("decoded flags are valid"),
            body: offset..offset + body.len(),
        };
        offset += body.len();
        let command = flags & 0x04 != 0;
        let more = flags & 0x01 != 0;
        let pushed = assembler.push(&header);
        if command {
            assert_eq!(pushed, Push::Command);
            continue;
        }
        current.push((header.body.start, header.body.end));
        current_bytes += body.len();
        let over = current.len() > 8 || current_bytes > 1024;
        match pushed {
            Push::Partial => assert!(more),
            Push::Complete => {
                assert!(!more && !over);
                let got: Vec<(usize, usize)> = assembler
                    .frames()
                    .iter()
                    .map(|r| (r.start, r.end))
                    .collect();
                assert_eq!(got, current);
            }
            Push::Dropped(dropped) => {
                assert!(!more && over);
                assert_eq!(
                    (dropped.frames, dropped.bytes),
                    (current.len(), current_bytes)
                );
            }
            Push::Command => panic!("a message frame was taken for a command"),
        }
        if !more {
            current.clear();
            current_bytes = 0;
        }
    }
    let cut = assembler.cut();
    assert_eq!(cut.is_some(), !current.is_empty());
}
