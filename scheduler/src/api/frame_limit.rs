//! Refuses a WebSocket frame as soon as its header declares more than the limit.
//!
//! actix's frame parser checks a frame's size only once the whole frame is buffered, so a peer
//! that declares a huge frame and keeps sending makes the coordinator buffer all of it. This
//! stream sits between the socket and the parser and reads each frame header as it passes (the
//! payload bytes are only counted, never copied), so a frame over the limit ends the connection
//! after its first few bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// The first frame whose header declared more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// What the header declared.
    pub declared: u64,
}

/// Reads WebSocket frame headers from a stream of bytes, counting payloads.
#[derive(Debug)]
pub struct FrameHeaders {
    limit: u64,
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
}

impl FrameHeaders {
    /// Headers checked against `limit` bytes of payload per frame.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            header: [0; MAX_HEADER],
            have: 0,
            remaining: 0,
        }
    }

    /// The header's full length once its first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        (self.have >= 2).then(|| {
            let extended = match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            2 + extended + mask
        })
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        }
    }

    /// Passes `data` through the reader; fails at the first header over the limit.
    pub fn scan(&mut self, mut data: &[u8]) -> Result<(), TooLarge> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                data = &data[n..];
                self.remaining -= n as u64;
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.header_len() == Some(self.have) {
                let declared = self.payload_len();
                if declared > self.limit {
                    return Err(TooLarge { declared });
                }
                self.remaining = declared;
                self.have = 0;
            }
        }
        Ok(())
    }
}

/// A request body stream that ends with an error at the first frame over the limit, after
/// calling `refuse` with what that frame declared.
pub struct LimitFrames<S, F> {
    inner: S,
    headers: FrameHeaders,
    refuse: Option<F>,
}

impl<S, F: FnOnce(TooLarge)> LimitFrames<S, F> {
    /// Wraps `inner`, refusing frames over `limit` bytes.
    pub fn new(inner: S, limit: u64, refuse: F) -> Self {
        Self {
            inner,
            headers: FrameHeaders::new(limit),
            refuse: Some(refuse),
        }
    }
}

impl<S, F> Stream for LimitFrames<S, F>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    F: FnOnce(TooLarge) + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.refuse.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.headers.scan(&bytes) {
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(too_large) => {
                    if let Some(refuse) = this.refuse.take() {
                        refuse(too_large);
                    }
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_declared_over_the_limit_is_refused_at_its_header_however_the_bytes_arrive() {
        // Masked binary frame headers, written out: a 7-bit, a 16-bit and two 64-bit lengths.
        let mask = [1, 2, 3, 4];
        let frames: [(&[u8], usize); 4] = [
            (&[0x82, 0x80 | 5], 5),
            (&[0x82, 0x80 | 126, 0x00, 0xc8], 200),
            (&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70], 70_000),
            (&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0], 1 << 20),
        ];
        let mut stream = Vec::new();
        for (header, len) in frames {
            stream.extend_from_slice(header);
            stream.extend_from_slice(&mask);
            stream.extend(std::iter::repeat_n(7u8, len));
        }
        stream.extend_from_slice(&[0x82, 0x80 | 127, 0, 0, 1, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&mask);
        let refused_at = stream.len();
        for piece in [1, 3, 7, 4096, stream.len()] {
            let mut headers = FrameHeaders::new(1 << 20);
            let mut passed = 0;
            let mut refused = None;
            for part in stream.chunks(piece) {
                if let Err(e) = headers.scan(part) {
                    refused = Some(e);
                    break;
                }
                passed += part.len();
            }
            assert_eq!(
                refused,
                Some(TooLarge { declared: 1 << 40 }),
                "pieces of {piece}"
            );
            assert!(passed < refused_at, "pieces of {piece}");
            assert!(refused_at - passed <= piece, "pieces of {piece}");
        }
    }
}
