//! Subcommands of the binary, one module each where they are long.

pub mod bench;
pub mod langevin;
