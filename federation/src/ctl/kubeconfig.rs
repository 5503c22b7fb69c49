//! The operator's kubeconfig, as `gnsctl cluster add` uses it: one context
//! resolved to its cluster (API server URL and CA) and its user, whose
//! credentials must be static (a bearer token or a client certificate).
//!
//! The operator's credentials only ever go into the in-memory
//! [`kube::Config`] used to talk to the member cluster; [`MemberCluster`],
//! which is what gets registered in the federation, holds the server URL and
//! the CA but never the user's credentials.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};

use super::CtlError;

/// What the federation needs to know about the member cluster's API server,
/// read from the kubeconfig (no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCluster {
    /// The context that was used.
    pub context: String,
    /// The kubeconfig cluster entry's name.
    pub cluster: String,
    /// `https://host:port` of the API server.
    pub server: String,
    /// Base64 of the PEM CA bundle (`None`: the system roots are trusted).
    pub ca_data: Option<String>,
}

/// A kubeconfig context, loaded: the cluster description to register, and
/// the operator's client configuration (held in memory only).
pub struct Loaded {
    /// What the federation is told about the cluster.
    pub member: MemberCluster,
    /// The operator's client configuration for the member cluster.
    pub config: kube::Config,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the operator's configuration (it holds credentials).
        f.debug_struct("Loaded")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> CtlError {
    CtlError::Kubeconfig {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads `path` and resolves `context` (default: its `current-context`).
pub async fn load(path: &Path, context: Option<&str>) -> Result<Loaded, CtlError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| bad(path, e.to_string()))?;
    let member = resolve(&kubeconfig, path, context)?;
    let options = KubeConfigOptions {
        context: Some(member.context.clone()),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| bad(path, e.to_string()))?;
    Ok(Loaded { member, config })
}

/// Finds the context, checks its user's credentials are usable, and reads
/// the cluster's server and CA.
pub fn resolve(
    kubeconfig: &Kubeconfig,
    path: &Path,
    context: Option<&str>,
) -> Result<MemberCluster, CtlError> {
    let context_name = match context {
        Some(c) => c.to_owned(),
        None => kubeconfig.current_context.clone().ok_or_else(|| {
            bad(
                path,
                "it has no current-context; name one with --context (see `kubectl config get-contexts`)",
            )
        })?,
    };
    let named_context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| {
            let known: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            bad(
                path,
                format!(
                    "it has no context {context_name:?} (contexts: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?;
    let ctx = named_context
        .context
        .as_ref()
        .ok_or_else(|| bad(path, format!("context {context_name:?} is empty")))?;

    let user_name = ctx.user.clone().unwrap_or_default();
    let auth = kubeconfig
        .auth_infos
        .iter()
        .find(|a| a.name == user_name)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "context {context_name:?} names user {user_name:?}, which it does not define"
                ),
            )
        })?;
    check_static_credentials(auth, &context_name, &user_name)?;

    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "context {context_name:?} names cluster {:?}, which it does not define",
                    ctx.cluster
                ),
            )
        })?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad(path, format!("cluster {:?} has no server", ctx.cluster)))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(ca_from_data(data).map_err(|reason| {
            bad(
                path,
                format!(
                    "certificate-authority-data of cluster {:?}: {reason}",
                    ctx.cluster
                ),
            )
        })?),
        (None, Some(file)) => {
            let pem = std::fs::read(file).map_err(|e| {
                bad(
                    path,
                    format!("cannot read certificate-authority {file}: {e}"),
                )
            })?;
            check_pem(&pem).map_err(|reason| bad(path, format!("{file}: {reason}")))?;
            Some(B64.encode(pem))
        }
        (None, None) => None,
    };
    Ok(MemberCluster {
        context: context_name,
        cluster: ctx.cluster.clone(),
        server: server.trim().to_owned(),
        ca_data,
    })
}

/// Base64 PEM from `certificate-authority-data`, checked and normalised.
fn ca_from_data(data: &str) -> Result<String, String> {
    let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    let pem = B64
        .decode(&compact)
        .map_err(|e| format!("not base64: {e}"))?;
    check_pem(&pem)?;
    Ok(compact)
}

fn check_pem(pem: &[u8]) -> Result<(), String> {
    if String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err("no PEM certificate in it".to_owned())
    }
}

/// The user must carry a token or a client certificate itself: gnsctl runs
/// no credential plugins.
fn check_static_credentials(auth: &AuthInfo, context: &str, user: &str) -> Result<(), CtlError> {
    let unsupported = |mechanism: String| CtlError::KubeconfigAuth {
        context: context.to_owned(),
        user: user.to_owned(),
        mechanism,
    };
    if let Some(exec) = &auth.exec {
        let command = exec.command.as_deref().unwrap_or("?");
        return Err(unsupported(format!(
            "an exec credential plugin ({command})"
        )));
    }
    if let Some(provider) = &auth.auth_provider {
        return Err(unsupported(format!(
            "the auth-provider {:?}",
            provider.name
        )));
    }
    let token = auth.token.is_some() || auth.token_file.is_some();
    let cert = (auth.client_certificate.is_some() || auth.client_certificate_data.is_some())
        && (auth.client_key.is_some() || auth.client_key_data.is_some());
    if !token && !cert {
        return Err(unsupported(
            "no token and no client certificate with key".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn kubeconfig(user: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: op\n\
             clusters:\n- name: east\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {}\n\
             contexts:\n- name: op\n  context:\n    cluster: east\n    user: op\n\
             users:\n- name: op\n  user:\n{user}",
            B64.encode(CA)
        );
        Kubeconfig::from_yaml(&yaml).expect("kubeconfig")
    }

    #[test]
    fn a_token_user_resolves_to_server_and_ca() {
        let kc = kubeconfig("    token: secret\n");
        let member = resolve(&kc, Path::new("kc"), None).expect("resolves");
        assert_eq!(member.server, "https://127.0.0.1:6443");
        assert_eq!(member.context, "op");
        assert_eq!(member.ca_data.as_deref(), Some(B64.encode(CA).as_str()));
        let e = resolve(&kc, Path::new("kc"), Some("nope")).expect_err("no such context");
        assert!(e.to_string().contains("no context \"nope\""), "{e}");
    }

    #[test]
    fn plugins_and_missing_credentials_are_refused() {
        let kc = kubeconfig(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n",
        );
        let e = resolve(&kc, Path::new("kc"), None).expect_err("exec");
        let text = e.to_string();
        assert!(text.contains("exec credential plugin (aws)"), "{text}");
        assert!(text.contains("static"), "{text}");
        let kc = kubeconfig("    username: admin\n");
        assert!(resolve(&kc, Path::new("kc"), None).is_err());
    }
}
