//! ClientHello parser (being written).
