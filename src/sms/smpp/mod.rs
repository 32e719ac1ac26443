//! SMPP 3.4 session rules (pure): to be written.
