//! The SMPP bind(s): to be written.
