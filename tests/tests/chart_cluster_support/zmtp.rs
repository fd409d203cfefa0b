//! Just enough ZMTP 3.0 (NULL mechanism) to be a DEALER: the test crate
//! does not link libzmq, and a proxy only needs a peer that speaks the wire
//! protocol.

use anyhow::{ensure, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connected DEALER.
pub struct Dealer(TcpStream);

impl Dealer {
    /// Connects and completes the handshake (greeting, READY).
    pub async fn connect(addr: &str) -> Result<Dealer> {
        let mut s = TcpStream::connect(addr).await?;
        let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
        let mut mechanism = b"NULL".to_vec();
        mechanism.resize(20, 0);
        greeting.extend(mechanism);
        greeting.push(0); // as-server: no
        greeting.extend([0u8; 31]);
        s.write_all(&greeting).await?;
        let mut ready = vec![5];
        ready.extend(b"READY");
        ready.push(11);
        ready.extend(b"Socket-Type");
        ready.extend(6u32.to_be_bytes());
        ready.extend(b"DEALER");
        s.write_all(&[0x04, ready.len() as u8]).await?;
        s.write_all(&ready).await?;
        let mut theirs = [0u8; 64];
        s.read_exact(&mut theirs).await?;
        ensure!(
            theirs[0] == 0xFF && theirs[9] == 0x7F && theirs[10] == 3,
            "not a ZMTP 3 peer"
        );
        // Their READY command.
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await?;
        ensure!(
            head[0] & 0x04 != 0,
            "expected a command, got flags {:#x}",
            head[0]
        );
        let size = if head[0] & 0x02 != 0 {
            let mut rest = [0u8; 7];
            s.read_exact(&mut rest).await?;
            let mut all = [0u8; 8];
            all[0] = head[1];
            all[1..].copy_from_slice(&rest);
            usize::try_from(u64::from_be_bytes(all))?
        } else {
            usize::from(head[1])
        };
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).await?;
        ensure!(body.get(1..6) == Some(&b"READY"[..]), "expected READY");
        Ok(Dealer(s))
    }

    /// Sends one multipart message (short frames only).
    pub async fn send(&mut self, frames: &[&[u8]]) -> Result<()> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            ensure!(f.len() < 256, "long frames are not needed here");
            out.push(if i + 1 < frames.len() { 0x01 } else { 0x00 });
            out.push(f.len() as u8);
            out.extend_from_slice(f);
        }
        self.0.write_all(&out).await?;
        Ok(())
    }
}
