//! The inbound side: Postfix talks SMTP or LMTP to postsift. Framing, replies, XFORWARD and the
//! session state machine live here; nothing in this module knows a scanner's wire format.

pub mod address;
pub mod codec;
pub mod reply;
pub mod session;
pub mod xforward;
