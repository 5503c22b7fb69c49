//! `gnsctl`, the command-line client of the federation's REST API: its flags
//! and commands ([`Cli`]), and [`run`], which carries one invocation out.
//!
//! - [`kind`]: kind names, aliases and REST paths;
//! - [`client`]: HTTP requests, server errors, paging;
//! - [`manifest`]: reading YAML/JSON manifests;
//! - [`apply`]: create-or-update with `created` / `configured` / `unchanged`;
//! - [`output`]: tables, JSON and YAML for `get`;
//! - [`cluster_add`]: `cluster add` / `cluster rotate-credentials`, joining a
//!   member cluster with a service account of its own;
//! - [`kubeconfig`]: the operator's kubeconfig context for those;
//! - [`trace`]: `gnsctl trace`, what happens to one request and why;
//! - [`error`]: [`CtlError`] and the server's error body.
//!
//! Objects are named in output as `kind/name`, or `kind/gns/name` inside a
//! global namespace (the server names referrers the same way).

pub mod apply;
pub mod client;
pub mod cluster_add;
pub mod error;
pub mod kind;
pub mod kubeconfig;
pub mod manifest;
pub mod output;
pub mod trace;

use std::io::{Read, Write};
use std::path::Path;

use clap::{Parser, Subcommand};

pub use client::Client;
pub use cluster_add::ClusterCommand;
pub use error::{CtlError, ErrorDetail, ServerError};
pub use kind::CtlKind;
pub use output::OutputFormat;

/// Where the token comes from when neither `--token` nor `GNS_TOKEN` is set.
pub const DEFAULT_TOKEN_FILE: &str = "./gns-data/admin-token";
/// The roots that verify the server when neither `--ca-file` nor
/// `GNS_CA_FILE` is set, if the file exists (a local federation writes it).
pub const DEFAULT_CA_FILE: &str = "./gns-data/ca.pem";

/// Flags and commands of `gnsctl`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gnsctl",
    version,
    about = "Command-line client of the GNS federation REST API",
    after_help = "KIND is cluster, globalnamespace (gns), service, routing, externalworkload or \
                  accesspolicy; plural forms are accepted. Objects other than clusters and global \
                  namespaces live in a global namespace: name it with --gns (-n)."
)]
pub struct Cli {
    /// Base URL of gns-federation.
    #[arg(
        long,
        env = "GNS_SERVER",
        default_value = "https://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// PEM roots that verify the server's certificate [default:
    /// ./gns-data/ca.pem if it exists, else the system's roots].
    #[arg(long, env = "GNS_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Bearer token [default: contents of ./gns-data/admin-token, if readable].
    #[arg(long, env = "GNS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `gnsctl` command.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create or update the objects of a manifest (YAML or JSON; `-` reads stdin).
    Apply {
        /// Manifest file, or `-` for stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        /// Global namespace for documents without a `globalNamespace` field.
        #[arg(long, short = 'n', value_name = "NAME")]
        gns: Option<String>,
    },
    /// Show objects: all of a kind, or one by name.
    Get {
        /// Kind of object.
        kind: CtlKind,
        /// Name (the service, for routing); all objects when omitted.
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Global namespace (for service, routing, externalworkload, accesspolicy).
        #[arg(long, short = 'n', value_name = "NAME")]
        gns: Option<String>,
    },
    /// Delete one object.
    Delete {
        /// Kind of object.
        kind: CtlKind,
        /// Name (the service, for routing).
        name: String,
        /// Global namespace (for routing, externalworkload, accesspolicy).
        #[arg(long, short = 'n', value_name = "NAME")]
        gns: Option<String>,
    },
    /// Join member clusters and rotate their credentials.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Explain what happens to one request: the DNS answer its client
    /// gets, the rule that matches, where it goes with what probability,
    /// and whether the access policy lets it through.
    Trace(trace::TraceArgs),
}

/// The CA file to use: the flag/environment value, else the default file if it exists.
pub fn resolve_ca_file(
    given: Option<std::path::PathBuf>,
    default_file: &Path,
) -> Option<std::path::PathBuf> {
    given
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| default_file.is_file().then(|| default_file.to_owned()))
}

/// The token to use: the flag/environment value, else the default token file if readable.
pub fn resolve_token(given: Option<String>, default_file: &Path) -> Option<String> {
    given
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::fs::read_to_string(default_file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        })
}

/// Reads a manifest from a file, or from stdin for `-`.
pub fn read_manifest(path: &str) -> Result<String, CtlError> {
    let read_err = |source| CtlError::Read {
        path: if path == "-" { "stdin" } else { path }.to_owned(),
        source,
    };
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(read_err)
    }
}

/// `gnsctl get`.
pub async fn get(
    client: &Client,
    kind: CtlKind,
    name: Option<&str>,
    gns: Option<&str>,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    match name {
        Some(name) => {
            let object = client.get(&kind.object_path(gns, name)?).await?;
            output::write_objects(out, kind, format, &[object], true)
        }
        None => {
            let items = client.list_all(&kind.collection_path(gns)?).await?;
            if items.is_empty() && format == OutputFormat::Table {
                match gns.filter(|_| kind.is_scoped()) {
                    Some(g) => writeln!(
                        err,
                        "no {} found in global namespace {g}",
                        kind.plural_words()
                    )?,
                    None => writeln!(err, "no {} found", kind.plural_words())?,
                }
                return Ok(());
            }
            output::write_objects(out, kind, format, &items, false)
        }
    }
}

/// `gnsctl delete`.
pub async fn delete(
    client: &Client,
    kind: CtlKind,
    name: &str,
    gns: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    if kind == CtlKind::Service {
        return Err(CtlError::Unsupported(
            "services are discovered from member clusters and can't be deleted; \
             remove them from the cluster, or delete the external workloads behind them"
                .into(),
        ));
    }
    client.delete(&kind.object_path(gns, name)?).await?;
    writeln!(out, "{} deleted", kind.display(gns, name))?;
    out.flush()?;
    Ok(())
}

/// Carries out one `gnsctl` invocation, writing results to `out` and
/// per-object problems and notes to `err`.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    let token = resolve_token(cli.token, Path::new(DEFAULT_TOKEN_FILE));
    let ca_file = resolve_ca_file(cli.ca_file, Path::new(DEFAULT_CA_FILE));
    let client = Client::new(&cli.server, token, ca_file.as_deref())?;
    match cli.command {
        Command::Apply { file, gns } => {
            let text = read_manifest(&file)?;
            let source = if file == "-" { "stdin" } else { file.as_str() };
            let documents = manifest::parse(&text, source, gns.as_deref())?;
            apply::apply(&client, documents, out, err).await
        }
        Command::Get {
            kind,
            name,
            output,
            gns,
        } => {
            get(
                &client,
                kind,
                name.as_deref(),
                gns.as_deref(),
                output,
                out,
                err,
            )
            .await
        }
        Command::Delete { kind, name, gns } => {
            delete(&client, kind, &name, gns.as_deref(), out).await
        }
        Command::Cluster { command } => cluster_add::run(&client, command, out).await,
        Command::Trace(args) => trace::run(&client, &args, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_contract() {
        let cli = Cli::try_parse_from([
            "gnsctl",
            "get",
            "routings",
            "web",
            "-n",
            "production",
            "-o",
            "yaml",
            "--server",
            "http://h:1",
        ])
        .expect("parses");
        assert_eq!(cli.server, "http://h:1");
        match cli.command {
            Command::Get {
                kind,
                name,
                output,
                gns,
            } => {
                assert_eq!(kind, CtlKind::Routing);
                assert_eq!(name.as_deref(), Some("web"));
                assert_eq!(output, OutputFormat::Yaml);
                assert_eq!(gns.as_deref(), Some("production"));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli =
            Cli::try_parse_from(["gnsctl", "--token", "t", "apply", "-f", "-"]).expect("parses");
        assert_eq!(cli.token.as_deref(), Some("t"));
        assert!(Cli::try_parse_from(["gnsctl", "get", "pods"]).is_err());
        let cli = Cli::try_parse_from(["gnsctl", "delete", "gns", "production", "--gns", "x"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Delete {
                kind: CtlKind::GlobalNamespace,
                ..
            }
        ));
    }

    #[test]
    fn cluster_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "gnsctl",
            "cluster",
            "add",
            "east",
            "--kubeconfig",
            "kc.yaml",
            "--labels",
            "region=us-east-1,zone=us-east-1a",
            "--networks",
            "10.8.0.0/16,10.9.0.0/16",
            "--ingress-address",
            "203.0.113.10:15443",
            "--egress-address",
            "10.8.0.53",
            "--token-ttl",
            "30d",
        ])
        .expect("parses");
        let Command::Cluster {
            command: ClusterCommand::Add(add),
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(add.name, "east");
        assert_eq!(add.labels.len(), 2);
        assert_eq!(add.networks.len(), 2);
        assert_eq!(add.member.context, None);
        assert_eq!(
            add.member.token_ttl,
            std::time::Duration::from_secs(30 * 86400)
        );
        let cli = Cli::try_parse_from([
            "gnsctl",
            "cluster",
            "rotate-credentials",
            "east",
            "--kubeconfig",
            "kc.yaml",
            "--context",
            "admin",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Cluster {
                command: ClusterCommand::RotateCredentials(_)
            }
        ));
        assert!(Cli::try_parse_from(["gnsctl", "cluster", "add", "east"]).is_err());
        assert!(
            Cli::try_parse_from([
                "gnsctl",
                "cluster",
                "add",
                "east",
                "--kubeconfig",
                "k",
                "--labels",
                "oops"
            ])
            .is_err()
        );
    }

    #[test]
    fn token_from_flag_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("admin-token");
        assert_eq!(resolve_token(None, &file), None);
        std::fs::write(&file, "gns_secret\n").expect("write");
        assert_eq!(resolve_token(None, &file).as_deref(), Some("gns_secret"));
        assert_eq!(
            resolve_token(Some(" flag ".into()), &file).as_deref(),
            Some("flag")
        );
        assert_eq!(
            resolve_token(Some(String::new()), &file).as_deref(),
            Some("gns_secret")
        );
    }

    #[test]
    fn ca_file_from_flag_else_the_local_federations_if_it_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let default = dir.path().join("ca.pem");
        assert_eq!(resolve_ca_file(None, &default), None);
        std::fs::write(&default, "pem").expect("write");
        assert_eq!(resolve_ca_file(None, &default), Some(default.clone()));
        let given = dir.path().join("other.pem");
        assert_eq!(resolve_ca_file(Some(given.clone()), &default), Some(given));
        assert_eq!(resolve_ca_file(Some("".into()), &default), Some(default));
    }
}
