//! Protobuf base-128 varints: written by the OpenAPI v2 document ([`super::openapi_v2`]) and
//! read by the request decoder ([`super::protobuf`]).

/// Appends `v` as a varint: seven bits a byte, low bits first, the high bit set on every byte
/// but the last.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads the varint at `*pos` and moves `*pos` past it; None when the buffer ends inside it or
/// it runs past ten bytes.
pub fn get(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_protobuf_and_reads_back() {
        let mut out = vec![];
        put(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = vec![0xff];
            put(&mut buf, v);
            let mut pos = 1;
            assert_eq!(get(&buf, &mut pos), Some(v), "{v}");
            assert_eq!(pos, buf.len(), "{v}");
        }
    }

    #[test]
    fn truncated_and_overlong_varints_are_refused() {
        assert_eq!(get(&[0x80], &mut 0), None);
        assert_eq!(get(&[], &mut 0), None);
        assert_eq!(get(&[0xff; 11], &mut 0), None);
    }
}
