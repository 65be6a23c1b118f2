//! Just enough of the protocol-buffer wire format to read TensorFlow's small metadata messages.
//!
//! A message is a sequence of fields; each starts with a varint key `field_number << 3 | wire_type`:
//! wire type 0 is a varint, 1 eight little-endian bytes, 2 a varint length and that many bytes
//! (strings, nested messages, packed arrays), 5 four little-endian bytes.

/// A little-endian base-128 varint at `buf[*pos..]` (7 bits a byte, high bit = more follow).
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let &byte = buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The value of one field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl Value<'_> {
    /// The field as an integer (a varint or a fixed-width field).
    pub fn as_u64(&self) -> Result<u64, String> {
        match *self {
            Value::Varint(v) | Value::Fixed64(v) => Ok(v),
            Value::Fixed32(v) => Ok(v as u64),
            Value::Bytes(_) => Err("expected a number, found a length-delimited field".into()),
        }
    }

    pub fn as_bytes(&self) -> Result<&[u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err("expected a length-delimited field".into()),
        }
    }
}

/// The next `n` bytes at `buf[*pos..]`.
fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = pos
        .checked_add(n)
        .filter(|&end| end <= buf.len())
        .ok_or("truncated field")?;
    let bytes = &buf[*pos..end];
    *pos = end;
    Ok(bytes)
}

/// Calls `f(field_number, value)` for every field of the message `buf`, in order.
pub fn for_each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u64, Value<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => Value::Fixed64(u64::from_le_bytes(take(buf, &mut pos, 8)?.try_into().expect("8 bytes"))),
            2 => {
                let len = read_varint(buf, &mut pos)?;
                let len = usize::try_from(len).map_err(|_| "field length overflows")?;
                Value::Bytes(take(buf, &mut pos, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(take(buf, &mut pos, 4)?.try_into().expect("4 bytes"))),
            other => return Err(format!("unsupported wire type {other}")),
        };
        f(key >> 3, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0xac, 0x02], &mut pos), Ok(300));
        assert_eq!(pos, 2);
        assert!(read_varint(&[0x80], &mut 0).is_err());
        assert!(read_varint(&[0xff; 11], &mut 0).is_err());

        // field 1 varint 150, field 2 bytes "hi", field 6 fixed32 7
        let msg = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x35, 7, 0, 0, 0];
        let mut seen = Vec::new();
        for_each_field(&msg, |n, v| {
            seen.push((n, v));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (1, Value::Varint(150)),
                (2, Value::Bytes(b"hi")),
                (6, Value::Fixed32(7))
            ]
        );
        // A length running past the end, and an unknown wire type.
        assert!(for_each_field(&[0x12, 0x05, b'h'], |_, _| Ok(())).is_err());
        assert!(for_each_field(&[0x0b], |_, _| Ok(())).is_err());
    }
}
