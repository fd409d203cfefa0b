//! Grouping decoded frames into whole messages.
//!
//! ZMTP messages are runs of frames joined by the MORE flag, and the proxy
//! forwards only whole messages: a message cut by a disconnect, or one over
//! the configured limits, is dropped whole and reported once so the engine
//! can count it. Command frames are not part of any message and may arrive
//! between two frames of one (libzmq's heartbeat timer injects PINGs
//! between the frames it encodes), so the assembler hands them back without
//! disturbing the message in progress.
//!
//! The assembler stores only the positions of bodies (ranges into the
//! engine's receive buffer), never bytes; the engine keeps the buffer from
//! [`Assembler::start`] on until the message is complete, and moves the
//! positions with [`Assembler::shift`] when it compacts the buffer.

use std::ops::Range;

use crate::frame::FrameHeader;

/// Bounds on one message, so a peer cannot make the engine hold an
/// unbounded number of frame positions or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most frames in one message.
    pub max_frames: usize,
    /// Most body bytes in one message (all frames together).
    pub max_bytes: usize,
}

/// What pushing one frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// A message frame with MORE: the message goes on.
    Partial,
    /// The last frame of a message: [`Assembler::frames`] holds all of them
    /// until the next push or [`Assembler::clear`].
    Complete,
    /// A command frame: handle it; the message in progress is untouched.
    Command,
    /// The last frame of a message that broke a limit: none of its frames
    /// were kept, and the stream is at a message boundary again.
    Dropped(Dropped),
}

/// A message dropped whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Frames of the message received (all of them, or up to the cut).
    pub frames: usize,
    /// Body bytes of those frames.
    pub bytes: usize,
    /// Why it was dropped.
    pub reason: DropReason,
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// More frames than [`Limits::max_frames`].
    TooManyFrames,
    /// More bytes than [`Limits::max_bytes`].
    TooLarge,
    /// The connection ended before the last frame ([`Assembler::cut`]).
    Cut,
}

/// Collects the frames of one message at a time.
#[derive(Debug, Clone)]
pub struct Assembler {
    limits: Limits,
    frames: Vec<Range<usize>>,
    /// Frames and bytes of the message in progress, counted also while
    /// discarding (when `frames` stays empty).
    count: usize,
    bytes: usize,
    /// Set once the message in progress broke a limit.
    discarding: Option<DropReason>,
    complete: bool,
}

impl Assembler {
    /// An empty assembler.
    pub fn new(limits: Limits) -> Assembler {
        Assembler {
            limits,
            frames: Vec::new(),
            count: 0,
            bytes: 0,
            discarding: None,
            complete: false,
        }
    }

    /// Adds the next frame decoded from the connection. `frame.body` must be
    /// a position in the engine's buffer (see [`FrameHeader::offset`]).
    ///
    /// After [`Push::Complete`], the next message frame starts a new
    /// message (the previous one is cleared first).
    pub fn push(&mut self, frame: &FrameHeader) -> Push {
        if frame.command() {
            return Push::Command;
        }
        if self.complete {
            self.clear();
        }
        let len = frame.body.len();
        self.count += 1;
        self.bytes = self.bytes.saturating_add(len);
        if self.discarding.is_none() {
            if self.count > self.limits.max_frames {
                self.discarding = Some(DropReason::TooManyFrames);
            } else if self.bytes > self.limits.max_bytes {
                self.discarding = Some(DropReason::TooLarge);
            }
            if self.discarding.is_some() {
                // Forget the positions now: the engine may release the
                // buffer of a message that will never be forwarded.
                self.frames.clear();
            } else {
                self.frames.push(frame.body.clone());
            }
        }
        if frame.more() {
            return Push::Partial;
        }
        match self.discarding {
            Some(reason) => {
                let dropped = Dropped {
                    frames: self.count,
                    bytes: self.bytes,
                    reason,
                };
                self.clear();
                Push::Dropped(dropped)
            }
            None => {
                self.complete = true;
                Push::Complete
            }
        }
    }

    /// The body positions of the message just completed, or of the frames
    /// received so far of the message in progress.
    pub fn frames(&self) -> &[Range<usize>] {
        &self.frames
    }

    /// Whether a message has been started and not finished.
    pub fn in_progress(&self) -> bool {
        self.count > 0 && !self.complete
    }

    /// The first buffer position the assembler still refers to, if any:
    /// the engine must keep the buffer from there on.
    pub fn start(&self) -> Option<usize> {
        self.frames.first().map(|frame| frame.start)
    }

    /// Moves every stored position `by` bytes down, after the engine
    /// dropped that many bytes from the front of its buffer. Positions are
    /// never moved below zero: the engine must not drop bytes before
    /// [`Assembler::start`].
    pub fn shift(&mut self, by: usize) {
        for frame in &mut self.frames {
            *frame = frame.start.saturating_sub(by)..frame.end.saturating_sub(by);
        }
    }

    /// Forgets the current message (complete or not) without reporting it.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.count = 0;
        self.bytes = 0;
        self.discarding = None;
        self.complete = false;
    }

    /// The connection ended: reports the message in progress, if any, as
    /// dropped whole, and clears it.
    pub fn cut(&mut self) -> Option<Dropped> {
        let dropped = self.in_progress().then_some(Dropped {
            frames: self.count,
            bytes: self.bytes,
            reason: DropReason::Cut,
        });
        self.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Flags;

    const ROOMY: Limits = Limits {
        max_frames: 16,
        max_bytes: 1 << 20,
    };

    fn frame(more: bool, body: Range<usize>) -> FrameHeader {
        FrameHeader {
            flags: Flags::message(more),
            body,
        }
    }

    fn command(body: Range<usize>) -> FrameHeader {
        FrameHeader {
            flags: Flags::COMMAND,
            body,
        }
    }

    #[test]
    fn frames_joined_by_more_make_one_message() {
        let mut a = Assembler::new(ROOMY);
        assert_eq!(a.push(&frame(true, 2..4)), Push::Partial);
        assert!(a.in_progress());
        assert_eq!(a.start(), Some(2));
        assert_eq!(a.push(&frame(true, 6..6)), Push::Partial);
        assert_eq!(a.push(&frame(false, 8..20)), Push::Complete);
        assert!(!a.in_progress());
        assert_eq!(a.frames(), &[2..4, 6..6, 8..20]);
        // The next frame starts a new message.
        assert_eq!(a.push(&frame(false, 22..23)), Push::Complete);
        assert_eq!((a.frames().len(), a.frames().first()), (1, Some(&(22..23))));
    }

    #[test]
    fn commands_between_frames_leave_the_message_alone() {
        let mut a = Assembler::new(ROOMY);
        assert_eq!(a.push(&frame(true, 2..4)), Push::Partial);
        assert_eq!(a.push(&command(6..13)), Push::Command);
        assert_eq!(a.push(&frame(false, 15..16)), Push::Complete);
        assert_eq!(a.frames(), &[2..4, 15..16]);
    }

    #[test]
    fn a_message_cut_by_a_disconnect_is_reported_whole() {
        let mut a = Assembler::new(ROOMY);
        assert_eq!(a.cut(), None);
        a.push(&frame(true, 2..12));
        a.push(&frame(true, 14..15));
        assert_eq!(
            a.cut(),
            Some(Dropped {
                frames: 2,
                bytes: 11,
                reason: DropReason::Cut
            })
        );
        assert!(!a.in_progress());
        assert_eq!(a.frames(), &[] as &[Range<usize>]);
        // A complete message is not cut.
        a.push(&frame(false, 0..1));
        assert_eq!(a.cut(), None);
    }

    #[test]
    fn messages_over_the_limits_are_dropped_whole_at_their_end() {
        let limits = Limits {
            max_frames: 2,
            max_bytes: 10,
        };
        let mut a = Assembler::new(limits);
        assert_eq!(a.push(&frame(true, 0..1)), Push::Partial);
        assert_eq!(a.push(&frame(true, 3..4)), Push::Partial);
        assert_eq!(a.push(&frame(true, 6..7)), Push::Partial);
        assert_eq!(a.start(), None, "positions released once over the limit");
        assert_eq!(
            a.push(&frame(false, 9..10)),
            Push::Dropped(Dropped {
                frames: 4,
                bytes: 4,
                reason: DropReason::TooManyFrames
            })
        );
        assert_eq!(a.push(&frame(true, 0..6)), Push::Partial);
        assert_eq!(
            a.push(&frame(false, 8..13)),
            Push::Dropped(Dropped {
                frames: 2,
                bytes: 11,
                reason: DropReason::TooLarge
            })
        );
        // Back at a boundary: the next message is fine.
        assert_eq!(a.push(&frame(false, 0..10)), Push::Complete);
        // A message cut while being discarded is reported with its reason
        // replaced by the cut.
        a.push(&frame(true, 0..11));
        assert_eq!(
            a.cut().map(|d| (d.frames, d.reason)),
            Some((1, DropReason::Cut))
        );
    }

    #[test]
    fn shift_follows_buffer_compaction() {
        let mut a = Assembler::new(ROOMY);
        a.push(&frame(true, 100..110));
        a.push(&frame(true, 112..112));
        a.shift(98);
        assert_eq!(a.frames(), &[2..12, 14..14]);
        assert_eq!(a.start(), Some(2));
    }
}
