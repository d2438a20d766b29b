//! The translation: what each program does with an IPv4 packet (`lan`,
//! `wan`), the hit path both share (`hit`), new flows set up in the datapath
//! (`new_flow`), filtering by remote (`filter`), fragments (`fragment`),
//! ICMP errors and Fragmentation Needed (`icmp_errors`), the source checks
//! at the edge (`guard`), and what becomes of a packet that is no
//! translated flow (`untranslated`).

pub mod filter;
pub mod fragment;
pub mod guard;
pub mod hit;
pub mod icmp_errors;
pub mod lan;
pub mod new_flow;
pub mod untranslated;
pub mod wan;
