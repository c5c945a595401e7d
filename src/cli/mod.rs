//! Subcommands of the binary, one module each where they are long.

pub mod bench;
pub mod langevin;

/// `--threads N`, shared by every subcommand.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ThreadsArg {
    /// Threads to run the model on: a batch's frames (SGLD chains) run on up to N threads at
    /// once, each with its own plan state, with the same results bit for bit (a build with
    /// `--features multithread` also splits one frame's matrix products over N threads); 1 to 256
    #[arg(long = "threads", default_value_t = 1, value_name = "N")]
    pub n: usize,
}
