//! The SIP bridge's pure rules: SDP offer/answer for audio legs, Request-URI routing and
//! session timers. No sockets and no clocks; `src/sip/` does the IO.

pub mod digest;
pub mod route;
pub mod sdp;
pub mod timer;
