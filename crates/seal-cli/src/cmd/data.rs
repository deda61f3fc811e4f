//! (in progress)
/// Data subcommands.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Placeholder.
    Inspect,
}
/// Runs the command.
pub fn run(_cmd: DataCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
