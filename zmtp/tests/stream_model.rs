//! The decoder against a reference model: random messages and commands are
//! written to a byte stream by a hand-written encoder (independent of the
//! crate's), the stream is split at random points and fed to a loop that
//! drives the crate the way the engine will (greeting, then frames decoded
//! in place, grouped by the assembler, buffer compacted between reads), and
//! what comes out must be what went in. A stream cut short must deliver
//! exactly the messages completed before the cut and report the one in
//! progress as dropped.

use proptest::prelude::*;
use zmtp::{greeting, Assembler, Command, Decoder, Limits, Progress, Push};

/// One item of traffic as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A message: its frames' bodies.
    Message(Vec<Vec<u8>>),
    /// A PING with this TTL and context.
    Ping(u16, Vec<u8>),
}

/// A frame body plus whether to send it in the long size form.
#[derive(Debug, Clone)]
struct ModelFrame {
    body: Vec<u8>,
    long: bool,
}

/// One message and, optionally, a PING to slip in after one of its frames
/// (libzmq's heartbeat can put one between two frames of a message).
#[derive(Debug, Clone)]
struct ModelMessage {
    frames: Vec<ModelFrame>,
    ping: Option<(usize, u16, Vec<u8>)>,
}

/// Writes a frame header by the letter of RFC 37.
fn model_header(out: &mut Vec<u8>, flags: u8, len: usize, long: bool) {
    if long || len > 255 {
        out.push(flags | 0x02);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(len as u8);
    }
}

/// The stream for `messages` (after a greeting) and the items a correct
/// reader delivers, each with the stream offset at which it is complete.
fn model_stream(messages: &[ModelMessage]) -> (Vec<u8>, Vec<(Item, usize)>) {
    let mut out = greeting::encode(false).to_vec();
    let mut items = Vec::new();
    for message in messages {
        let last = message.frames.len() - 1;
        let mut message_end = 0;
        let mut ping_after_last = None;
        for (i, frame) in message.frames.iter().enumerate() {
            let more = if i < last { 0x01 } else { 0x00 };
            model_header(&mut out, more, frame.body.len(), frame.long);
            out.extend_from_slice(&frame.body);
            if i == last {
                message_end = out.len();
            }
            if let Some((after, ttl, context)) = &message.ping {
                if *after == i {
                    let mut body = b"\x04PING".to_vec();
                    body.extend_from_slice(&ttl.to_be_bytes());
                    body.extend_from_slice(context);
                    model_header(&mut out, 0x04, body.len(), false);
                    out.extend_from_slice(&body);
                    let ping = (Item::Ping(*ttl, context.clone()), out.len());
                    // A PING inside the message is read before the message
                    // is complete; one after its last frame, after it.
                    if i < last {
                        items.push(ping);
                    } else {
                        ping_after_last = Some(ping);
                    }
                }
            }
        }
        let bodies = message.frames.iter().map(|f| f.body.clone()).collect();
        items.push((Item::Message(bodies), message_end));
        items.extend(ping_after_last);
    }
    (out, items)
}

/// What the crate-driven reader saw.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    items: Vec<Item>,
    /// (frames, bytes) of the message reported cut at the end, if any.
    cut: Option<(usize, usize)>,
}

/// Drives the crate like the engine: append each chunk, parse the greeting,
/// then decode and assemble frames, compacting the buffer as far as the
/// assembler allows.
fn read(chunks: &[&[u8]]) -> Result<Seen, String> {
    let decoder = Decoder::new(1 << 20);
    let mut assembler = Assembler::new(Limits {
        max_frames: 1024,
        max_bytes: 1 << 24,
    });
    let mut seen = Seen::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut greeted = false;
    let mut pos = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        if !greeted {
            match greeting::parse(&buf).map_err(|e| e.to_string())? {
                Progress::NeedMore { .. } => continue,
                Progress::Done(_) => {
                    greeted = true;
                    pos = greeting::GREETING_LEN;
                }
            }
        }
        while let Some((frame, used)) = decoder.decode(&buf[pos..]).map_err(|e| e.to_string())? {
            let frame = frame.offset(pos);
            match assembler.push(&frame) {
                Push::Partial => {}
                Push::Complete => seen.items.push(Item::Message(
                    assembler
                        .frames()
                        .iter()
                        .map(|body| buf[body.clone()].to_vec())
                        .collect(),
                )),
                Push::Command => match Command::parse(&buf[frame.body.clone()]) {
                    Ok(Command::Ping { ttl, context }) => {
                        seen.items.push(Item::Ping(ttl, context.to_vec()))
                    }
                    other => return Err(format!("unexpected command {other:?}")),
                },
                Push::Dropped(dropped) => return Err(format!("unexpected drop {dropped:?}")),
            }
            pos += used;
        }
        // Compact: keep what the assembler still points at and any partial
        // frame; forget complete messages.
        if !assembler.in_progress() {
            assembler.clear();
        }
        let keep_from = assembler.start().unwrap_or(pos).min(pos);
        buf.drain(..keep_from);
        assembler.shift(keep_from);
        pos -= keep_from;
    }
    seen.cut = assembler.cut().map(|d| (d.frames, d.bytes));
    Ok(seen)
}

fn frame_strategy() -> impl Strategy<Value = ModelFrame> {
    let len = prop_oneof![
        8 => 0usize..=20,
        3 => 240usize..=270,
        1 => 60_000usize..=70_000,
    ];
    (len, any::<bool>(), any::<u8>()).prop_map(|(len, long, seed)| ModelFrame {
        body: (0..len).map(|i| seed.wrapping_add(i as u8)).collect(),
        long,
    })
}

fn message_strategy() -> impl Strategy<Value = ModelMessage> {
    prop::collection::vec(frame_strategy(), 1..6).prop_flat_map(|frames| {
        let n = frames.len();
        let ping = prop::option::weighted(
            0.2,
            (
                0..n,
                any::<u16>(),
                prop::collection::vec(any::<u8>(), 0..=16),
            ),
        );
        (Just(frames), ping).prop_map(|(frames, ping)| ModelMessage { frames, ping })
    })
}

/// Splits `stream` at the given (sorted, deduplicated) points.
fn split<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&stream[start..point]);
        start = point;
    }
    chunks.push(&stream[start..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whole stream, random chunking: everything comes out, in order.
    #[test]
    fn chunked_streams_decode_like_the_model(
        messages in prop::collection::vec(message_strategy(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let (stream, expected) = model_stream(&messages);
        let seen = read(&split(&stream, &cuts)).map_err(TestCaseError::fail)?;
        let expected: Vec<Item> = expected.into_iter().map(|(item, _)| item).collect();
        prop_assert_eq!(seen.items, expected);
        prop_assert_eq!(seen.cut, None);
    }

    /// A stream cut short (a disconnect): the items completed before the
    /// cut come out, and a message in progress is reported dropped whole.
    #[test]
    fn truncated_streams_deliver_only_whole_messages(
        messages in prop::collection::vec(message_strategy(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        end in any::<prop::sample::Index>(),
    ) {
        let (stream, expected) = model_stream(&messages);
        let end = greeting::GREETING_LEN + end.index(stream.len() - greeting::GREETING_LEN + 1);
        let seen = read(&split(&stream[..end], &cuts)).map_err(TestCaseError::fail)?;
        let delivered: Vec<Item> = expected
            .iter()
            .filter(|(_, done)| *done <= end)
            .map(|(item, _)| item.clone())
            .collect();
        prop_assert_eq!(&seen.items, &delivered);
        // The model's view of the message in progress at `end`: frames of
        // the first message not yet complete whose frames ended before `end`.
        let mut offset = greeting::GREETING_LEN;
        let mut in_progress = None;
        for message in &messages {
            let mut frames = 0;
            let mut bytes = 0;
            for (i, frame) in message.frames.iter().enumerate() {
                let header = if frame.long || frame.body.len() > 255 { 9 } else { 2 };
                offset += header + frame.body.len();
                if offset > end {
                    break;
                }
                frames += 1;
                bytes += frame.body.len();
                if let Some((after, _, context)) = &message.ping {
                    if *after == i {
                        offset += 2 + 5 + 2 + context.len();
                    }
                }
            }
            if frames < message.frames.len() {
                if frames > 0 {
                    in_progress = Some((frames, bytes));
                }
                break;
            }
        }
        prop_assert_eq!(seen.cut, in_progress);
    }
}

/// Every single cut point of one fixed stream with all the edge sizes.
#[test]
fn a_fixed_stream_cut_at_every_offset_decodes_the_same() {
    let frame = |len: usize, long: bool| ModelFrame {
        body: vec![0x5A; len],
        long,
    };
    let messages = vec![
        ModelMessage {
            frames: vec![frame(0, false), frame(255, false), frame(256, false)],
            ping: Some((1, 10, b"ctx".to_vec())),
        },
        ModelMessage {
            frames: vec![frame(3, true), frame(0, true)],
            ping: None,
        },
        ModelMessage {
            frames: vec![frame(65536, false)],
            ping: Some((0, 0, Vec::new())),
        },
    ];
    let (stream, expected) = model_stream(&messages);
    let expected: Vec<Item> = expected.into_iter().map(|(item, _)| item).collect();
    assert_eq!(expected.len(), 5);
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let seen = read(&[a, b]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(seen.items, expected, "cut at {cut}");
        assert_eq!(seen.cut, None);
    }
}
