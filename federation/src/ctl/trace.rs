//! `gnsctl trace`: asks the federation (`POST /v1/trace`) what happens to
//! one request and prints the answer as a short report, or as the server's
//! JSON (`-o json`) or YAML.

use std::io::Write;

use serde_json::{Value, json};

use super::{Client, CtlError, OutputFormat};

/// What `gnsctl trace` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// The name the client calls, e.g. `web.production.app.acme.com`.
    pub host: String,
    /// The member cluster the client runs in [default: outside every cluster].
    #[arg(long)]
    pub from: Option<String>,
    /// The client's address in that cluster (names the calling service).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The request path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The request method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl TraceArgs {
    /// The body of `POST /v1/trace`.
    pub fn body(&self) -> Result<Value, CtlError> {
        let mut headers = serde_json::Map::new();
        for header in &self.headers {
            let (name, value) =
                header
                    .split_once(':')
                    .ok_or_else(|| CtlError::InvalidArgument {
                        flag: "-H",
                        reason: format!("{header:?}: write a header as 'Name: value'"),
                    })?;
            headers.insert(
                name.trim().to_owned(),
                Value::String(value.trim().to_owned()),
            );
        }
        let mut body = json!({
            "host": self.host,
            "headers": headers,
            "path": self.path,
            "method": self.method,
        });
        if let Some(from) = &self.from {
            body["from"] = Value::String(from.clone());
        }
        if let Some(ip) = self.source_ip {
            body["sourceIp"] = Value::String(ip.to_string());
        }
        Ok(body)
    }
}

/// `gnsctl trace`.
pub async fn run(client: &Client, args: &TraceArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let trace = client
        .post(&["v1".to_owned(), "trace".to_owned()], &args.body()?)
        .await?;
    match args.output {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&trace).map_err(|e| CtlError::Render(e.to_string()))?
        )?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            serde_yaml_ng::to_string(&trace).map_err(|e| CtlError::Render(e.to_string()))?
        )?,
        OutputFormat::Table => report(&trace, out)?,
    }
    out.flush()?;
    Ok(())
}

/// The trace as a short report: one section per question.
pub fn report(trace: &Value, out: &mut dyn Write) -> Result<(), CtlError> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned())
    };
    writeln!(
        out,
        "{} from {} (caller: {}), snapshot {}",
        text(&trace["host"]),
        text(&trace["from"]),
        list(&trace["caller"]),
        trace["snapshotVersion"]
    )?;
    let dns = &trace["dns"];
    writeln!(
        out,
        "DNS      view {}: {}\n         {}",
        text(&dns["view"]),
        list(&dns["answers"]),
        text(&dns["why"])
    )?;
    writeln!(
        out,
        "GATEWAY  {}",
        trace["gateway"]
            .as_str()
            .unwrap_or("none: DNS sends the client to endpoints directly")
    )?;
    for rule in trace["rules"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "RULE {}   {}: {}",
            rule["index"],
            if rule["matched"] == true {
                "matches"
            } else {
                "no match"
            },
            text(&rule["why"])
        )?;
    }
    let chosen = match trace["rule"]["index"].as_u64() {
        Some(i) => format!("rule {i}"),
        None => "no rule".to_owned(),
    };
    writeln!(out, "ROUTE    {chosen}: {}", text(&trace["rule"]["why"]))?;
    for d in trace["destinations"].as_array().into_iter().flatten() {
        let subset = d["subset"]
            .as_str()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:>6.2}%  {}{subset}  endpoints {}  ({})",
            d["probability"].as_f64().unwrap_or(0.0) * 100.0,
            text(&d["cluster"]),
            list(&d["endpoints"]),
            text(&d["why"])
        )?;
    }
    let access = &trace["access"];
    writeln!(
        out,
        "ACCESS   {}: {}",
        if access["allowed"] == true {
            "allowed"
        } else {
            "denied"
        },
        text(&access["why"])
    )?;
    let retries = match trace["retries"].as_object() {
        Some(r) => format!(
            "{} tries in all on {}{}",
            r.get("tries").cloned().unwrap_or(Value::Null),
            list(r.get("on").unwrap_or(&Value::Null)),
            r.get("perTryTimeoutMs")
                .and_then(Value::as_u64)
                .map(|ms| format!(", {ms} ms per try"))
                .unwrap_or_default()
        ),
        None => "none".to_owned(),
    };
    writeln!(
        out,
        "LIMITS   timeout {} ms; retries {retries}",
        trace["timeoutMs"]
    )?;
    for note in trace["notes"].as_array().into_iter().flatten() {
        writeln!(out, "NOTE     {}", text(note))?;
    }
    Ok(())
}
