//! Reading multi-document YAML manifests into typed objects, with the line of every problem.

use kube::ResourceExt;
use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::convert::{ConversionOptions, convert};
use super::legacy::{AWSNodeTemplate, Provisioner};
use super::{EC2NodeClass, NodeClaim, NodePool};

/// One problem in a manifest file, at a 1-based line (and column, when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// 1-based line of the problem, or of the document it concerns.
    pub line: u64,
    /// 1-based column, when the parser knows it.
    pub column: Option<u64>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "{}:{}: {}", self.line, c, self.message),
            None => write!(f, "{}: {}", self.line, self.message),
        }
    }
}

/// A Rafter object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `karpenter.sh/v1` NodePool.
    NodePool(Box<NodePool>),
    /// `karpenter.sh/v1` NodeClaim.
    NodeClaim(Box<NodeClaim>),
    /// `karpenter.k8s.aws/v1` EC2NodeClass.
    EC2NodeClass(Box<EC2NodeClass>),
    /// `karpenter.sh/v1alpha5` Provisioner.
    Provisioner(Box<Provisioner>),
    /// `karpenter.k8s.aws/v1alpha1` AWSNodeTemplate.
    AWSNodeTemplate(Box<AWSNodeTemplate>),
}

/// An object and the line its document starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based line of the document's first line.
    pub line: u64,
    /// The object.
    pub object: Object,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
}

/// `kubectl get … -o yaml` wraps several objects in a `v1` `List`.
#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

/// Something that can be read as any of Rafter's object types: a YAML document (keeping its line
/// numbers) or a JSON value (an item of a `List`).
trait Source {
    type Error;
    fn read<T: DeserializeOwned>(self) -> Result<T, Self::Error>;
}

/// One YAML document and the line it starts on.
struct YamlDocument<'a> {
    text: &'a str,
    line: u64,
}

impl Source for YamlDocument<'_> {
    type Error = ManifestError;
    fn read<T: DeserializeOwned>(self) -> Result<T, ManifestError> {
        typed(self.text, self.line)
    }
}

impl Source for serde_json::Value {
    type Error = String;
    fn read<T: DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_value(self).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Copy)]
enum ObjectKind {
    NodePool,
    NodeClaim,
    EC2NodeClass,
    Provisioner,
    AWSNodeTemplate,
}

impl ObjectKind {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("karpenter.sh/v1", "NodePool") => Some(Self::NodePool),
            ("karpenter.sh/v1", "NodeClaim") => Some(Self::NodeClaim),
            ("karpenter.k8s.aws/v1", "EC2NodeClass") => Some(Self::EC2NodeClass),
            ("karpenter.sh/v1alpha5", "Provisioner") => Some(Self::Provisioner),
            ("karpenter.k8s.aws/v1alpha1", "AWSNodeTemplate") => Some(Self::AWSNodeTemplate),
            _ => None,
        }
    }

    fn read<S: Source>(self, source: S) -> Result<Object, S::Error> {
        Ok(match self {
            Self::NodePool => Object::NodePool(Box::new(source.read()?)),
            Self::NodeClaim => Object::NodeClaim(Box::new(source.read()?)),
            Self::EC2NodeClass => Object::EC2NodeClass(Box::new(source.read()?)),
            Self::Provisioner => Object::Provisioner(Box::new(source.read()?)),
            Self::AWSNodeTemplate => Object::AWSNodeTemplate(Box::new(source.read()?)),
        })
    }
}

/// Reads one object of a known kind from its JSON form (the items of a `List`).
fn object_from_value(value: serde_json::Value) -> Result<Object, String> {
    let head: Head = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    match (head.api_version.as_deref(), head.kind.as_deref()) {
        (Some(api), Some(kind)) => match ObjectKind::of(api, kind) {
            Some(k) => k.read(value),
            None => Err(unknown_kind(api, kind)),
        },
        _ => Err(NO_TYPE.into()),
    }
}

const NO_TYPE: &str = "document has no apiVersion and kind; is this a Kubernetes manifest?";

fn unknown_kind(api_version: &str, kind: &str) -> String {
    format!(
        "unknown kind {kind} in {api_version}; Rafter reads karpenter.sh/v1alpha5 Provisioner, karpenter.k8s.aws/v1alpha1 AWSNodeTemplate and the v1 NodePool, NodeClaim and EC2NodeClass"
    )
}

/// Splits a YAML stream at `---` lines: (first line number, text) of each non-empty document.
fn split_documents(text: &str) -> Vec<(u64, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1u64;
    for (i, line) in text.lines().enumerate() {
        let number = i as u64 + 1;
        if line == "---" || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = number + 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("--- ") {
            // Content may follow the marker on the same line (`--- {a: 1}`, `--- # note`).
            docs.push((start, std::mem::take(&mut current)));
            start = number;
            current.push_str(rest);
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, doc)| doc.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

fn yaml_error(err: &serde_saphyr::Error, first_line: u64) -> ManifestError {
    let plain = err.without_snippet();
    let location = plain.location().or_else(|| err.location());
    let message = plain.to_string();
    // The parser's own text may end in "at line N column M" relative to the document; the
    // location is reported separately, so keep only the reason.
    let message = match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message,
    };
    match location {
        Some(l) if l.line() > 0 => {
            ManifestError { line: first_line + l.line() - 1, column: Some(l.column()).filter(|c| *c > 0), message }
        }
        _ => ManifestError { line: first_line, column: None, message },
    }
}

fn typed<T: DeserializeOwned>(doc: &str, first_line: u64) -> Result<T, ManifestError> {
    serde_saphyr::from_str(doc).map_err(|e| yaml_error(&e, first_line))
}

/// A name as errors show it: a hostile 10 MB name is cut, not echoed.
pub fn shown(name: &str) -> String {
    const MAX: usize = 80;
    if name.len() <= MAX {
        return name.to_string();
    }
    let cut = (0..=MAX).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", &name[..cut], name.len())
}

/// Reads every document of a manifest stream; fails with every problem if any document is
/// malformed or of a kind Rafter does not serve.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (line, doc) in split_documents(text) {
        let head: Head = match typed(&doc, line) {
            Ok(h) => h,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let at_document = |message: String| ManifestError { line, column: None, message };
        let object = match (head.api_version.as_deref(), head.kind.as_deref()) {
            (Some("v1"), Some("List")) => {
                let list: List = match typed(&doc, line) {
                    Ok(list) => list,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                for (i, item) in list.items.into_iter().enumerate() {
                    match object_from_value(item) {
                        Ok(object) => documents.push(Document { line, object }),
                        Err(message) => errors.push(at_document(format!("items[{i}]: {message}"))),
                    }
                }
                continue;
            }
            (Some(api), Some(kind)) => match ObjectKind::of(api, kind) {
                Some(k) => k.read(YamlDocument { text: &doc, line }),
                None => Err(at_document(unknown_kind(api, kind))),
            },
            _ => Err(at_document(NO_TYPE.into())),
        };
        match object {
            Ok(object) => documents.push(Document { line, object }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(documents) } else { Err(errors) }
}

/// Converts a manifest stream to v1: legacy objects become NodePools and EC2NodeClasses, v1
/// objects pass through. Returns the YAML stream, or every problem with its line and nothing else.
pub fn convert_manifests(text: &str, options: &ConversionOptions) -> Result<String, Vec<ManifestError>> {
    let documents = parse_documents(text)?;
    let mut provisioners = Vec::new();
    let mut templates = Vec::new();
    for d in &documents {
        match &d.object {
            Object::Provisioner(p) => provisioners.push((**p).clone()),
            Object::AWSNodeTemplate(t) => templates.push((**t).clone()),
            _ => {}
        }
    }
    let line_of = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| match &d.object {
                Object::Provisioner(p) => kind == "Provisioner" && p.metadata.name.as_deref() == Some(name),
                Object::AWSNodeTemplate(t) => kind == "AWSNodeTemplate" && t.metadata.name.as_deref() == Some(name),
                _ => false,
            })
            .map_or(1, |d| d.line)
    };
    let converted = convert(&provisioners, &templates, options).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                let mut message = e.to_string();
                if e.name.len() > 80 {
                    message = message.replace(&e.name, &shown(&e.name));
                }
                ManifestError { line: line_of(e.kind, &e.name), column: None, message }
            })
            .collect::<Vec<_>>()
    })?;

    // What conversion wrote must be what the API server takes: a value legacy accepted and v1
    // refuses (a negative weight or limit, a duration beyond Kubernetes') is an error at the
    // legacy object's line, not YAML the apply fails on.
    let mut invalid = Vec::new();
    for pool in &converted.node_pools {
        let name = pool.name_any();
        if name.len() > 253 {
            invalid.push(ManifestError {
                line: line_of("Provisioner", &name),
                column: None,
                message: format!("Provisioner {}: metadata.name: must be no more than 253 characters", shown(&name)),
            });
            continue;
        }
        if let Err(e) = super::validation::validate_node_pool(&pool.spec) {
            invalid.extend(e.0.into_iter().map(|f| ManifestError {
                line: line_of("Provisioner", &name),
                column: None,
                message: format!(
                    "Provisioner {} converts to an invalid NodePool: {}: {}",
                    shown(&name),
                    f.field,
                    f.message
                ),
            }));
        }
    }
    for class in &converted.node_classes {
        let name = class.name_any();
        if let Err(e) = super::validation::validate_ec2_node_class(&class.spec) {
            let line = documents
                .iter()
                .find(|d| match &d.object {
                    Object::Provisioner(p) => p.metadata.name.as_deref() == Some(&name),
                    Object::AWSNodeTemplate(t) => t.metadata.name.as_deref() == Some(&name),
                    _ => false,
                })
                .map_or(1, |d| d.line);
            invalid.extend(e.0.into_iter().map(|f| ManifestError {
                line,
                column: None,
                message: format!("{} converts to an invalid EC2NodeClass: {}: {}", shown(&name), f.field, f.message),
            }));
        }
    }
    if !invalid.is_empty() {
        return Err(invalid);
    }

    // Emit in input order: each NodePool followed by the node class it was converted with.
    let ser_error = |e: serde_saphyr::ser::Error| vec![ManifestError { line: 1, column: None, message: e.to_string() }];
    let mut out = String::new();
    let mut push = |yaml: String| {
        out.push_str("---\n");
        out.push_str(&yaml);
    };
    let class = |name: &Option<String>| converted.node_classes.iter().find(|c| &c.metadata.name == name);
    for d in &documents {
        match &d.object {
            Object::Provisioner(p) => {
                if let Some(pool) = converted.node_pools.iter().find(|n| n.metadata.name == p.metadata.name) {
                    push(serde_saphyr::to_string(pool).map_err(ser_error)?);
                }
                if p.spec.provider.is_some()
                    && let Some(c) = class(&p.metadata.name)
                {
                    push(serde_saphyr::to_string(c).map_err(ser_error)?);
                }
            }
            Object::AWSNodeTemplate(t) => {
                if let Some(c) = class(&t.metadata.name) {
                    push(serde_saphyr::to_string(c).map_err(ser_error)?);
                }
            }
            Object::NodePool(o) => push(serde_saphyr::to_string(o).map_err(ser_error)?),
            Object::NodeClaim(o) => push(serde_saphyr::to_string(o).map_err(ser_error)?),
            Object::EC2NodeClass(o) => push(serde_saphyr::to_string(o).map_err(ser_error)?),
        }
    }
    Ok(out)
}
