//! `corekv-server`: one corekv node. See `corekv-server --help`.

use clap::Parser;
use corekv_shards::config::ServerArgs;

fn main() {
    let args = ServerArgs::parse();
    let cfg = match args.merge_file().and_then(ServerArgs::validate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corekv-server: {e}");
            std::process::exit(corekv_shards::server::exit::BAD_SETTINGS);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = corekv_shards::server::run(cfg) {
        eprintln!("corekv-server: {e}");
        std::process::exit(corekv_shards::server::exit::code(&e));
    }
}
