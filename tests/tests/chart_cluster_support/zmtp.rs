//! A DEALER just good enough to send a few messages into a proxy pod: the
//! handshake and frames come from the project's own ZMTP codec (the `zmtp`
//! crate), over a tokio socket; the test crate does not link libzmq.

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmtp::{encode_header, greeting, Command, Decoder, Flags, Metadata, Progress, SocketType};

/// A connected DEALER.
pub struct Dealer(TcpStream);

impl Dealer {
    /// Connects and completes the NULL handshake (greetings, READYs).
    pub async fn connect(addr: &str) -> Result<Dealer> {
        let mut s = TcpStream::connect(addr).await?;
        let mut out = greeting::encode(false).to_vec();
        let ours = Metadata::basic(SocketType::Dealer, None)
            .map_err(|e| anyhow::anyhow!("our metadata: {e:?}"))?;
        Command::Ready(ours).encode(&mut out);
        s.write_all(&out).await?;

        let mut theirs = [0u8; greeting::GREETING_LEN];
        s.read_exact(&mut theirs).await?;
        ensure!(
            matches!(greeting::parse(&theirs), Ok(Progress::Done(_))),
            "not a ZMTP 3 NULL peer: {theirs:?}"
        );
        // Their READY: one command frame.
        let decoder = Decoder::new(1 << 16);
        let mut buf = Vec::new();
        let (frame, _) = loop {
            if let Some(decoded) = decoder.decode(&buf)? {
                break decoded;
            }
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let body = frame.body(&buf).context("READY body")?;
        ensure!(
            frame.command() && matches!(Command::parse(body), Ok(Command::Ready(_))),
            "expected READY"
        );
        Ok(Dealer(s))
    }

    /// Sends one multipart message.
    pub async fn send(&mut self, frames: &[&[u8]]) -> Result<()> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let header = encode_header(Flags::message(i + 1 < frames.len()), f.len());
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(f);
        }
        self.0.write_all(&out).await?;
        Ok(())
    }
}
