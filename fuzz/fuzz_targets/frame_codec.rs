//! `FrameReader` (engine/src/net/codec.rs) over arbitrary bytes arriving in arbitrary chunks, and
//! codec.rs's body parsers over every frame it yields.
//!
//! Input: `[max_hi, max_lo, chunking, flags]` then the byte stream.
//! - max message size: the big-endian u16 (0..=65535: a few of those are too small for any frame);
//! - chunking: 0 = the whole stream at once, 1..=127 = chunks of that many bytes, 128..=255 =
//!   chunks of pseudo-random sizes 1..=(chunking - 127) * 4;
//! - flags: bit 0 = read a startup-phase packet first (as login does), bit 1 = read with
//!   `peek_frame` + `consume` instead of `next_frame`, bit 2 = alternate the two per frame,
//!   bit 3 = `take()` the reader out and put it back around every read (as the session does),
//!   bit 4 = `set_max` to half the limit after the startup packet.
//!
//! Checked besides "no panic": every frame is a header whose length matches, within the limit,
//! and the frames are exactly the stream's bytes in order.
#![no_main]

use bytes::BytesMut;
use helios_engine::error::SqlState;
use helios_engine::net::codec::{self, FrameReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[max_hi, max_lo, chunking, flags], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut max = u16::from_be_bytes([max_hi, max_lo]) as usize;
    let mut chunks = Chunks::new(chunking, stream);
    let mut r = FrameReader::new(max);
    // Bytes of the stream already handed out as packets or frames.
    let mut taken = 0usize;
    let mut startup = flags & 1 != 0;
    let mut frames = 0usize;
    while let Some(chunk) = chunks.next() {
        r.buf.extend_from_slice(chunk);
        loop {
            let mut out = (flags & 8 != 0).then(|| r.take());
            let active = match out.as_mut() {
                Some(reader) => reader,
                None => &mut r,
            };
            let got = if startup {
                match active.next_startup() {
                    Ok(Some(p)) => {
                        let len = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                        assert!(len >= 8 && len as usize == p.len());
                        assert!(p.len() <= max.min(codec::MAX_STARTUP));
                        assert_eq!(&p[..], &stream[taken..taken + p.len()]);
                        taken += p.len();
                        let _ = codec::parse_startup_params(&p[8..]);
                        startup = false;
                        if flags & 16 != 0 {
                            max /= 2;
                            active.set_max(max);
                        }
                        Some(())
                    }
                    Ok(None) => None,
                    Err(_) => return,
                }
            } else {
                let peek = flags & 2 != 0 || (flags & 4 != 0 && frames % 2 == 1);
                let frame = if peek {
                    match active.peek_frame() {
                        Ok(Some((tag, total))) => {
                            assert!(total <= active.buf.len());
                            let bytes = active.buf[..total].to_vec();
                            let f = codec::FrameRef {
                                tag,
                                bytes: &bytes,
                                shared: None,
                            };
                            check_frame(f.tag, f.bytes, max);
                            bodies(f.tag, f.body());
                            active.consume(total);
                            Ok(Some(bytes))
                        }
                        Ok(None) => Ok(None),
                        Err(e) => Err(e),
                    }
                } else {
                    match active.next_frame() {
                        Ok(Some(f)) => {
                            check_frame(f.tag, &f.bytes, max);
                            bodies(f.tag, f.body());
                            Ok(Some(f.bytes.to_vec()))
                        }
                        Ok(None) => Ok(None),
                        Err(e) => Err(e),
                    }
                };
                match frame {
                    Ok(Some(bytes)) => {
                        assert_eq!(&bytes[..], &stream[taken..taken + bytes.len()]);
                        taken += bytes.len();
                        frames += 1;
                        Some(())
                    }
                    Ok(None) => None,
                    Err(_) => return,
                }
            };
            if let Some(reader) = out {
                r = reader;
            }
            if got.is_none() {
                break;
            }
        }
        // Whatever was not handed out is still buffered (its bytes are compared at the end).
        assert_eq!(r.buf.len(), chunks.fed - taken);
    }
    assert_eq!(&r.buf[..], &stream[taken..]);
});

/// A frame as `next_frame`/`peek_frame` return it: header, then exactly the announced length.
fn check_frame(tag: u8, bytes: &[u8], max: usize) {
    assert!(bytes.len() >= 5 && bytes.len() <= max);
    assert_eq!(tag, bytes[0]);
    let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    assert_eq!(len as usize + 1, bytes.len());
}

/// Every body parser of codec.rs over one body, as the session and login use them.
fn bodies(tag: u8, body: &[u8]) {
    let _ = codec::is_frontend_tag(tag);
    let f = codec::parse_error_fields(body);
    for v in [f.severity, f.code, f.message] {
        assert!(!v.contains(&0));
    }
    // What we write, we read back (as long as the text has no NUL to cut it short).
    if let (Ok(sev), Ok(msg)) = (
        std::str::from_utf8(f.severity),
        std::str::from_utf8(f.message),
    ) {
        let mut out = BytesMut::new();
        codec::put_error_tagged(&mut out, tag, sev, SqlState::PROTOCOL_VIOLATION, msg);
        check_frame(out[0], &out, usize::MAX);
        let back = codec::parse_error_fields(&out[5..]);
        assert_eq!(back.severity, f.severity);
        assert_eq!(back.message, f.message);
        assert_eq!(back.code, SqlState::PROTOCOL_VIOLATION.0.as_bytes());
    }
    if let Some(params) = codec::parse_startup_params(body) {
        for (k, v) in &params {
            assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
        }
    }
    // NUL-terminated strings until none is left.
    let mut b = body;
    while let Some(s) = codec::read_cstr(&mut b) {
        assert!(!s.contains(&0));
    }
    // A Bind-shaped walk: portal, statement, format codes, length-prefixed parameters, result
    // formats; and a RowDescription/DataRow-shaped one: a count, then i32 lengths and values.
    let _ = bind_shaped(body);
    let _ = data_row_shaped(body);
    // Fixed-size reads take their size or nothing (a few of each: walking every body to its end
    // would cost most of the run time under the fuzzer's instrumentation, for nothing new).
    let mut b = body;
    for _ in 0..4 {
        let before = b.len();
        let got = codec::read_i32(&mut b).is_some();
        assert_eq!(before - b.len(), if got { 4 } else { 0 });
        let before = b.len();
        let got = codec::read_i16(&mut b).is_some();
        assert_eq!(before - b.len(), if got { 2 } else { 0 });
        let n = usize::from(body.first().copied().unwrap_or(0) % 8);
        let before = b.len();
        let got = codec::skip(&mut b, n).is_some();
        assert_eq!(got, before >= n);
        assert_eq!(before - b.len(), if got { n } else { 0 });
    }
}

fn bind_shaped(body: &[u8]) -> Option<()> {
    let mut b = body;
    codec::read_cstr(&mut b)?;
    codec::read_cstr(&mut b)?;
    let n = codec::read_i16(&mut b)?;
    for _ in 0..n {
        codec::read_i16(&mut b)?;
    }
    let n = codec::read_i16(&mut b)?;
    for _ in 0..n {
        let len = codec::read_i32(&mut b)?;
        if len > 0 {
            codec::skip(&mut b, len as usize)?;
        }
    }
    let n = codec::read_i16(&mut b)?;
    for _ in 0..n {
        codec::read_i16(&mut b)?;
    }
    Some(())
}

fn data_row_shaped(body: &[u8]) -> Option<()> {
    let mut b = body;
    let n = codec::read_i16(&mut b)?;
    for _ in 0..n {
        let len = codec::read_i32(&mut b)?;
        if len >= 0 {
            codec::skip(&mut b, len as usize)?;
        }
    }
    Some(())
}

/// The stream cut into chunks as the first bytes of the input say.
struct Chunks<'a> {
    stream: &'a [u8],
    fed: usize,
    mode: u8,
    rng: u32,
}

impl<'a> Chunks<'a> {
    fn new(mode: u8, stream: &'a [u8]) -> Self {
        Chunks {
            stream,
            fed: 0,
            mode,
            rng: 0x9E37_79B9 ^ u32::from(mode),
        }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        let left = self.stream.len() - self.fed;
        if left == 0 {
            return None;
        }
        let n = match self.mode {
            0 => left,
            m @ 1..=127 => usize::from(m),
            m => {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 17;
                self.rng ^= self.rng << 5;
                1 + self.rng as usize % (usize::from(m - 127) * 4)
            }
        };
        let n = n.min(left);
        let c = &self.stream[self.fed..self.fed + n];
        self.fed += n;
        Some(c)
    }
}
