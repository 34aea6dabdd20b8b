//! Decoding an HTTP request into an API request: route, verb, query options and body. Pure and total: any
//! byte sequence gives a request or an `ApiError`, never a panic (a fuzz test holds it to that).

use serde_json::Value;

use super::error::ApiError;

/// Largest request body accepted, as kube-apiserver's 3 MiB limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    Resources {
        group: String,
        version: String,
    },
    Version,
    Healthz,
    /// `/openapi/v2`, `/openapi/v3`: not served (404), as clients fall back without them.
    OpenApi,
    Resource(ResourcePath),
    /// `/_sim/…`: the fault and inspection endpoint.
    Admin(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// Query options that change what a request does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: bool,
    pub allow_bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub send_initial_events: bool,
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub field_validation: FieldValidation,
}

/// What a write does about fields the object's type does not declare (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header: kube-apiserver's default.
    #[default]
    Warn,
    /// Refuse the write (400), as kubectl asks since 1.27.
    Strict,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub route: Route,
    pub verb: Verb,
    pub query: Query,
    pub patch: Option<PatchType>,
    pub body: Option<Value>,
    /// The client wants a `meta.k8s.io` Table (kubectl get).
    pub table: bool,
    /// For `/openapi/…`: what follows `/openapi/` (`v2`, `v3`, `v3/apis/karpenter.sh/v1`).
    pub openapi_version: Option<String>,
    /// The client accepts protobuf (kubectl asks for the OpenAPI document so).
    pub protobuf: bool,
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" | "" => Ok(false),
        _ => Err(ApiError::bad_request(format!("invalid value for {key}: {value:?}"))),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {value:?}: must be an integer")))
}

pub fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "labelSelector" => q.label_selector = Some(value),
            "fieldValidation" => {
                q.field_validation = match value.as_str() {
                    "Ignore" => FieldValidation::Ignore,
                    "Warn" | "" => FieldValidation::Warn,
                    "Strict" => FieldValidation::Strict,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "fieldValidation: unsupported value {other:?}: valid values are \"Ignore\", \"Warn\" and \"Strict\""
                        )));
                    }
                }
            }
            "fieldSelector" => q.field_selector = Some(value),
            "limit" => q.limit = Some(parse_number::<i64>("limit", &value)?.max(0) as usize).filter(|l| *l > 0),
            "continue" => q.continue_token = Some(value).filter(|v| !v.is_empty()),
            "resourceVersion" => q.resource_version = Some(value).filter(|v| !v.is_empty()),
            "resourceVersionMatch" => q.resource_version_match = Some(value).filter(|v| !v.is_empty()),
            "watch" => q.watch = parse_bool("watch", &value)?,
            "allowWatchBookmarks" => q.allow_bookmarks = parse_bool("allowWatchBookmarks", &value)?,
            "timeoutSeconds" => q.timeout_seconds = Some(parse_number("timeoutSeconds", &value)?),
            "sendInitialEvents" => q.send_initial_events = parse_bool("sendInitialEvents", &value)?,
            "fieldManager" => q.field_manager = Some(value),
            "force" => q.force = parse_bool("force", &value)?,
            "dryRun" => q.dry_run = value == "All",
            "propagationPolicy" => q.propagation_policy = Some(value),
            "gracePeriodSeconds" => q.grace_period_seconds = Some(parse_number("gracePeriodSeconds", &value)?),
            _ => {}
        }
    }
    Ok(q)
}

/// Segments of the path; `..`, empty and percent-encoded segments are refused (names never need them).
fn segments(path: &str) -> Result<Vec<&str>, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let mut out = Vec::new();
    for segment in trimmed.split('/').skip(1) {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('%') {
            return Err(ApiError::path_not_found());
        }
        out.push(segment);
    }
    Ok(out)
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let path = |plural: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        })
    };
    Ok(match rest {
        [] => Route::Resources { group: group.to_string(), version: version.to_string() },
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => match tail {
            [] => path(plural, Some(ns), None, None),
            [name] => path(plural, Some(ns), Some(name), None),
            [name, sub] => path(plural, Some(ns), Some(name), Some(sub)),
            _ => return Err(ApiError::path_not_found()),
        },
        [plural] => path(plural, None, None, None),
        [plural, name] => path(plural, None, Some(name), None),
        [plural, name, sub] => path(plural, None, Some(name), Some(sub)),
        _ => return Err(ApiError::path_not_found()),
    })
}

pub fn parse_route(path: &str) -> Result<Route, ApiError> {
    let segs = segments(path)?;
    Ok(match segs.as_slice() {
        ["api"] => Route::CoreVersions,
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest)?,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest)?,
        ["version"] => Route::Version,
        ["healthz"] | ["readyz"] | ["livez"] => Route::Healthz,
        ["openapi", ..] => Route::OpenApi,
        ["_sim", rest @ ..] => Route::Admin(rest.join("/")),
        _ => return Err(ApiError::path_not_found()),
    })
}

fn patch_type(content_type: &str) -> Result<PatchType, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

/// Parses a body as JSON, or for server-side apply as YAML too.
fn parse_body(body: &[u8], yaml_allowed: bool) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_error) => {
            if yaml_allowed && let Ok(text) = std::str::from_utf8(body) {
                return serde_saphyr::from_str::<Value>(text)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
            }
            Err(ApiError::bad_request(format!("couldn't get version/kind; json parse error: {json_error}")))
        }
    }
}

/// Decodes one request.
pub fn decode(
    method: &str,
    path: &str,
    query: Option<&str>,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> Result<ApiRequest, ApiError> {
    let route = parse_route(path)?;
    let query = parse_query(query)?;
    // kube-apiserver decodes protobuf bodies of built-in kinds (client-go's typed clients send them).
    let decoded;
    let body = if content_type.starts_with("application/vnd.kubernetes.protobuf") && !body.is_empty() {
        decoded = serde_json::to_vec(&super::protobuf::to_json(body)?).unwrap_or_default();
        decoded.as_slice()
    } else {
        body
    };
    let table = accept.contains("as=Table");
    let named = matches!(&route, Route::Resource(p) if p.name.is_some());
    let (verb, patch, body) = match (method, &route) {
        ("GET", Route::Resource(_)) if query.watch => (Verb::Watch, None, None),
        ("GET", Route::Resource(_)) if named => (Verb::Get, None, None),
        ("GET", _) => (Verb::List, None, None),
        // An action (`pause`, `drop-watches`) needs no body; `faults` says so when it gets none.
        ("POST", Route::Admin(_)) if body.iter().all(u8::is_ascii_whitespace) => (Verb::Create, None, None),
        ("POST", Route::Admin(_)) => (Verb::Create, None, Some(parse_body(body, false)?)),
        ("POST", Route::Resource(p)) if p.name.is_none() || p.subresource.is_some() => {
            (Verb::Create, None, Some(parse_body(body, false)?))
        }
        ("PUT", Route::Resource(_)) if named => (Verb::Update, None, Some(parse_body(body, false)?)),
        ("PATCH", Route::Resource(_)) if named => {
            let kind = patch_type(content_type)?;
            (Verb::Patch, Some(kind), Some(parse_body(body, kind == PatchType::Apply)?))
        }
        ("DELETE", Route::Resource(_)) => {
            let options = if body.iter().all(u8::is_ascii_whitespace) { None } else { Some(parse_body(body, false)?) };
            (if named { Verb::Delete } else { Verb::DeleteCollection }, None, options)
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            )));
        }
    };
    if let Some(b) = &body
        && !b.is_object()
        && !(patch == Some(PatchType::Json) && b.is_array())
    {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    let openapi_version = match route {
        // `v2`, `v3`, or `v3/apis/{group}/{version}` (`v3/api/v1` for the core group).
        Route::OpenApi => {
            Some(path.trim_start_matches('/').trim_start_matches("openapi/").trim_end_matches('/').to_string())
        }
        _ => None,
    };
    let protobuf = accept.contains("protobuf");
    Ok(ApiRequest { route, verb, query, patch, body, table, openapi_version, protobuf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_like_the_api_servers() {
        let r = |p: &str| parse_route(p).expect(p);
        assert_eq!(r("/api"), Route::CoreVersions);
        assert_eq!(r("/apis/karpenter.sh"), Route::Group("karpenter.sh".into()));
        assert_eq!(r("/api/v1/"), Route::Resources { group: String::new(), version: "v1".into() });
        let Route::Resource(p) = r("/api/v1/namespaces/default/pods/web/binding") else { panic!("resource") };
        assert_eq!(
            (p.namespace.as_deref(), p.plural.as_str(), p.name.as_deref(), p.subresource.as_deref()),
            (Some("default"), "pods", Some("web"), Some("binding"))
        );
        let Route::Resource(p) = r("/api/v1/namespaces/kube-system") else { panic!("resource") };
        assert_eq!((p.plural.as_str(), p.name.as_deref()), ("namespaces", Some("kube-system")));
        let Route::Resource(p) = r("/api/v1/namespaces/kube-system/status") else { panic!("resource") };
        assert_eq!((p.plural.as_str(), p.subresource.as_deref()), ("namespaces", Some("status")));
        let Route::Resource(p) = r("/apis/karpenter.sh/v1/nodepools/default") else { panic!("resource") };
        assert_eq!((p.group.as_str(), p.namespace, p.name.as_deref()), ("karpenter.sh", None, Some("default")));
        assert!(parse_route("/api/v1/namespaces/a/pods/b/c/d").is_err());
        assert!(parse_route("/api/v1/pods/../secrets").is_err());
    }

    #[test]
    fn verbs_and_patch_types_come_from_method_query_and_content_type() {
        let d = |m: &str, p: &str, q: Option<&str>, ct: &str, body: &[u8]| decode(m, p, q, ct, "", body);
        assert_eq!(d("GET", "/api/v1/pods", Some("watch=1"), "", b"").expect("watch").verb, Verb::Watch);
        assert_eq!(d("GET", "/api/v1/namespaces/a/pods/b", None, "", b"").expect("get").verb, Verb::Get);
        let patch =
            d("PATCH", "/api/v1/nodes/n", None, "application/strategic-merge-patch+json", b"{}").expect("patch");
        assert_eq!(patch.patch, Some(PatchType::Strategic));
        let apply = d(
            "PATCH",
            "/api/v1/nodes/n",
            Some("fieldManager=x&force=true"),
            "application/apply-patch+yaml",
            b"kind: Node\nmetadata:\n  name: node-1\n",
        )
        .expect("apply");
        assert_eq!(apply.body.expect("body")["metadata"]["name"], "node-1");
        assert!(apply.query.force);
        assert_eq!(d("PATCH", "/api/v1/nodes/n", None, "text/plain", b"{}").expect_err("media").code, 415);
        assert_eq!(
            d("POST", "/api/v1/namespaces/a/pods", None, "application/json", b"{not json").expect_err("json").code,
            400
        );
        assert_eq!(
            d("POST", "/api/v1/namespaces/a/pods", None, "application/json", b"[1]").expect_err("array").code,
            400
        );
        assert_eq!(d("GET", "/api/v1/pods", Some("limit=abc"), "", b"").expect_err("limit").code, 400);
        assert_eq!(d("DELETE", "/api/v1/namespaces/a/pods", None, "", b"").expect("dc").verb, Verb::DeleteCollection);
    }
}
