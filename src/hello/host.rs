//! Normalised SNI host names, stored inline (lowercasing needs a copy anyway; no heap).

use core::fmt;

/// A valid, normalised DNS host name: ASCII lowercase, no trailing dot, 1..=253 bytes,
/// labels of 1..=63 bytes made of `a-z 0-9 - _`, not an IP literal.
///
/// The route table can build its keys with [`HostName::new`] so that configured names and
/// SNI values are normalised by the same rules.
#[derive(Clone, Copy)]
pub struct HostName {
    len: u8,
    bytes: [u8; HostName::MAX_LEN],
}

impl HostName {
    /// Longest host name in DNS presentation form without the trailing dot (RFC 1035).
    pub const MAX_LEN: usize = 253;
    /// Longest DNS label.
    pub const MAX_LABEL_LEN: usize = 63;

    /// Validates and normalises `raw` (ASCII-lowercased, one trailing dot removed).
    /// `None` for anything that is not a usable host name: empty, an empty label (so also
    /// two trailing dots), a label over 63 bytes, over 253 bytes, a byte outside
    /// `A-Z a-z 0-9 - _ .` (so `*`, `:`, non-ASCII and IPv6 literals), or an IPv4 literal.
    ///
    /// IPv4 literals are recognised as the WHATWG URL parser does ("ends in a number"): the
    /// last label is all decimal digits or `0x` + hex digits. That covers `1.2.3.4` as
    /// well as `127.1` and `0x7f.1`, which browsers would also treat as addresses, and no
    /// real host name has an all-numeric top-level label (RFC 3696 §2).
    pub fn new(raw: &[u8]) -> Option<HostName> {
        let mut h = HostName::EMPTY;
        h.set(raw).then_some(h)
    }

    /// Empty placeholder (never returned by [`HostName::new`]).
    pub(crate) const EMPTY: HostName = HostName { len: 0, bytes: [0; HostName::MAX_LEN] };

    /// [`HostName::new`] in place (the parser stores the name straight into its result).
    /// Leaves `self` empty and returns false when `raw` is not a valid host name.
    pub(crate) fn set(&mut self, raw: &[u8]) -> bool {
        self.len = 0;
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return false;
        }
        let mut label_len = 0usize;
        let mut label_start = 0usize;
        for (i, (out, &c)) in self.bytes.iter_mut().zip(raw).enumerate() {
            *out = match c {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => c,
                b'A'..=b'Z' => c | 0x20,
                b'.' => {
                    if label_len == 0 {
                        return false;
                    }
                    label_len = 0;
                    label_start = i + 1;
                    *out = b'.';
                    continue;
                }
                _ => return false,
            };
            label_len += 1;
            if label_len > Self::MAX_LABEL_LEN {
                return false;
            }
        }
        if label_len == 0 {
            return false; // "a.." : the name ended with two dots
        }
        let last = self.bytes.get(label_start..raw.len()).unwrap_or(&[]);
        if is_numeric_label(last) {
            return false;
        }
        self.len = raw.len() as u8;
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this never falls back.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false for a `HostName` from [`HostName::new`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `123` or `0x7f` / `0x`: a label the URL standard would parse as an IPv4 component.
fn is_numeric_label(l: &[u8]) -> bool {
    if let Some(hex) = l.strip_prefix(b"0x") {
        hex.iter().all(u8::is_ascii_hexdigit)
    } else {
        !l.is_empty() && l.iter().all(u8::is_ascii_digit)
    }
}

impl core::ops::Deref for HostName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for HostName {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for HostName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HostName {}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl core::hash::Hash for HostName {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        // Same as `str`'s hash, as `Borrow<str>` requires.
        self.as_str().hash(state)
    }
}

impl core::borrow::Borrow<str> for HostName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
