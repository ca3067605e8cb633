//! The TLS alert to send when a hello is refused (see [`Reject::alert`]).

use core::fmt;

use super::reader::{REC_NOT_HANDSHAKE, REC_OVER_2_14, REC_TRAILING};
use super::Reject;

/// TLS alert descriptions (RFC 8446 §6.2) that a front door refusing a ClientHello may
/// send: the ones [`Reject::alert`] returns, and a few for the caller's own refusals
/// (`unrecognized_name` for an SNI with no route, `internal_error`, `handshake_failure`,
/// `access_denied`, `no_application_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Alert {
    UnexpectedMessage = 10,
    RecordOverflow = 22,
    HandshakeFailure = 40,
    IllegalParameter = 47,
    AccessDenied = 49,
    DecodeError = 50,
    ProtocolVersion = 70,
    InternalError = 80,
    UnrecognizedName = 112,
    NoApplicationProtocol = 120,
}

impl Alert {
    /// Every alert, e.g. to pre-register metric labels.
    pub const ALL: [Alert; 10] = [
        Alert::UnexpectedMessage,
        Alert::RecordOverflow,
        Alert::HandshakeFailure,
        Alert::IllegalParameter,
        Alert::AccessDenied,
        Alert::DecodeError,
        Alert::ProtocolVersion,
        Alert::InternalError,
        Alert::UnrecognizedName,
        Alert::NoApplicationProtocol,
    ];

    /// The AlertDescription byte.
    pub fn description(self) -> u8 {
        self as u8
    }

    /// The RFC's name, e.g. `decode_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::UnexpectedMessage => "unexpected_message",
            Alert::RecordOverflow => "record_overflow",
            Alert::HandshakeFailure => "handshake_failure",
            Alert::IllegalParameter => "illegal_parameter",
            Alert::AccessDenied => "access_denied",
            Alert::DecodeError => "decode_error",
            Alert::ProtocolVersion => "protocol_version",
            Alert::InternalError => "internal_error",
            Alert::UnrecognizedName => "unrecognized_name",
            Alert::NoApplicationProtocol => "no_application_protocol",
        }
    }

    /// The whole record to write to the client: a plaintext alert record, level fatal (2),
    /// record version `0x0303`, as rustls 0.23 writes it before any version is negotiated:
    /// `15 03 03 00 02 02 <description>`.
    pub fn record(self) -> [u8; 7] {
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, self.description()]
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reject {
    /// The fatal alert to send before closing, chosen to match what a rustls 0.23 server
    /// sends for the same bytes (the differential test in `tests/vs_rustls.rs` feeds each
    /// case to a `rustls::ServerConnection`); `None` where rustls closes without an alert.
    ///
    /// | Reject | Alert | rustls |
    /// |---|---|---|
    /// | `NotTls`, `SslV2` | decode_error | same for garbage, HTTP and SSL 2.0 (unknown record type or version); a first record of type change_cipher_spec or application_data gets unexpected_message there, and a client's alert record nothing |
    /// | `Ssl3OrOlder`, `NoKnownVersion` | protocol_version | same |
    /// | `TooLarge` | none | same above its own limit (2^16 − 1 bytes); below that, rustls would read the hello |
    /// | `NotClientHello` | unexpected_message | same for a well-formed message of another type; decode_error when the body does not decode as that type either |
    /// | `DuplicateExtension` | illegal_parameter | same |
    /// | `MultipleHostNames` | decode_error | same |
    /// | `Malformed`: a record of another known type inside the hello | none | same |
    /// | `Malformed`: a record of unknown type inside the hello | decode_error | same |
    /// | `Malformed`: data after the hello in its record | unexpected_message | same |
    /// | `Malformed`: a record of 2^14 + 1 to 2^14 + 2047 bytes | record_overflow | RFC 8446 §5.1; rustls reads such a record |
    /// | `Malformed`: anything else | decode_error | same |
    ///
    /// Where the input has several faults, rustls decodes a whole handshake message before
    /// judging it while this parser stops at the first fault: a duplicate extension followed
    /// by a structural fault gets decode_error from rustls, and rustls closes without an alert
    /// when bytes after the ClientHello already declare a handshake message over 2^16 − 1.
    ///
    /// A caller may prefer another answer for plain HTTP (`NotTls { http: true }`), such as
    /// an HTTP 400 response, which an HTTP client can show.
    pub fn alert(&self) -> Option<Alert> {
        Some(match self {
            Reject::NotTls { .. } | Reject::SslV2 | Reject::MultipleHostNames => Alert::DecodeError,
            Reject::Ssl3OrOlder | Reject::NoKnownVersion => Alert::ProtocolVersion,
            Reject::TooLarge => return None,
            Reject::NotClientHello => Alert::UnexpectedMessage,
            Reject::DuplicateExtension(_) => Alert::IllegalParameter,
            Reject::Malformed(f) if *f == REC_NOT_HANDSHAKE => return None,
            Reject::Malformed(f) if *f == REC_TRAILING => Alert::UnexpectedMessage,
            Reject::Malformed(f) if *f == REC_OVER_2_14 => Alert::RecordOverflow,
            Reject::Malformed(_) => Alert::DecodeError,
        })
    }
}
