//! `meter init`: writes the commented default configuration; never overwrites without --force.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;

use super::Failure;
use crate::config::render_default_config;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the file; `-` prints it
    #[arg(long, default_value = "meter.toml", value_name = "PATH")]
    pub path: PathBuf,

    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &InitArgs) -> Result<(), Failure> {
    let text = render_default_config();
    if args.path.as_os_str() == "-" {
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("writing to stdout")
            .map_err(Failure::Runtime)?;
        return Ok(());
    }
    if args.path.exists() && !args.force {
        return Err(Failure::Usage(anyhow::anyhow!(
            "{} already exists; pass --force to overwrite it",
            args.path.display()
        )));
    }
    std::fs::write(&args.path, text)
        .with_context(|| format!("writing {}", args.path.display()))
        .map_err(Failure::Runtime)?;
    println!("wrote {}", args.path.display());
    Ok(())
}
