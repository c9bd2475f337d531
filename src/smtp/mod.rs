//! The inbound side: Postfix talks SMTP or LMTP to postsift. Framing, addresses, replies and the
//! session state machine live here; the session hands each message to a [`crate::filter`]
//! pipeline and maps its outcome to replies. Nothing here knows a scanner's wire format.

pub mod address;
pub mod codec;
pub mod context;
pub mod reply;
pub mod session;
