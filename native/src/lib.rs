//! `pipeline._native`: cdrpipe's per-record work in one batch call, the GIL released.
//!
//! Python keeps what runs once a batch or once a distinct value (keys, the HPKE wrap of
//! the data key, libphonenumber for numbers the fast path leaves pending); this crate does
//! everything that runs once a record: split, screen and parse ([`json`]), canonical forms
//! ([`normalise`]), checks, tokens and analytics lines ([`route`]) and sealing ([`seal`]).
//! [`numbering`] reads, on libphonenumber's metadata, the numbers the fast path leaves pending.

pub mod json;
pub mod normalise;
pub mod numbering;
pub mod route;
pub mod seal;

#[cfg(feature = "python")]
mod binding;
