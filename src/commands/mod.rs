//! One module per subcommand: its flags (those of its own; shared groups are in `args/`) and
//! what it does.

pub mod coordinator;
pub mod demo;
pub mod inspect;
pub mod outcome;
pub mod rank;
pub mod report;
pub mod run;
pub mod sample;
pub mod select;
pub mod status;
pub mod worker;
