//! `gnsctl`: command-line client of the GNS federation REST API. See `gnsctl --help`;
//! the implementation is [`gns_federation::ctl`].

use std::process::ExitCode;

use clap::Parser;
use gns_federation::ctl::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    match ctl::run(cli, &mut stdout, &mut stderr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            // Nothing more can be done if stderr itself is gone.
            let _ = writeln!(stderr, "error: {e}");
            ExitCode::FAILURE
        }
    }
}
