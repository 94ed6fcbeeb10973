//! Flag groups that several subcommands share, each with its help heading, and the parsers of
//! flag values clap does not know.

pub mod job;
pub mod layout;
pub mod model;
pub mod monitoring;
pub mod parse;
pub mod placement;
pub mod ranking;
pub mod security;
