//! The protobuf wire format: varints, tags and length-delimited fields, read and written by
//! hand (the stand-in needs a dozen message types, not a protobuf runtime).

/// Wire types.
pub const VARINT: u8 = 0;
/// 64-bit fixed.
pub const FIXED64: u8 = 1;
/// Length-delimited (strings, bytes, messages, packed repeated).
pub const LEN: u8 = 2;
/// 32-bit fixed.
pub const FIXED32: u8 = 5;

/// A field as read from the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    /// A varint (ints, bools, enums).
    Varint(u64),
    /// Length-delimited bytes.
    Bytes(&'a [u8]),
    /// A fixed-width value.
    Fixed(u64),
}

/// A decoding error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("protobuf: {0}")]
pub struct WireError(pub &'static str);

/// Reads fields off a buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(WireError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(WireError("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError("truncated field"))?;
        self.pos = end;
        Ok(s)
    }

    /// The next field number and value, `None` at the end.
    pub fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3).map_err(|_| WireError("field number too large"))?;
        let field = match (key & 7) as u8 {
            VARINT => Field::Varint(self.varint()?),
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| WireError("length"))?;
                Field::Bytes(self.take(n)?)
            }
            FIXED64 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Field::Fixed(u64::from_le_bytes(a))
            }
            FIXED32 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Field::Fixed(u64::from(u32::from_le_bytes(a)))
            }
            _ => return Err(WireError("unsupported wire type")),
        };
        Ok(Some((num, field)))
    }
}

/// Builds a message.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty message.
    pub fn new() -> Self {
        Writer::default()
    }

    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }

    fn key(&mut self, num: u32, wire: u8) {
        self.varint((u64::from(num) << 3) | u64::from(wire));
    }

    /// A varint field (ints, bools).
    pub fn uint(&mut self, num: u32, v: u64) -> &mut Self {
        self.key(num, VARINT);
        self.varint(v);
        self
    }

    /// A bool field.
    pub fn bool(&mut self, num: u32, v: bool) -> &mut Self {
        self.uint(num, u64::from(v))
    }

    /// A double field.
    pub fn double(&mut self, num: u32, v: f64) -> &mut Self {
        self.key(num, FIXED64);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-delimited field.
    pub fn bytes(&mut self, num: u32, v: &[u8]) -> &mut Self {
        self.key(num, LEN);
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A string field.
    pub fn string(&mut self, num: u32, v: &str) -> &mut Self {
        self.bytes(num, v.as_bytes())
    }

    /// An embedded message field.
    pub fn message(&mut self, num: u32, m: &Writer) -> &mut Self {
        self.bytes(num, &m.buf)
    }

    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The encoded message so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut inner = Writer::new();
        inner.string(1, "hi");
        let mut w = Writer::new();
        w.uint(1, 300)
            .message(2, &inner)
            .bool(3, true)
            .double(4, 1.5);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.next_field().unwrap(), Some((1, Field::Varint(300))));
        assert_eq!(
            r.next_field().unwrap(),
            Some((2, Field::Bytes(&[0x0a, 2, b'h', b'i'])))
        );
        assert_eq!(r.next_field().unwrap(), Some((3, Field::Varint(1))));
        assert_eq!(
            r.next_field().unwrap(),
            Some((4, Field::Fixed(1.5f64.to_bits())))
        );
        assert_eq!(r.next_field().unwrap(), None);
        assert!(Reader::new(&[0x0a, 5, 1]).next_field().is_err());
    }
}
