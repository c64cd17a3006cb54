//! Open-loop load generator for Concord (placeholder until the scenarios land).

/// Benchmark options.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Server WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:7400/v1/ws")]
    pub url: String,
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
