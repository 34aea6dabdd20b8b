//! Instance user data per AMI family: nodeadm `NodeConfig` (AL2023), `bootstrap.sh` (AL2) and
//! Bottlerocket TOML, each merged with the user's own user data.

use std::collections::BTreeMap;

use rafter::api::ec2nodeclass::AmiFamily;
use rafter::api::nodeclaim::Taint;

/// The MIME boundary of the multi-part documents Rafter writes.
const BOUNDARY: &str = "//";

/// What the node needs to join the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bootstrap {
    pub cluster_name: String,
    pub cluster_endpoint: String,
    /// Base64 PEM of the cluster CA.
    pub cluster_ca: String,
    /// The service CIDR (nodeadm derives the DNS address from it).
    pub cluster_cidr: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub max_pods: Option<i64>,
    pub cluster_dns: Vec<String>,
}

/// Why user data cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserDataError {
    #[error("spec.userData is not valid TOML for Bottlerocket: {0}")]
    BottlerocketToml(String),
    #[error("spec.userData is a MIME document without a boundary in its Content-Type header")]
    MimeBoundary,
    #[error("amiFamily {0:?} is not supported on Linux nodes; use AL2023, AL2, Bottlerocket or Custom")]
    Family(AmiFamily),
}

/// The user data for a node, before base64.
pub fn render(family: AmiFamily, bootstrap: &Bootstrap, user: Option<&str>) -> Result<String, UserDataError> {
    match family {
        AmiFamily::AL2023 => {
            let mut parts = user.map(user_parts).transpose()?.unwrap_or_default();
            parts.push(("application/node.eks.aws".into(), node_config(bootstrap)));
            Ok(mime(&parts))
        }
        AmiFamily::AL2 => {
            let mut parts = user.map(user_parts).transpose()?.unwrap_or_default();
            parts.push(("text/x-shellscript; charset=\"us-ascii\"".into(), bootstrap_sh(bootstrap)));
            Ok(mime(&parts))
        }
        AmiFamily::Bottlerocket => bottlerocket(bootstrap, user),
        // A custom image boots however its maker decided: the user's data goes as it is.
        AmiFamily::Custom => Ok(user.unwrap_or_default().to_string()),
        other => Err(UserDataError::Family(other)),
    }
}

fn taint_string(t: &Taint) -> String {
    format!("{}={}:{:?}", t.key, t.value.as_deref().unwrap_or_default(), t.effect)
}

fn kubelet_flags(b: &Bootstrap) -> Vec<String> {
    let mut flags = Vec::new();
    if !b.labels.is_empty() {
        let labels: Vec<String> = b.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        flags.push(format!("--node-labels={}", labels.join(",")));
    }
    if !b.taints.is_empty() {
        let taints: Vec<String> = b.taints.iter().map(taint_string).collect();
        flags.push(format!("--register-with-taints={}", taints.join(",")));
    }
    flags
}

/// YAML double-quoted scalar.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn node_config(b: &Bootstrap) -> String {
    let mut out = String::from("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n");
    out += &format!("    name: {}\n", quoted(&b.cluster_name));
    out += &format!("    apiServerEndpoint: {}\n", quoted(&b.cluster_endpoint));
    out += &format!("    certificateAuthority: {}\n", quoted(&b.cluster_ca));
    out += &format!("    cidr: {}\n", quoted(&b.cluster_cidr));
    out += "  kubelet:\n    config:\n";
    if let Some(max) = b.max_pods {
        out += &format!("      maxPods: {max}\n");
    }
    if !b.cluster_dns.is_empty() {
        out += "      clusterDNS:\n";
        for dns in &b.cluster_dns {
            out += &format!("      - {}\n", quoted(dns));
        }
    }
    let flags = kubelet_flags(b);
    if !flags.is_empty() {
        out += "    flags:\n";
        for f in flags {
            out += &format!("    - {}\n", quoted(&f));
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn bootstrap_sh(b: &Bootstrap) -> String {
    let mut extra = kubelet_flags(b);
    if let Some(max) = b.max_pods {
        extra.push(format!("--max-pods={max}"));
    }
    let mut out = String::from(
        "#!/bin/bash -xe\nexec > >(tee /var/log/user-data.log|logger -t user-data -s 2>/dev/console) 2>&1\n",
    );
    out += &format!(
        "/etc/eks/bootstrap.sh {} --apiserver-endpoint {} --b64-cluster-ca {}",
        shell_quote(&b.cluster_name),
        shell_quote(&b.cluster_endpoint),
        shell_quote(&b.cluster_ca)
    );
    if let Some(dns) = b.cluster_dns.first() {
        out += &format!(" --dns-cluster-ip {}", shell_quote(dns));
    }
    if b.max_pods.is_some() {
        out += " --use-max-pods false";
    }
    if !extra.is_empty() {
        out += &format!(" --kubelet-extra-args {}", shell_quote(&extra.join(" ")));
    }
    out.push('\n');
    out
}

/// The user's data as MIME parts: a MIME document is split into its parts; anything else is one
/// part, typed by what it looks like.
fn user_parts(user: &str) -> Result<Vec<(String, String)>, UserDataError> {
    let trimmed = user.trim_start();
    if trimmed.starts_with("MIME-Version:") || trimmed.starts_with("Content-Type: multipart") {
        return split_mime(trimmed);
    }
    let content_type = if trimmed.starts_with("#!") {
        "text/x-shellscript; charset=\"us-ascii\""
    } else if trimmed.contains("kind: NodeConfig") {
        "application/node.eks.aws"
    } else {
        "text/x-shellscript; charset=\"us-ascii\""
    };
    Ok(vec![(content_type.into(), user.to_string())])
}

fn split_mime(doc: &str) -> Result<Vec<(String, String)>, UserDataError> {
    let boundary = doc
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Content-Type:")?.trim();
            rest.split(';').find_map(|p| p.trim().strip_prefix("boundary=").map(|b| b.trim_matches('"').to_string()))
        })
        .ok_or(UserDataError::MimeBoundary)?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in doc.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let chunk = chunk.trim_start_matches(['\r', '\n']);
        let (headers, body) = chunk.split_once("\n\n").or_else(|| chunk.split_once("\r\n\r\n")).unwrap_or((chunk, ""));
        let content_type = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type:").map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "text/x-shellscript; charset=\"us-ascii\"".into());
        parts.push((content_type, body.trim_end_matches(['\r', '\n']).to_string() + "\n"));
    }
    Ok(parts)
}

fn mime(parts: &[(String, String)]) -> String {
    let mut out = format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n\n");
    for (content_type, body) in parts {
        out += &format!("--{BOUNDARY}\nContent-Type: {content_type}\n\n{body}");
        if !body.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out += &format!("--{BOUNDARY}--\n");
    out
}

fn bottlerocket(b: &Bootstrap, user: Option<&str>) -> Result<String, UserDataError> {
    let mut doc: toml::Table = match user {
        Some(u) => u.parse().map_err(|e: toml::de::Error| UserDataError::BottlerocketToml(e.to_string()))?,
        None => toml::Table::new(),
    };
    let settings = table(&mut doc, "settings");
    let k8s = table(settings, "kubernetes");
    k8s.insert("cluster-name".into(), b.cluster_name.clone().into());
    k8s.insert("api-server".into(), b.cluster_endpoint.clone().into());
    k8s.insert("cluster-certificate".into(), b.cluster_ca.clone().into());
    if let Some(max) = b.max_pods {
        k8s.insert("max-pods".into(), max.into());
    }
    if !b.cluster_dns.is_empty() {
        k8s.insert("cluster-dns-ip".into(), b.cluster_dns[0].clone().into());
    }
    let labels = table(k8s, "node-labels");
    for (k, v) in &b.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    let taints = table(k8s, "node-taints");
    for t in &b.taints {
        let value = format!("{}:{:?}", t.value.as_deref().unwrap_or_default(), t.effect);
        let entry = taints.entry(t.key.clone()).or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(list) = entry {
            list.push(value.into());
        }
    }
    Ok(doc.to_string())
}

fn table<'a>(parent: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let entry = parent.entry(key.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    match entry {
        toml::Value::Table(t) => t,
        _ => unreachable!("replaced by a table just above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafter::api::nodeclaim::TaintEffect;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            cluster_name: "demo".into(),
            cluster_endpoint: "https://api.demo".into(),
            cluster_ca: "Q0E=".into(),
            cluster_cidr: "10.100.0.0/16".into(),
            labels: BTreeMap::from([("karpenter.sh/nodepool".into(), "default".into())]),
            taints: vec![Taint {
                key: "gpu".into(),
                value: Some("true".into()),
                effect: TaintEffect::NoSchedule,
                time_added: None,
            }],
            max_pods: Some(29),
            cluster_dns: vec![],
        }
    }

    #[test]
    fn al2023_user_data_is_a_mime_document_with_the_users_part_before_rafters_node_config() {
        let user = "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BOUND\"\n\n--BOUND\nContent-Type: text/x-shellscript\n\necho hi\n--BOUND--\n";
        let out = render(AmiFamily::AL2023, &bootstrap(), Some(user)).unwrap();
        let parts = split_mime(&out).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], ("text/x-shellscript".to_string(), "echo hi\n".to_string()));
        assert_eq!(parts[1].0, "application/node.eks.aws");
        assert!(parts[1].1.contains("kind: NodeConfig"));
        assert!(parts[1].1.contains("name: \"demo\""));
        assert!(parts[1].1.contains("maxPods: 29"));
        assert!(parts[1].1.contains("--node-labels=karpenter.sh/nodepool=default"));
        assert!(parts[1].1.contains("--register-with-taints=gpu=true:NoSchedule"));
    }

    #[test]
    fn al2_user_data_calls_bootstrap_sh_with_labels_taints_and_max_pods() {
        let out = render(AmiFamily::AL2, &bootstrap(), Some("#!/bin/bash\necho before\n")).unwrap();
        let parts = split_mime(&out).unwrap();
        assert_eq!(parts[0].1, "#!/bin/bash\necho before\n");
        let script = &parts[1].1;
        assert!(script.contains("/etc/eks/bootstrap.sh 'demo' --apiserver-endpoint 'https://api.demo'"));
        assert!(script.contains("--kubelet-extra-args '--node-labels=karpenter.sh/nodepool=default --register-with-taints=gpu=true:NoSchedule --max-pods=29'"));
    }

    #[test]
    fn bottlerocket_settings_keep_the_users_keys_and_set_the_clusters() {
        let user = "[settings.kubernetes]\ncluster-name = \"wrong\"\nimage-gc-high-threshold-percent = 85\n[settings.host-containers.admin]\nenabled = true\n";
        let out = render(AmiFamily::Bottlerocket, &bootstrap(), Some(user)).unwrap();
        let doc: toml::Table = out.parse().unwrap();
        let k8s = &doc["settings"]["kubernetes"];
        assert_eq!(k8s["cluster-name"].as_str(), Some("demo"));
        assert_eq!(k8s["image-gc-high-threshold-percent"].as_integer(), Some(85));
        assert_eq!(k8s["max-pods"].as_integer(), Some(29));
        assert_eq!(k8s["node-labels"]["karpenter.sh/nodepool"].as_str(), Some("default"));
        assert_eq!(k8s["node-taints"]["gpu"][0].as_str(), Some("true:NoSchedule"));
        assert_eq!(doc["settings"]["host-containers"]["admin"]["enabled"].as_bool(), Some(true));
    }

    #[test]
    fn bottlerocket_user_data_that_is_not_toml_is_refused_naming_the_field() {
        let err = render(AmiFamily::Bottlerocket, &bootstrap(), Some("not = [toml")).unwrap_err();
        assert!(err.to_string().starts_with("spec.userData is not valid TOML"));
    }
}
